"""An error in a WebSocket route, said in the WebSocket protocol once the connection is open.

Once a route accepted the connection, the ASGI app may only send messages or close it. An
HTTP answer then (loadonce's answer to its own errors, a 503 for a full queue) was refused by
uvicorn ("Expected ASGI message 'websocket.send' or 'websocket.close'"), and the client's
connection dropped without a close frame (1006), as it did for any other exception of the
route. The connection is now closed with a code and the reason (RFC 6455): 1013 "try again
later" where HTTP would say 503, 504 or 429 (unless it would say not to retry: 1011); 1011
for a server error; 1008 for a request the
server refuses. Before the handshake is answered, the HTTP answer is the denial response
where the server can send one (ASGI's ``websocket.http.response``), else the handshake is
closed (the server answers 403).
"""

from __future__ import annotations

import contextlib

from starlette.types import Scope, Send

TRY_AGAIN_LATER = 1013
INTERNAL_ERROR = 1011
POLICY_VIOLATION = 1008
# A close frame's reason: at most 123 bytes of UTF-8 (RFC 6455, 5.5: 125 with the code).
_MOST_REASON_BYTES = 123


def close_code(status: int, *, retry_helps: bool = True) -> int:
    """The close code that says what the HTTP ``status`` would. ``retry_helps``: False where
    the answer tells the client not to retry (a model an operator unloaded): 1011, never
    "try again later"."""
    if status in (429, 503, 504) and retry_helps:
        return TRY_AGAIN_LATER
    return INTERNAL_ERROR if status >= 500 else POLICY_VIOLATION


def close_reason(message: str) -> str:
    """``message`` cut to what a close frame carries, never inside a character."""
    return message.encode()[:_MOST_REASON_BYTES].decode("utf-8", "ignore")


def can_deny_with_http(scope: Scope) -> bool:
    """Whether the server takes an HTTP answer to a WebSocket handshake."""
    return "websocket.http.response" in (scope.get("extensions") or {})


async def close_failed(send: Send, exc: Exception, request_id: str) -> None:
    """Close an open connection whose route raised ``exc`` (nothing answered it): 1011,
    naming the exception's type and the request id, never its message."""
    reason = f"the server failed ({type(exc).__name__}); request id {request_id}"
    # The client may be gone already: the route's own exception is what goes on.
    with contextlib.suppress(Exception):
        await send(
            {"type": "websocket.close", "code": INTERNAL_ERROR, "reason": close_reason(reason)}
        )
