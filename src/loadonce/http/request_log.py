"""One log line per request, under the request's id (X-Request-ID, or a new one).

The id is chosen here, before any route runs, and kept in the ASGI scope: the routes' error
bodies, the response's X-Request-ID header and this line all carry the same id, so a client
report leads to the server log's line.
"""

from __future__ import annotations

import asyncio
import logging
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from loadonce.http.errors import raw_error_response
from loadonce.http.request_info import (
    ARRIVED_SCOPE_KEY,
    REFUSED_SCOPE_KEY,
    REQUEST_ID_HEADER,
    REQUEST_ID_SCOPE_KEY,
    request_id_from,
)
from loadonce.http.request_line import access_logger, write_request_line
from loadonce.http.state import LoadonceState

# The request id on the request's span (as in docs/tracing.md).
REQUEST_ID_ATTRIBUTE = "loadonce.request_id"
_HEADER = REQUEST_ID_HEADER.lower().encode("latin-1")


_DRAIN_ENDED = (
    "the server stopped before this request finished (its drain timeout ended): send it again"
)


class RequestLogMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        # Chosen already when the server's HTTP protocol answered the request itself.
        chosen = scope.get(REQUEST_ID_SCOPE_KEY)
        request_id = chosen if isinstance(chosen, str) else request_id_from(scope["headers"])
        scope[REQUEST_ID_SCOPE_KEY] = request_id
        # Stamped earlier by loadonce serve's HTTP protocol (when the head was read), if so.
        if ARRIVED_SCOPE_KEY not in scope:
            scope[ARRIVED_SCOPE_KEY] = asyncio.get_running_loop().time()
        started = time.perf_counter()
        status = 500  # if the app fails before it answers, uvicorn answers 500
        state = LoadonceState.in_scope(scope)
        traced = None
        if state is not None and state.tracing is not None:
            # Sampled out: None, and nothing more is done for the request's tracing.
            traced = state.tracing.start_request(scope["method"], scope["headers"])
            if traced is not None:
                traced.describe(
                    {
                        "http.request.method": scope["method"],
                        "url.path": scope["path"],
                        REQUEST_ID_ATTRIBUTE: request_id,
                    }
                )
                traced.enter()

        answered = False

        async def send_with_id(message: Message) -> None:
            nonlocal status, answered
            if message["type"] == "http.response.start":
                status, answered = message["status"], True
                headers = list(message.get("headers", []))
                if not any(name.lower() == _HEADER for name, _ in headers):
                    headers.append((_HEADER, request_id.encode("latin-1")))
                    message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except asyncio.CancelledError:
            # The server's drain ended with this request still running (drain_timeout_s):
            # uvicorn cancels it, and would log the cancellation's traceback and answer 500.
            # It is the server leaving, said as such: 503, and the task ends normally.
            if answered or state is None or not state.registry.draining:
                raise
            leaving = raw_error_response(503, _DRAIN_ENDED, scope, {"Retry-After": "1"})
            await leaving(scope, receive, send_with_id)
        finally:
            # Answered by the server's HTTP protocol itself (a bad chunk in the body), whatever
            # the route then saw (its client gone).
            status = scope.get(REFUSED_SCOPE_KEY, status)
            if access_logger.isEnabledFor(logging.INFO):
                milliseconds = (time.perf_counter() - started) * 1000
                write_request_line(scope["method"], scope["path"], status, milliseconds, request_id)
            if traced is not None:  # after the access line, which carries its ids
                traced.finish(status)
