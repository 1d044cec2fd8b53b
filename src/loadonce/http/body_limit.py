"""The body size limit (``Limits.max_body_bytes``), enforced before a route reads the body."""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from loadonce.core.limits import body_too_large
from loadonce.http.errors import raw_error_response
from loadonce.http.state import LoadonceState

_CONTENT_LENGTH = b"content-length"


class BodyLimitMiddleware:
    """413 at once when Content-Length is over the limit; a body sent without a length
    (chunked) is counted as it arrives and refused once it passes the limit."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        state = LoadonceState.in_scope(scope) if scope["type"] == "http" else None
        limit = None if state is None else state.limits.max_body_bytes
        if limit is None:
            await self.app(scope, receive, send)
            return
        for name, value in scope["headers"]:
            if name == _CONTENT_LENGTH:
                if value.isdigit() and int(value) > limit:
                    response = raw_error_response(413, str(body_too_large(limit)), scope)
                    await response(scope, receive, send)
                    return
                break
        received = 0

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    # Raised inside the route that reads the body: loadonce's routes answer
                    # it as a 413.
                    raise body_too_large(limit)
            return message

        await self.app(scope, counting_receive, send)
