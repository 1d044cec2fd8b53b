"""uvicorn's WebSocket protocol with the write limits its HTTP protocol has (http_protocol.py).

uvicorn's own (``websockets``' sans-I/O one, its choice when that library is installed) never
gives up on a client that reads nothing: a route's ``send`` waited for the buffer to drain for
good, and its keepalive ping's timeout closed the transport gently (``close`` waits for what is
buffered to leave: it never did), so the connection, its task and its buffered messages stayed
as long as the client did. And it answers every ping it reads with a pong, whether or not the
client reads them: a client sending pings and reading nothing grew the server's buffer by
6 MiB a second, without end.

Here, per connection:

- a client that reads nothing of what was sent for ``body_timeout_s`` while the buffer is
  past its high-water mark is dropped (aborted, its buffer freed; the route's ``send`` raises
  the client's disconnect), as an HTTP answer's client is;
- while the buffer is past that mark, nothing more is read from the client (its pings, its
  messages): what the server writes in reply stays bounded by what the client reads;
- a text message that is not UTF-8 closes the connection with 1007 and one log line (uvicorn
  logged an error with a traceback for each).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

logger = logging.getLogger("loadonce")

_INVALID_DATA = 1007  # RFC 6455 7.4.1: data inconsistent with its message's type


class GuardedWebSocketProtocol(WebSocketsSansIOProtocol):
    body_timeout_s: float = 30.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._write_timer: asyncio.TimerHandle | None = None
        # Reading stopped because the client reads nothing (uvicorn's own ``read_paused``
        # says a message waits for the route: the two end apart).
        self._reads_held = False

    def pause_writing(self) -> None:
        super().pause_writing()
        if self._write_timer is None:
            self._write_timer = self.loop.call_later(self.body_timeout_s, self._not_read)

    def resume_writing(self) -> None:
        self._cancel_write_timer()
        super().resume_writing()
        if self._reads_held:
            self._reads_held = False
            if not self.read_paused and not self.transport.is_closing():
                self.transport.resume_reading()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if not self.writable.is_set() and not self._reads_held:
            self._hold_reads()

    async def receive(self) -> Any:
        message = await super().receive()
        # uvicorn resumes reading once the route took its message: not while the client
        # reads nothing (the resume and this pause come before the loop reads again).
        if self._reads_held:
            self._hold_reads()
        return message

    def send_receive_event_to_app(self) -> None:
        # uvicorn's, but a text message that is not UTF-8 is the client's fault: closed with
        # 1007 and one line, where uvicorn logged an error with a traceback for each.
        if self.curr_msg_data_type != "text" or self.close_sent:
            super().send_receive_event_to_app()
            return
        frames, self.frames = self.frames, []
        try:
            text = (frames[0] if len(frames) == 1 else b"".join(frames)).decode()
        except UnicodeDecodeError:
            logger.info("a WebSocket client sent text that is not UTF-8: closing it (1007)")
            self.conn.send_close(_INVALID_DATA, "a text message that is not valid UTF-8")
            self.handle_parser_exception()
            return
        self.queue.put_nowait({"type": "websocket.receive", "text": text})
        if not self.read_paused:  # until the route takes it (uvicorn's)
            self.read_paused = True
            self.transport.pause_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_write_timer()
        super().connection_lost(exc)

    def _hold_reads(self) -> None:
        if self.transport.is_closing():
            return
        self._reads_held = True
        self.transport.pause_reading()

    def _cancel_write_timer(self) -> None:
        if self._write_timer is not None:
            self._write_timer.cancel()
            self._write_timer = None

    def _not_read(self) -> None:
        self._write_timer = None
        logger.info(
            "a WebSocket client read nothing for %g s (body_timeout_s): dropping it",
            self.body_timeout_s,
        )
        self.transport.abort()


def guarded_websocket_protocol(*, body_timeout_s: float) -> type[GuardedWebSocketProtocol]:
    """The WebSocket protocol class uvicorn is given (``uvicorn.Config(ws=...)``)."""
    return type(
        "GuardedWebSocketProtocol",
        (GuardedWebSocketProtocol,),
        {"body_timeout_s": body_timeout_s},
    )
