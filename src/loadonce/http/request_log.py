"""One log line per request, under the request's id (X-Request-ID, or a new one).

The id is chosen before any route runs (``LoadonceMiddleware``, ``middleware.py``) and kept in
the ASGI scope: the routes' error bodies, the response's X-Request-ID header and this line all
carry the same id, so a client report leads to the server log's line.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

from starlette.types import Message, Receive, Scope, Send

from loadonce.core.log_safe import MOST_LOGGED_CHARACTERS
from loadonce.http.errors import DRAIN_ENDED, raw_error_response
from loadonce.http.request_info import (
    ARRIVED_SCOPE_KEY,
    ENDED_SCOPE_KEY,
    REFUSED_SCOPE_KEY,
    REQUEST_ID_HEADER,
    REQUEST_ID_SCOPE_KEY,
    request_id_from,
)
from loadonce.http.request_line import access_logger, write_request_line
from loadonce.http.state import LoadonceState

if TYPE_CHECKING:
    from loadonce.tracing.otel import RequestSpan

# The request id on the request's span (as in docs/tracing.md).
REQUEST_ID_ATTRIBUTE = "loadonce.request_id"
_HEADER = REQUEST_ID_HEADER.lower().encode("latin-1")


# The messages that begin an answer: an HTTP response's, a WebSocket's acceptance or denial.
_ANSWER_HEADS = frozenset(
    {"http.response.start", "websocket.accept", "websocket.http.response.start"}
)


class RequestLog:
    """A request's id, its answer's status, its log line and (traced) its span. ``send`` is
    the request's ``send`` with X-Request-ID added to the answer's head."""

    __slots__ = ("_send", "answered", "closed", "request_id", "started", "status", "traced")

    def __init__(self, scope: Scope, state: LoadonceState | None, send: Send) -> None:
        # Chosen already when the server's HTTP protocol answered the request itself.
        chosen = scope.get(REQUEST_ID_SCOPE_KEY)
        request_id = chosen if isinstance(chosen, str) else request_id_from(scope["headers"])
        scope[REQUEST_ID_SCOPE_KEY] = self.request_id = request_id
        # Stamped earlier by loadonce serve's HTTP protocol (when the head was read), if so.
        if ARRIVED_SCOPE_KEY not in scope:
            scope[ARRIVED_SCOPE_KEY] = asyncio.get_running_loop().time()
        self.started = time.perf_counter()
        self.status = 500  # if the app fails before it answers, uvicorn answers 500
        self.answered = False
        self.closed = False  # a WebSocket the app closed
        self._send = send
        self.traced: RequestSpan | None = None

    def trace(self, scope: Scope, state: LoadonceState | None) -> None:
        """Start the request's span (HTTP requests, when tracing is on), once it passed the
        checks before the routes: a refused client's traceparent is never read (a flood of
        401s marked sampled would have been traced and exported, every one)."""
        if state is None or state.tracing is None or scope["type"] != "http":
            return
        # Sampled out: None, and nothing more is done for the request's tracing.
        traced = state.tracing.start_request(scope["method"], scope["headers"])
        if traced is not None:
            traced.describe(
                {
                    "http.request.method": scope["method"],
                    # Cut as the log's: 2,048 spans of 30 KB paths (a client's sampled
                    # traceparent) were 60 MB in the export queue.
                    "url.path": scope["path"][:MOST_LOGGED_CHARACTERS],
                    REQUEST_ID_ATTRIBUTE: self.request_id,
                }
            )
            traced.enter()
            self.traced = traced

    async def send(self, message: Message) -> None:
        kind = message["type"]
        if kind in _ANSWER_HEADS:
            status = 101 if kind == "websocket.accept" else message["status"]
            self.status, self.answered = status, True
            headers = list(message.get("headers", []))
            if not any(name.lower() == _HEADER for name, _ in headers):
                headers.append((_HEADER, self.request_id.encode("latin-1")))
                message = {**message, "headers": headers}
        elif kind == "websocket.close":
            if not self.answered:
                self.status, self.answered = 403, True  # the server refuses the handshake
            self.closed = True
        await self._send(message)

    async def answer_drain_end(
        self, scope: Scope, receive: Receive, state: LoadonceState | None, send: Send
    ) -> bool:
        """After the request's task was cancelled: when the server's drain ended with this
        request unanswered (uvicorn cancels it, and would log the cancellation's traceback
        and answer 500), answer 503 through ``send`` (this log's own, or one wrapping it),
        the server leaving said as such, and say True; else False (the cancellation goes
        on)."""
        if self.answered or state is None or not state.registry.draining:
            return False
        leaving = raw_error_response(503, DRAIN_ENDED, scope, {"Retry-After": "1"})
        await leaving(scope, receive, send)
        return True

    def seconds(self) -> float:
        """Since the request reached loadonce."""
        return time.perf_counter() - self.started

    def end(self, scope: Scope) -> None:
        """The request's log line, then its span's end."""
        # Answered by the server's HTTP protocol itself (a bad chunk in the body), whatever
        # the route then saw (its client gone).
        status = scope.get(REFUSED_SCOPE_KEY) or scope.get(ENDED_SCOPE_KEY, self.status)
        if access_logger.isEnabledFor(logging.INFO):
            milliseconds = (time.perf_counter() - self.started) * 1000
            method = scope["method"] if scope["type"] == "http" else "WEBSOCKET"
            path = scope["path"]
            write_request_line(method, path, status, milliseconds, self.request_id)
        if self.traced is not None:  # after the access line, which carries its ids
            self.traced.finish(status)
