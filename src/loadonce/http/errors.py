"""How loadonce answers errors: one mapping from an exception to a status and a message (the
status is the error's own, ``LoadonceError.status``), rendered by each protocol in its own
body; never a traceback."""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable
from typing import Any

from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send
from starlette.websockets import WebSocket, WebSocketClose, WebSocketState

from loadonce.core.errors import (
    ClientDisconnectedError,
    DeadlineTooShortError,
    InvalidRequestError,
    LoadonceError,
    ModelRaisedError,
    describe_exception,
)
from loadonce.core.log_safe import log_safe_cut, quoted
from loadonce.core.tracebacks import release_tracebacks
from loadonce.http.json_answer import JSONAnswer
from loadonce.http.protocol_roots import OPENAI_ROOT, V2_ROOT, protocol_root
from loadonce.http.request_info import (
    REQUEST_ID_HEADER,
    REQUEST_ID_SCOPE_KEY,
    request_id_from,
    route_path,
)
from loadonce.http.websocket_errors import can_deny_with_http, close_code, close_reason
from loadonce.tracing import record_failure

logger = logging.getLogger("loadonce")

# How a protocol answers an exception its route raised: (exception, request, request id).
ErrorAnswer = Callable[[Exception, Request, str], Response]


class MethodNotAllowedError(LoadonceError):
    """The path exists, but not with this method (HTTP 405; the answer says ``Allow``)."""

    status = 405

    def __init__(self, method: str, allowed: str) -> None:
        super().__init__(f"{method} is not allowed here; use {allowed}")


async def answer_wrong_method(request: Request, exc: Exception) -> Response:
    """The app's handler for the 405 a route of Starlette's own (``/openapi.json``) raises:
    loadonce's body, and the route's ``Allow``."""
    headers = dict(getattr(exc, "headers", None) or {})
    # Starlette lists them in a set's order: sorted, so the answer is the same every time.
    allowed = ", ".join(sorted(m for m in headers.get("Allow", "").split(", ") if m))
    if allowed:
        headers["Allow"] = allowed
    message = f"{request.method} is not allowed here" + (f"; use {allowed}" if allowed else "")
    return raw_error_response(405, message, request.scope, headers)


async def answer_not_found(scope: Scope, receive: Receive, send: Send) -> None:
    """The app's answer to a path no route has (``Router.default``): a 404 in the body of the
    protocol the path belongs to, where Starlette answers ``{"detail": "Not Found"}``."""
    if scope["type"] != "http":
        await WebSocketClose()(scope, receive, send)
        return
    # Quoted (so cut): the path is the client's, and a 30 KB one made a 30 KB answer.
    message = f"no such endpoint: {scope['method']} {quoted(route_path(scope))}"
    await raw_error_response(404, message, scope)(scope, receive, send)


def error_headers(status: int, request_id: str | None) -> dict[str, str]:
    """The headers of every error answer: the request id. Retry-After is the error's own
    (``retry_headers``), never implied by the status: a 503 for a model an operator unloaded
    said "retry in a second" to a client that then retried for good."""
    return {} if request_id is None else {REQUEST_ID_HEADER: request_id}


# OpenAI's clients retry a 5xx twice unless the answer says not to (this header, theirs).
SHOULD_RETRY_HEADER = "x-should-retry"


# ``retry_advice``'s answer where sending the request again surely cannot help.
NEVER_RETRY = -1


def retry_advice(exc: BaseException, status: int) -> int | None:
    """Whether sending the request again can help, one answer for both protocols: the whole
    seconds to wait where the error says waiting helps (``LoadonceError.retry_after_s``);
    ``NEVER_RETRY`` where it surely cannot (a 503 without them: a model failed or unloaded,
    which only an operator brings back; a deadline shorter than any call of the model);
    None for the rest, which says nothing (a 504 may be answered in time once the load
    drops)."""
    seconds = getattr(exc, "retry_after_s", None)
    if isinstance(seconds, int):
        return seconds
    if status == 503 or isinstance(exc, DeadlineTooShortError):
        return NEVER_RETRY
    return None


def retry_headers(exc: BaseException, status: int) -> dict[str, str]:
    """``retry_advice`` as HTTP says it: Retry-After, or ``x-should-retry: false``, which
    OpenAI's clients obey (they retry every 5xx otherwise)."""
    advice = retry_advice(exc, status)
    if advice is None:
        return {}
    if advice == NEVER_RETRY:
        return {SHOULD_RETRY_HEADER: "false"}
    return {"Retry-After": str(advice)}


