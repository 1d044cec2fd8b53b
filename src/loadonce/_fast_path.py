"""The inference routes answered before FastAPI's routing: ``POST /models/{name}/predict``
and the Open Inference Protocol's ``POST /v2/models/{model_name}[/versions/{v}]/infer``.

Profiled under load (py-spy, iris, 64 connections, docs/benchmarks.md), the event loop spent
more of each predict request in FastAPI's router, dependency solving (even for a path
parameter), exception middleware and request/response wrappers than in loadonce's own work.
This middleware, the innermost of loadonce's, recognises the inference paths and runs the
routes' own functions (``protocols.rest.answer_predict``, ``protocols.v2.infer_handler``)
directly, with the routes' own error answers and metrics; anything else goes on to FastAPI.
The routes stay registered: they document the endpoints in OpenAPI, and they serve apps that
mount the routers without ``create_app``.
"""

from __future__ import annotations

import inspect
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from fastapi.exception_handlers import http_exception_handler
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from loadonce._errors import ModelRaisedError
from loadonce._http import REQUEST_ID_HEADER, request_id_of, response_for_exception, route_path
from loadonce._limits import Limits
from loadonce._metrics import Metrics
from loadonce._registry import Registry
from loadonce.protocols.rest import answer_predict
from loadonce.protocols.v2._errors import V2Route
from loadonce.protocols.v2._routes import infer_handler


@dataclass(frozen=True)
class FastRoute:
    pattern: re.Pattern[str]  # its named groups are the route's path parameters
    template: str  # the route's path as FastAPI declares it: the metrics' route label
    handle: Callable[[Request], Awaitable[Response]]
    error_for: Callable[[Exception, Request, str], Response]


async def _predict(request: Request) -> Response:
    return await answer_predict(request, request.path_params["name"])


# The inference routes' paths, each with the route's template (the metrics' route label); the
# named groups are the path parameters, the first one the model's name. The queue-full
# refusal (``_shedding.py``) recognises the same paths.
PREDICT_PATH = (re.compile(r"^/models/(?P<name>[^/]+)/predict$"), "/models/{name}/predict")
INFER_PATHS = (
    (re.compile(r"^/v2/models/(?P<model_name>[^/]+)/infer$"), "/v2/models/{model_name}/infer"),
    (
        re.compile(r"^/v2/models/(?P<model_name>[^/]+)/versions/(?P<model_version>[^/]+)/infer$"),
        "/v2/models/{model_name}/versions/{model_version}/infer",
    ),
)
INFERENCE_PATHS = (PREDICT_PATH, *INFER_PATHS)


def inference_routes(limits: Limits) -> list[FastRoute]:
    infer = infer_handler(limits)
    routes = [FastRoute(*PREDICT_PATH, _predict, response_for_exception)]
    routes += [FastRoute(*path, infer, V2Route.error_for) for path in INFER_PATHS]
    return routes


class InferenceFastPath:
    def __init__(
        self, app: ASGIApp, registry: Registry, metrics: Metrics | None, limits: Limits
    ) -> None:
        self.app = app
        self.registry = registry
        self.metrics = metrics
        self.routes = inference_routes(limits)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            path = route_path(scope)
            for route in self.routes:
                match = route.pattern.match(path)
                if match is not None:
                    await self._answer(route, match.groupdict(), scope, receive, send)
                    return
        await self.app(scope, receive, send)

    async def _answer(
        self, route: FastRoute, params: dict[str, str], scope: Scope, receive: Receive, send: Send
    ) -> None:
        started = time.perf_counter()
        scope["path_params"] = params
        request = Request(scope, receive, send)
        request_id = request_id_of(request)
        try:
            response = await route.handle(request)
        except HTTPException as exc:
            # Raised by the user's own code (a predictor, a dependency): answered by the
            # app's handler for it, as FastAPI's routing would, not as a loadonce error.
            response = await _app_handles(scope, request, exc)
        except ModelRaisedError as exc:
            if isinstance(exc.model_error, HTTPException):
                response = await _app_handles(scope, request, exc.model_error)
            else:
                response = route.error_for(exc, request, request_id)
        except Exception as exc:
            response = route.error_for(exc, request, request_id)
        else:
            response.headers.setdefault(REQUEST_ID_HEADER, request_id)
        if self.metrics is not None:
            name = params.get("name") or params.get("model_name") or ""
            # Only declared names become label values: a client must not mint time series.
            model = name if name in self.registry else ""
            seconds = time.perf_counter() - started
            self.metrics.request_done(model, route.template, response.status_code, seconds)
        await response(scope, receive, send)


async def _app_handles(scope: Scope, request: Request, exc: HTTPException) -> Response:
    """The response the app's exception handler for ``exc`` gives (looked up along the
    exception's class hierarchy, as Starlette does), else FastAPI's default."""
    handlers = getattr(scope.get("app"), "exception_handlers", {})
    handler = next(
        (handlers[cls] for cls in type(exc).__mro__ if cls in handlers), http_exception_handler
    )
    answer = handler(request, exc)
    response: Response = await answer if inspect.isawaitable(answer) else answer
    return response
