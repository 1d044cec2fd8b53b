"""How loadonce's routes answer errors: JSON with a message and a request id, never a traceback."""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi.exceptions import HTTPException, RequestValidationError
from fastapi.routing import APIRoute
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from loadonce._errors import (
    ClientDisconnectedError,
    DeadlineExceededError,
    InvalidInputError,
    LoadonceError,
    ModelNotFoundError,
    ModelNotReadyError,
    QueueFullError,
    describe_exception,
)

logger = logging.getLogger("loadonce")

REQUEST_ID_HEADER = "X-Request-ID"
# A client's id is echoed only if it is short and plain, so it cannot forge log lines.
_CLIENT_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")


_REQUEST_ID_KEY = REQUEST_ID_HEADER.lower().encode("latin-1")


def request_id_of(request: Request) -> str:
    # Read from the raw ASGI headers: Starlette's Headers would be built for this one lookup.
    for key, value in request.scope["headers"]:
        if key == _REQUEST_ID_KEY:
            given: str = value.decode("latin-1")
            if _CLIENT_ID.match(given):
                return given
            break
    return uuid.uuid4().hex


def error_response(status: int, message: str, request_id: str, **extra: Any) -> JSONResponse:
    headers = {REQUEST_ID_HEADER: request_id}
    if status == 503:
        headers["Retry-After"] = "1"
    body = {"error": message, "request_id": request_id, **extra}
    return JSONResponse(body, status_code=status, headers=headers)


def response_for_exception(exc: Exception, request: Request, request_id: str) -> JSONResponse:
    """Map an exception to its status; log what the client is not told."""
    if isinstance(exc, RequestValidationError):
        fields = [
            {"field": ".".join(str(part) for part in err["loc"]), "message": err["msg"]}
            for err in exc.errors()
        ]
        summary = "; ".join(f"{f['field']}: {f['message']}" for f in fields)
        return error_response(422, f"invalid request: {summary}", request_id, fields=fields)
    if isinstance(exc, ModelNotFoundError):
        return error_response(404, str(exc), request_id)
    if isinstance(exc, ModelNotReadyError | QueueFullError):
        return error_response(503, str(exc), request_id)
    if isinstance(exc, DeadlineExceededError):
        return error_response(504, str(exc), request_id)
    if isinstance(exc, ClientDisconnectedError):
        # Nobody reads this answer; nginx's 499 says "client closed request" in access logs.
        return error_response(499, str(exc), request_id)
    if isinstance(exc, InvalidInputError):
        return error_response(400, f"invalid inputs: {exc}", request_id)
    if isinstance(exc, LoadonceError):
        logger.error("request %s %s failed: %s", request_id, request.url.path, exc)
        return error_response(500, str(exc), request_id)
    logger.error(
        "request %s %s failed: %s",
        request_id,
        request.url.path,
        describe_exception(exc),
        exc_info=exc,
    )
    return error_response(
        500,
        f"the model raised {type(exc).__name__}; the server log has the details "
        f"under request id {request_id}",
        request_id,
    )


class LoadonceRoute(APIRoute):
    """A route that answers its own errors, so mounting loadonce's routers in a user's app
    changes nothing about how the user's other routes answer theirs."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def handle(request: Request) -> Response:
            request_id = request_id_of(request)
            try:
                response = await handler(request)
            except HTTPException:
                raise  # the app's own handlers answer these, as everywhere else in the app
            except Exception as exc:
                return response_for_exception(exc, request, request_id)
            response.headers.setdefault(REQUEST_ID_HEADER, request_id)
            return response

        return handle
