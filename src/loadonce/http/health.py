"""Liveness and readiness probes: per worker, per model, and never ready with zero models."""

from __future__ import annotations

import os

from fastapi import APIRouter
from starlette.requests import Request

from loadonce.http.json_answer import JSONAnswer
from loadonce.http.routes import LoadonceRoute
from loadonce.http.schemas import Liveness, Readiness
from loadonce.http.state import LoadonceState


def health_router() -> APIRouter:
    """``GET /livez`` and ``GET /readyz``; mount it in your own app with ``include_router``."""
    router = APIRouter(route_class=LoadonceRoute, tags=["health"])

    @router.get("/livez", response_model=Liveness, summary="The process is alive")
    async def livez() -> Liveness:
        # Answers from the event loop alone: it stays fast while models predict in threads.
        return Liveness(worker_pid=os.getpid())

    @router.get(
        "/readyz",
        response_model=Readiness,
        responses={503: {"model": Readiness, "description": "Not every model is ready"}},
        summary="Every declared model is loaded and warmed up in this worker",
    )
    async def readyz(request: Request) -> JSONAnswer:
        state = LoadonceState.in_scope(request.scope)
        if state is not None:
            registry = state.registry
            body = Readiness(
                ready=registry.is_ready,
                draining=registry.draining,
                worker_pid=os.getpid(),
                models=registry.states(),
                hung_calls=registry.hung_calls(),
            )
        else:
            body = Readiness(ready=False, worker_pid=os.getpid(), models={})
        return JSONAnswer(body.model_dump(mode="json"), status_code=200 if body.ready else 503)

    return router