def error_response(status: int, message: str, request_id: str, **extra: Any) -> JSONAnswer:
    """The JSON routes' error body: ``{"error", "request_id", ...extra}``."""
    body = {"error": message, "request_id": request_id, **extra}
    return JSONAnswer(body, status_code=status, headers=error_headers(status, request_id))


def v2_error(status: int, message: str, request_id: str | None = None) -> JSONAnswer:
    """The Open Inference Protocol's error body: ``{"error": "<message>"}``, always."""
    return JSONAnswer(
        {"error": message}, status_code=status, headers=error_headers(status, request_id)
    )


# OpenAI's error types by status; its clients pick their exception class by the status.
_OPENAI_TYPES = {401: "invalid_request_error", 403: "permission_error"}


def openai_error(
    status: int,
    message: str,
    request_id: str | None = None,
    *,
    param: str | None = None,
    code: str | None = None,
) -> JSONAnswer:
    """The OpenAI API's error body: ``{"error": {"message", "type", "param", "code"}}``."""
    kind = _OPENAI_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    if status == 401 and code is None:
        code = "invalid_api_key"  # as OpenAI answers a missing or unknown key
    body = {"error": {"message": message, "type": kind, "param": param, "code": code}}
    return JSONAnswer(body, status_code=status, headers=error_headers(status, request_id))


def status_and_message(exc: Exception, request: Request, request_id: str) -> tuple[int, str]:
    """The HTTP status and the client's message for an exception a route raised; logs what
    the client is not told (a traceback never leaves the server)."""
    return describe_error(exc, request.url.path, request_id)


def describe_error(exc: Exception, where: str, request_id: str) -> tuple[int, str]:
    """``status_and_message`` for any transport: ``where`` names what was asked in the log
    (a path, a gRPC method); the status is HTTP's, which gRPC maps to its codes."""
    if isinstance(exc, ModelRaisedError):
        cause = exc.model_error
        named = "" if exc.model is None else f" (model '{exc.model}')"
        return _failed(where, request_id, cause, f"the model raised {type(cause).__name__}{named}")
    if isinstance(exc, LoadonceError):
        if exc.status == 500:
            logger.error("request %s %s failed: %s", request_id, log_safe_cut(where), exc)
        return exc.status, exc.client_message()
    if isinstance(exc, ClientDisconnect):
        return ClientDisconnectedError.status, "the client disconnected"
    return _failed(where, request_id, exc, f"the server failed ({type(exc).__name__})")


def _failed(where: str, request_id: str, cause: BaseException, what: str) -> tuple[int, str]:
    """A 500 whose details (the traceback) go to the log only, under the request id."""
    logger.error(
        "request %s %s: %s: %s",
        request_id,
        log_safe_cut(where),
        what,
        describe_exception(cause),
        exc_info=cause,
    )
    return 500, f"{what}; the server log has the details under request id {request_id}"


# What a request still running when the server's drain timeout ended is told: a 503, or, a
# stream's last event (``streaming.py``).
DRAIN_ENDED = (
    "the server stopped before this request finished (its drain timeout ended): send it again"
)


def raw_error_response(
    status: int, message: str, scope: Scope, headers: dict[str, str] | None = None
) -> JSONAnswer:
    """An error answered before any route ran (middleware), in the body of the protocol the
    path belongs to (``protocol_roots``): ``{"error"}`` under the Open Inference Protocol's
    /v2, OpenAI's ``{"error": {"message", ...}}`` under its /v1, wherever the app included
    their routers, ``{"error", "request_id"}`` elsewhere."""
    chosen = scope.get(REQUEST_ID_SCOPE_KEY)
    request_id = chosen if isinstance(chosen, str) else request_id_from(scope["headers"])
    root = protocol_root(scope)  # wherever the app included the protocol's router
    if root == V2_ROOT:
        response = v2_error(status, message, request_id)
    elif root == OPENAI_ROOT:
        response = openai_error(status, message, request_id)
    else:
        response = error_response(status, message, request_id)
    response.headers.update(headers or {})
    return response


def json_error_for(exc: Exception, request: Request, request_id: str) -> Response:
    """The JSON routes' error: ``{"error", "request_id"}``, plus ``fields`` for a 422."""
    exc = _as_loadonce_error(exc)
    status, message = status_and_message(exc, request, request_id)
    if isinstance(exc, InvalidRequestError):
        fields = [{"field": field, "message": why} for field, why in exc.fields]
        return error_response(status, message, request_id, fields=fields)
    return error_response(status, message, request_id)


