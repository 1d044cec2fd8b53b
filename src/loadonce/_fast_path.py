"""``POST /models/{name}/predict`` answered before FastAPI's routing.

Profiled under load (py-spy, iris, 64 connections, docs/benchmarks.md), the event loop spent
more of each predict request in FastAPI's router, dependency solving (even for a path
parameter), exception middleware and request/response wrappers than in loadonce's own work.
This middleware, the innermost of loadonce's, recognises the predict path and runs the route's
own function (``protocols.rest.answer_predict``) directly, with the route's error answers and
metrics; anything else goes on to FastAPI. The route stays registered: it documents the
endpoint in OpenAPI, and it serves apps that mount the routers without ``create_app``.
"""

from __future__ import annotations

import re
import time

from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from loadonce._http import REQUEST_ID_HEADER, request_id_of, response_for_exception, route_path
from loadonce._metrics import Metrics
from loadonce._registry import Registry
from loadonce.protocols.rest import answer_predict

PREDICT_ROUTE = "/models/{name}/predict"
_PREDICT_PATH = re.compile(r"^/models/([^/]+)/predict$")


class PredictFastPath:
    def __init__(self, app: ASGIApp, registry: Registry, metrics: Metrics | None) -> None:
        self.app = app
        self.registry = registry
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        match = None
        if scope["type"] == "http" and scope["method"] == "POST":
            match = _PREDICT_PATH.match(route_path(scope))
        if match is None:
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        name = match.group(1)
        request = Request(scope, receive, send)
        request_id = request_id_of(request)
        try:
            response = await answer_predict(request, name)
        except Exception as exc:
            response = response_for_exception(exc, request, request_id)
        else:
            response.headers.setdefault(REQUEST_ID_HEADER, request_id)
        if self.metrics is not None:
            # Only declared names become label values: a client must not mint time series.
            model = name if name in self.registry else ""
            seconds = time.perf_counter() - started
            self.metrics.request_done(model, PREDICT_ROUTE, response.status_code, seconds)
        await response(scope, receive, send)
