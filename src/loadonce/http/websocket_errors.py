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
import json
import logging
import os
import traceback

from starlette.types import Scope, Send

logger = logging.getLogger("loadonce")

TRY_AGAIN_LATER = 1013
INTERNAL_ERROR = 1011
POLICY_VIOLATION = 1008
UNSUPPORTED_DATA = 1003  # a binary message where text is read, or the reverse
INVALID_DATA = 1007  # a message its reader cannot decode (not JSON, not UTF-8)
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


# Starlette's readers of one message: what they raise for the client's message (a KeyError for
# the other type, a ValueError for what is not JSON or UTF-8) is the client's doing.
_RECEIVERS = frozenset({"receive_text", "receive_bytes", "receive_json"})
_STARLETTE_WEBSOCKETS = os.path.join("starlette", "websockets.py")
_JSON_MODULE = os.path.dirname(json.__file__)


def unreadable_message(exc: Exception) -> tuple[int, str] | None:
    """The close code and reason for ``exc`` when Starlette's ``receive_text``,
    ``receive_bytes`` or ``receive_json`` raised it for the client's message (the other
    type, JSON or UTF-8 that does not decode); None for any other exception. Those were the
    server's failure (1011, a traceback logged): one per message a client sends."""
    if not isinstance(exc, KeyError | ValueError):
        return None
    receiver = None
    for frame, _ in traceback.walk_tb(exc.__traceback__):
        code = frame.f_code
        if code.co_name in _RECEIVERS and code.co_filename.endswith(_STARLETTE_WEBSOCKETS):
            receiver = code.co_name
        elif receiver is not None and not code.co_filename.startswith(_JSON_MODULE):
            receiver = None  # raised further in, by code of the app's own
    if receiver is None:
        return None
    if isinstance(exc, KeyError):
        wanted = "binary" if exc.args == ("bytes",) else "text"
        return UNSUPPORTED_DATA, f"this route reads {wanted} messages"
    if receiver == "receive_json" and not isinstance(exc, UnicodeDecodeError):
        return INVALID_DATA, "a message this route reads as JSON is not valid JSON"
    return INVALID_DATA, "a message this route reads is not valid UTF-8"


async def close_unreadable(send: Send, code: int, reason: str, request_id: str) -> None:
    """Close a connection whose client sent a message its route cannot read, in one line."""
    logger.info("WebSocket closed (%d): %s; request id %s", code, reason, request_id)
    with contextlib.suppress(Exception):  # the client may be gone already
        await send({"type": "websocket.close", "code": code, "reason": close_reason(reason)})
