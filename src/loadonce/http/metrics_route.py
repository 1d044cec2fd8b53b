"""``GET /metrics``: the Prometheus text of the app's ``Metrics`` (``metrics.py``)."""

from __future__ import annotations

import anyio.to_thread
from fastapi import APIRouter
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.requests import Request
from starlette.responses import Response

from loadonce.http.errors import error_response
from loadonce.http.request_info import request_id_of
from loadonce.http.routes import PlainRoute
from loadonce.http.state import LoadonceState


def metrics_router() -> APIRouter:
    """``GET /metrics`` in the Prometheus text format, of every worker; the metrics are kept
    when the lifespan's ``metrics`` is on (the default)."""
    router = APIRouter(route_class=PlainRoute, tags=["operations"])

    @router.get(
        "/metrics",
        summary="Prometheus metrics of every worker",
        response_class=Response,
        responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}},
    )
    async def prometheus_metrics(request: Request) -> Response:
        metrics = LoadonceState.of(request).metrics
        if metrics is None:
            message = "this app keeps no metrics (lifespan(metrics=False))"
            return error_response(404, message, request_id_of(request))
        # Off the loop: in multiprocess mode it reads every worker's files.
        body = await anyio.to_thread.run_sync(metrics.render)
        return Response(body, media_type=CONTENT_TYPE_LATEST)

    return router
