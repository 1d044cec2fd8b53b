"""How loadonce's routes answer errors: JSON with a message and a request id, never a traceback."""

from __future__ import annotations

import itertools
import logging
import os
import re
import time
import uuid
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi.exceptions import HTTPException, RequestValidationError
from fastapi.routing import APIRoute
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.types import Scope

from loadonce._errors import (
    ClientDisconnectedError,
    DeadlineExceededError,
    ForbiddenError,
    InvalidInputError,
    LoadonceError,
    ModelNotFoundError,
    ModelNotReadyError,
    ModelRaisedError,
    NotAvailableHereError,
    QueueFullError,
    RequestTooLargeError,
    describe_exception,
)
from loadonce._log_safe import log_safe
from loadonce._metrics import metrics_of

logger = logging.getLogger("loadonce")

REQUEST_ID_HEADER = "X-Request-ID"
# Where RequestLogMiddleware keeps the id it chose, so every part of the answer uses it.
REQUEST_ID_SCOPE_KEY = "loadonce.request_id"
# The event loop's time when the request first reached loadonce (its outermost middleware):
# a request's deadline counts from there, body reading and loop lag included.
ARRIVED_SCOPE_KEY = "loadonce.arrived"
# A request's own deadline in seconds, for every predict route (at most the model's timeout_s).
TIMEOUT_HEADER = "X-Request-Timeout"
_TIMEOUT_KEY = TIMEOUT_HEADER.lower().encode("latin-1")
# A client's id is echoed only if it is short and plain, so it cannot forge log lines.
_CLIENT_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")


_REQUEST_ID_KEY = REQUEST_ID_HEADER.lower().encode("latin-1")


def request_id_of(request: Request) -> str:
    """The id the request log middleware chose, else the client's, else a new one."""
    chosen = request.scope.get(REQUEST_ID_SCOPE_KEY)
    if isinstance(chosen, str):
        return chosen
    return request_id_from(request.scope["headers"])


def request_id_from(headers: list[tuple[bytes, bytes]]) -> str:
    """The client's X-Request-ID if it is short and plain, else a new one."""
    # Read from the raw ASGI headers: Starlette's Headers would be built for this one lookup.
    for key, value in headers:
        if key == _REQUEST_ID_KEY:
            given: str = value.decode("latin-1")
            if _CLIENT_ID.match(given):
                return given
            break
    return new_request_id()


class _RequestIds:
    """New ids: a random prefix per process and a counter, 32 hex digits like a uuid4's.
    uuid4 per request cost 3% of the event loop's time under load; a request id needs to be
    unique, not secret. The prefix is drawn again in a forked child (workers are forked from
    one process), so workers and restarts never share one."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.prefix = uuid.uuid4().hex[:16]
        self.counter = itertools.count(1)

    def new(self) -> str:
        return f"{self.prefix}{next(self.counter):016x}"


_IDS = _RequestIds()
os.register_at_fork(after_in_child=_IDS.reset)


def new_request_id() -> str:
    return _IDS.new()


def arrival_of(request: Request) -> float | None:
    """When the request reached loadonce, in the loop's time (None: an app without loadonce's
    request log middleware; the deadline then counts from the route)."""
    arrived = request.scope.get(ARRIVED_SCOPE_KEY)
    return arrived if isinstance(arrived, float) else None


def requested_timeout(request: Request) -> float | None:
    """The X-Request-Timeout header in seconds, if sent (a 422 when it is not a positive
    number): read from the raw ASGI headers, which costs less than Starlette's Headers."""
    for key, value in request.scope["headers"]:
        if key == _TIMEOUT_KEY:
            try:
                timeout = float(value)
            except ValueError:
                timeout = -1.0
            if not 0 < timeout < float("inf"):
                raise RequestValidationError(
                    [
                        {
                            "loc": ("header", TIMEOUT_HEADER),
                            "msg": "must be a positive number of seconds",
                            "type": "value_error",
                        }
                    ]
                )
            return timeout
    return None


def error_response(status: int, message: str, request_id: str, **extra: Any) -> JSONResponse:
    headers = {REQUEST_ID_HEADER: request_id}
    if status == 503:
        headers["Retry-After"] = "1"
    body = {"error": message, "request_id": request_id, **extra}
    return JSONResponse(body, status_code=status, headers=headers)


def invalid_fields(exc: RequestValidationError) -> list[dict[str, str]]:
    """Each invalid field of a request and why, as ``{"field": "body.inputs", "message": ...}``."""
    return [
        {"field": ".".join(str(part) for part in err["loc"]), "message": err["msg"]}
        for err in exc.errors()
    ]


