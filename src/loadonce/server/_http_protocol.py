"""uvicorn's HTTP protocol with the limits a server facing slow or hostile clients needs.

uvicorn bounds an idle keep-alive connection, but not a client that sends its request slowly:
600 connections that each sent half a request head stayed open for good, and neither the size
of the head (an 8 MiB header line) nor the number of its fields (20,000) was bounded. This
protocol adds, per connection:

- ``header_timeout_s``: the whole request head must arrive within it (408 and close);
- ``body_timeout_s``: a body that stops arriving for that long is abandoned (the connection
  closes; the route sees a disconnected client, answered 499);
- ``max_header_bytes`` and ``max_header_fields``: past either, 431 and close.
"""

from __future__ import annotations

import asyncio
from http import HTTPStatus
from typing import Any

from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


class _HeadTooLargeError(Exception):
    """Raised from the parser's callback; the parser reports it as a parse error."""


class GuardedHttpProtocol(HttpToolsProtocol):
    header_timeout_s: float = 10.0
    body_timeout_s: float = 30.0
    max_header_bytes: int = 64 * 1024
    max_header_fields: int = 100

    def __init__(self, config: Config, *args: Any, **kwargs: Any) -> None:
        super().__init__(config, *args, **kwargs)
        self._in_head = True
        self._head_bytes = 0
        self._fields = 0
        self._head_too_large = False
        self._timer: asyncio.TimerHandle | None = None

    def _arm(self, seconds: float, status: HTTPStatus | None) -> None:
        self._disarm()
        self._timer = self.loop.call_later(seconds, self._timed_out, status)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _timed_out(self, status: HTTPStatus | None) -> None:
        self._timer = None
        if self.transport.is_closing():
            return
        if status is not None:
            self._refuse(status, "the request head did not arrive in time")
        else:
            self.transport.close()  # the route sees its client gone

    def _refuse(self, status: HTTPStatus, message: str) -> None:
        body = f'{{"error": "{message}"}}'.encode()
        self.transport.write(
            f"HTTP/1.1 {status.value} {status.phrase}\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\nconnection: close\r\n\r\n".encode()
            + body
        )
        # Closing now, with the client's bytes unread, would reset the connection and the
        # client might never see the answer: stop reading, end our side, close shortly.
        self.transport.pause_reading()
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self.loop.call_later(1.0, self.transport.close)

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm(self.header_timeout_s, HTTPStatus.REQUEST_TIMEOUT)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._in_head:
            self._head_bytes += len(data)
        super().data_received(data)
        if self._in_head and self._head_bytes > self.max_header_bytes and not self._head_too_large:
            self._head_too_large = True
            self._disarm()
            self._refuse(
                HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE, "the request head is too large"
            )

    def send_400_response(self, msg: str) -> None:
        if self._head_too_large:
            self._disarm()
            self._refuse(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE, "too many header fields")
        else:
            super().send_400_response(msg)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if not self._in_head:  # the next request on a kept-alive connection
            self._in_head, self._head_bytes, self._fields = True, 0, 0
            self._arm(self.header_timeout_s, HTTPStatus.REQUEST_TIMEOUT)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._fields += 1
        if self._fields > self.max_header_fields:
            self._head_too_large = True
            raise _HeadTooLargeError
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._arm(self.body_timeout_s, None)
        super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        self._arm(self.body_timeout_s, None)
        super().on_body(body)

    def on_message_complete(self) -> None:
        self._disarm()
        super().on_message_complete()


def guarded_protocol(
    *,
    header_timeout_s: float,
    body_timeout_s: float,
    max_header_bytes: int,
    max_header_fields: int,
) -> type[GuardedHttpProtocol]:
    """The protocol class uvicorn is given (``uvicorn.Config(http=...)``), with these limits."""
    return type(
        "GuardedHttpProtocol",
        (GuardedHttpProtocol,),
        {
            "header_timeout_s": header_timeout_s,
            "body_timeout_s": body_timeout_s,
            "max_header_bytes": max_header_bytes,
            "max_header_fields": max_header_fields,
        },
    )
