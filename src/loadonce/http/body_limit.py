"""The body size limit (``Limits.max_body_bytes``), enforced before a route reads the body:
413 at once when Content-Length is over the limit; a body sent without a length (chunked) is
counted as it arrives and refused once it passes the limit."""

from __future__ import annotations

from starlette.responses import Response
from starlette.types import Message, Receive, Scope

from loadonce.core.limits import body_too_large
from loadonce.http.errors import raw_error_response

_CONTENT_LENGTH = b"content-length"


def declared_too_large(scope: Scope, limit: int) -> Response | None:
    """The 413 answer when the request's Content-Length is over ``limit``, else None."""
    for name, value in scope["headers"]:
        if name == _CONTENT_LENGTH:
            if value.isdigit() and int(value) > limit:
                return raw_error_response(413, str(body_too_large(limit)), scope)
            break
    return None


def counting(receive: Receive, limit: int) -> Receive:
    """``receive``, raising the 413's error once the body received passes ``limit``."""
    received = 0

    async def counting_receive() -> Message:
        nonlocal received
        message = await receive()
        if message["type"] == "http.request":
            received += len(message.get("body", b""))
            if received > limit:
                # Raised inside the route that reads the body: loadonce's routes answer it
                # as a 413.
                raise body_too_large(limit)
        return message

    return counting_receive