def status_and_message(exc: Exception, request: Request, request_id: str) -> tuple[int, str]:
    """The HTTP status and the client's message for an exception a route raised; logs what
    the client is not told (a traceback never leaves the server)."""
    if isinstance(exc, ModelNotFoundError):
        return 404, str(exc)
    if isinstance(exc, ModelNotReadyError | QueueFullError):
        return 503, str(exc)
    if isinstance(exc, DeadlineExceededError):
        return 504, str(exc)
    if isinstance(exc, ClientDisconnectedError | ClientDisconnect):
        # Nobody reads this answer; nginx's 499 says "client closed request" in access logs.
        return 499, str(exc)
    if isinstance(exc, InvalidInputError):
        return 400, f"invalid inputs: {exc}"
    if isinstance(exc, RequestTooLargeError):
        return 413, str(exc)
    if isinstance(exc, ForbiddenError):
        return 403, str(exc)
    if isinstance(exc, NotAvailableHereError):
        return 501, str(exc)
    if isinstance(exc, ModelRaisedError):
        cause = exc.model_error
        return _failed(request, request_id, cause, f"the model raised {type(cause).__name__}")
    if isinstance(exc, LoadonceError):
        logger.error("request %s %s failed: %s", request_id, log_safe(request.url.path), exc)
        return 500, str(exc)
    return _failed(request, request_id, exc, f"the server failed ({type(exc).__name__})")


def _failed(request: Request, request_id: str, cause: BaseException, what: str) -> tuple[int, str]:
    """A 500 whose details (the traceback) go to the log only, under the request id."""
    logger.error(
        "request %s %s: %s: %s",
        request_id,
        log_safe(request.url.path),
        what,
        describe_exception(cause),
        exc_info=cause,
    )
    return 500, f"{what}; the server log has the details under request id {request_id}"


def raw_error_response(
    status: int, message: str, scope: Scope, headers: dict[str, str] | None = None
) -> JSONResponse:
    """An error answered before any route ran (middleware): ``{"error"}`` under /v2, as the
    Open Inference Protocol defines it, ``{"error", "request_id"}`` elsewhere."""
    chosen = scope.get(REQUEST_ID_SCOPE_KEY)
    request_id = chosen if isinstance(chosen, str) else request_id_from(scope["headers"])
    if route_path(scope).startswith("/v2"):
        response = JSONResponse({"error": message}, status_code=status, headers=headers)
        response.headers[REQUEST_ID_HEADER] = request_id
        return response
    response = error_response(status, message, request_id)
    response.headers.update(headers or {})
    return response


def response_for_exception(exc: Exception, request: Request, request_id: str) -> JSONResponse:
    """The JSON routes' error: ``{"error", "request_id"}``, plus ``fields`` for a 422."""
    if isinstance(exc, RequestValidationError):
        fields = invalid_fields(exc)
        summary = "; ".join(f"{f['field']}: {f['message']}" for f in fields)
        return error_response(422, f"invalid request: {summary}", request_id, fields=fields)
    status, message = status_and_message(exc, request, request_id)
    return error_response(status, message, request_id)


def _observe(request: Request, route: str, status: int, seconds: float) -> None:
    metrics = metrics_of(request)
    if metrics is None:
        return
    params = request.path_params
    name = params.get("name") or params.get("model_name") or ""
    registry = getattr(request.app.state, "loadonce", None)
    # Only declared names become label values: a client must not mint new time series.
    model = name if registry is not None and name in registry else ""
    metrics.request_done(model, route, status, seconds)


class LoadonceRoute(APIRoute):
    """A route that answers its own errors, so mounting loadonce's routers in a user's app
    changes nothing about how the user's other routes answer theirs."""

    @staticmethod
    def error_for(exc: Exception, request: Request, request_id: str) -> Response:
        return response_for_exception(exc, request, request_id)

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def handle(request: Request) -> Response:
            started = time.perf_counter()
            request_id = request_id_of(request)
            try:
                response = await handler(request)
            except HTTPException:
                raise  # the app's own handlers answer these, as everywhere else in the app
            except ModelRaisedError as exc:
                if isinstance(exc.model_error, HTTPException):
                    raise exc.model_error from None  # the user's code answers, as above
                response = self.error_for(exc, request, request_id)
            except Exception as exc:
                response = self.error_for(exc, request, request_id)
            else:
                response.headers.setdefault(REQUEST_ID_HEADER, request_id)
            _observe(request, self.path, response.status_code, time.perf_counter() - started)
            return response

        return handle


def route_path(scope: Scope) -> str:
    """The path the app's routes see: without the prefix the app is mounted under (Ray Serve's
    route_prefix, a proxy's root_path), as Starlette's router matches it."""
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    if root and path.startswith(root):
        return path[len(root) :] or "/"
    return path
