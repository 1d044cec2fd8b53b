"""Refusing requests to a full model before FastAPI routes them.

Under overload, refusing is most of what the server does, and on the routes' path each
refusal still costs FastAPI's routing and middleware stack: the event loop spends its time
saying no while admitted requests wait in the kernel's socket buffer. This middleware
recognises the predict routes by their path, and answers 503 (with Retry-After, in the same
JSON as the routes) as soon as the model's queue has no room, for a fraction of that cost.
The routes keep their own check (``Model.refuse_if_full``) for apps that mount the routers
without this middleware.
"""

from __future__ import annotations

import time

from starlette.types import ASGIApp, Receive, Scope, Send

from loadonce._errors import QueueFullError
from loadonce._fast_path import INFERENCE_PATHS
from loadonce._http import raw_error_response, route_path
from loadonce._metrics import Metrics
from loadonce._registry import Registry


class QueueFullRefusalMiddleware:
    def __init__(self, app: ASGIApp, registry: Registry, metrics: Metrics | None) -> None:
        self.app = app
        self.registry = registry
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            started = time.perf_counter()
            path = route_path(scope)
            for pattern, route in INFERENCE_PATHS:
                match = pattern.match(path)
                if match is None:
                    continue
                name = match.group(1)
                if name in self.registry:
                    try:
                        self.registry.get(name).refuse_if_full()
                    except QueueFullError as full:
                        response = raw_error_response(503, str(full), scope, {"Retry-After": "1"})
                        await response(scope, receive, send)
                        if self.metrics is not None:
                            seconds = time.perf_counter() - started
                            self.metrics.request_done(name, route, 503, seconds)
                        return
                break
        await self.app(scope, receive, send)