def v2_error_for(exc: Exception, request: Request, request_id: str) -> Response:
    """The Open Inference Protocol's error: ``{"error"}``, and 400 (not 422) for a request
    that is not valid, as the protocol says."""
    exc = _as_loadonce_error(exc)
    status, message = status_and_message(exc, request, request_id)
    return v2_error(v2_status(exc, status), message, request_id)


def v2_status(exc: Exception, status: int) -> int:
    """The Open Inference Protocol's status for ``exc`` (``status`` as ``describe_error``
    gave it): 400 for a request that is not valid, where the JSON routes answer 422; gRPC
    records its calls by it, so a malformed call counts as the same request over REST."""
    return 400 if isinstance(exc, InvalidRequestError) else status


def _as_loadonce_error(exc: Exception) -> Exception:
    """FastAPI's own validation error (a parameter a route declares) as loadonce's."""
    if isinstance(exc, RequestValidationError):
        return InvalidRequestError(
            [(".".join(str(part) for part in err["loc"]), err["msg"]) for err in exc.errors()]
        )
    return exc


async def answer_exception(
    exc: Exception, request: Request, request_id: str, error_for: ErrorAnswer
) -> Response:
    """The answer to an exception a loadonce route raised, wherever the route ran (FastAPI's
    routing or the inference middleware): an ``HTTPException`` of the user's own code (a
    predictor, a dependency) is answered by the app's handler for it, as FastAPI answers it
    anywhere in the app; everything else by the protocol's ``error_for``."""
    if isinstance(exc, ModelRaisedError) and isinstance(exc.model_error, HTTPException):
        exc = exc.model_error
    if isinstance(exc, HTTPException):
        response = await _app_handles(request, exc)
    else:
        response = error_for(exc, request, request_id)
        response.headers.update(retry_headers(exc, response.status_code))
    response.headers.setdefault(REQUEST_ID_HEADER, request_id)
    record_failure(exc, response.status_code)  # on the request's span, if it is traced
    release_tracebacks(exc)  # logged and recorded: its memory goes back now, not at a GC
    return response


async def answer_loadonce_error(request: Request, exc: Exception) -> Response | None:
    """The app's exception handler for loadonce's errors raised in a user's own route (a
    ``model.predict`` whose queue is full, whose deadline passed, whose inputs do not fit):
    answered as loadonce's routes answer them, in the error body of the path's protocol,
    with the request id (and Retry-After where waiting helps). They were plain-text 500s,
    each logged with a traceback. In a WebSocket route (``request`` is then the WebSocket) once the
    connection is open, or where the server takes no HTTP answer to a handshake: the
    connection closed with the code that says it (``websocket_errors.py``), and None."""
    chosen = request.scope.get(REQUEST_ID_SCOPE_KEY)
    request_id = chosen if isinstance(chosen, str) else request_id_from(request.scope["headers"])
    if isinstance(request, WebSocket) and (
        request.application_state is not WebSocketState.CONNECTING
        or not can_deny_with_http(request.scope)
    ):
        await _close_websocket(request, exc, request_id)
        return None

    def by_path(error: Exception, failed: Request, failed_id: str) -> Response:
        status, message = status_and_message(error, failed, failed_id)
        return raw_error_response(status, message, failed.scope)

    return await answer_exception(exc, request, request_id, by_path)


async def _close_websocket(websocket: WebSocket, exc: Exception, request_id: str) -> None:
    if websocket.application_state is WebSocketState.DISCONNECTED:
        return  # closed already: nothing more may be sent
    status, message = describe_error(exc, websocket.url.path, request_id)
    reason = close_reason(f"{message} (request id {request_id})")
    retry_helps = retry_advice(exc, status) != NEVER_RETRY
    await websocket.close(close_code(status, retry_helps=retry_helps), reason)


async def _app_handles(request: Request, exc: HTTPException) -> Response:
    """The response the app's exception handler for ``exc`` gives (looked up along the
    exception's class hierarchy, as Starlette does), else FastAPI's default."""
    handlers = getattr(request.scope.get("app"), "exception_handlers", {})
    handler = next(
        (handlers[cls] for cls in type(exc).__mro__ if cls in handlers), http_exception_handler
    )
    answer = handler(request, exc)
    response: Response = await answer if inspect.isawaitable(answer) else answer
    return response
