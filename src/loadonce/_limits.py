"""Request size limits: the body (refused before it is read, when its length is declared),
and one BYTES element of an Open Inference Protocol tensor."""

from __future__ import annotations

from dataclasses import dataclass

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from loadonce._errors import RequestTooLargeError
from loadonce._http import raw_error_response

MIB = 1024 * 1024
_CONTENT_LENGTH = b"content-length"


@dataclass(frozen=True)
class Limits:
    """``None`` means no limit."""

    max_body_bytes: int | None = 64 * MIB
    max_element_bytes: int | None = 16 * MIB


def body_too_large(limit: int) -> RequestTooLargeError:
    return RequestTooLargeError(
        f"the request body is larger than {limit} bytes, this server's max_body_bytes"
    )


class BodyLimitMiddleware:
    """413 at once when Content-Length is over the limit; a body sent without a length
    (chunked) is counted as it arrives and refused once it passes the limit."""

    def __init__(self, app: ASGIApp, max_body_bytes: int) -> None:
        self.app = app
        self.limit = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope["headers"]:
            if name == _CONTENT_LENGTH:
                if value.isdigit() and int(value) > self.limit:
                    response = raw_error_response(413, str(body_too_large(self.limit)), scope)
                    await response(scope, receive, send)
                    return
                break
        received = 0

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    # Raised inside the route that reads the body: loadonce's routes answer
                    # it as a 413.
                    raise body_too_large(self.limit)
            return message

        await self.app(scope, counting_receive, send)
