"""uvicorn's HTTP protocol with the limits a server facing slow or hostile clients needs.

uvicorn bounds an idle keep-alive connection, but not a client that sends its request slowly:
600 connections that each sent half a request head stayed open for good, and neither the size
of the head (an 8 MiB header line) nor the number of its fields (20,000) was bounded. This
protocol adds, per connection:

- ``header_timeout_s``: the whole request head must arrive within it (408 and close);
- ``body_timeout_s``: a body that stops arriving for that long is abandoned (the connection
  closes; the route sees a disconnected client, answered 499), and so is one that trickles:
  the whole body has ``body_timeout_s`` plus a second per ``min_body_rate`` bytes it brought
  (Apache's mod_reqtimeout rule; a byte every few seconds held a connection for good, and a
  thousand of them every connection a worker takes);
- ``max_header_bytes`` and ``max_header_fields``: past either, 431 and close.
- an answer given before the request's body was read whole closes the connection (a
  lingering close, ``_LINGER_QUIET_S``): its body might never come.

Every request it refuses itself (a head refused or late, a request that is not valid HTTP,
one past ``max_connections``) is answered as loadonce's routes answer: a JSON error with a
request id (``X-Request-ID`` and the body), and an access line under that id. uvicorn answered
these in plain text, with no id, and logged no line (the 408 nothing at all).

It also stamps each request's arrival (when its head was read) in the scope: the deadline
counts from there, before the busy loop gets round to the request's task.

And it sends a response's head and body in one write: uvicorn writes each to the socket as it
comes (two system calls per answer), a quarter of the serving thread's time on a batched tiny
model (py-spy, docs/benchmarks.md). The head is held until the body follows, and under load
the answers of one step of the event loop leave together (``_GatheredWrites``).
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable, Sized
from http import HTTPStatus
from typing import Any, NoReturn

import httptools
from starlette.types import ASGIApp, Receive, Scope, Send
from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from loadonce.http.disconnect import CONNECTION_LOSS_SCOPE_KEY, ConnectionLoss
from loadonce.http.errors import raw_error_response
from loadonce.http.request_info import (
    ARRIVED_SCOPE_KEY,
    REFUSED_SCOPE_KEY,
    REQUEST_ID_SCOPE_KEY,
    new_request_id,
    request_id_from,
)
from loadonce.http.request_line import access_logger, write_request_line
from loadonce.http.wrapping import unwrapped
from loadonce.server.head_refusals import (
    ASTERISK_NOT_OPTIONS,
    CONNECT_REFUSAL,
    TRANSFER_CODING_IN_HTTP_1_0,
    UPGRADE_WITH_CHUNKED_BODY,
    Refusal,
    absolute_form_authority,
    parser_refusal,
    version_refusal,
)

logger = logging.getLogger("loadonce")


class _GatheredWrites:
    """The transport a request's cycle writes to. A response's head is held until its body
    follows (usually in the same step of the event loop), and both go to the socket in one
    write. While other requests are in flight in this worker (``in_flight``: its request
    tasks), the write waits for the end of the step, so the answers of one batch leave
    together and their clients' next requests arrive together (iris batched at 64
    connections: 17% more answers per second); alone, it goes at once (a lone request's
    answer does not wait for the log line and metrics after it). What is still held at the
    end of the step goes then; a closing transport first sends what it holds. Everything
    else is the connection's transport's own."""

    def __init__(
        self,
        transport: asyncio.Transport,
        loop: asyncio.AbstractEventLoop,
        in_flight: Sized,
        close: Callable[[], None],
    ) -> None:
        self._transport = transport
        self._loop = loop
        self._in_flight = in_flight
        self._close = close
        self._held: list[bytes] = []

    def write(self, data: bytes) -> None:
        if not self._held:
            self._loop.call_soon(self.send)
        self._held.append(data)
        if len(self._held) > 1 and len(self._in_flight) <= 1:
            self.send()

    def send(self) -> None:
        """Write what is held now (also before the connection writes on its own)."""
        held, self._held = self._held, []
        if held and not self._transport.is_closing():
            self._transport.write(b"".join(held) if len(held) > 1 else held[0])

    def close(self) -> None:
        self.send()
        self._close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


_HEAD_TOO_LARGE = HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE


# An answer sent before its request's body was read whole closes the connection (announced
# in its head): the client may never send that body (it waited for "100 Continue", which
# never came), and the next request on the connection would be read as the body's bytes:
# swallowed, its client waiting until the body timeout. What the client still sends is
# read and dropped until it pauses this long (or for body_timeout_s in all), so that it
# reads the answer rather than a reset: a lingering close, as nginx's.
_LINGER_QUIET_S = 1.0

_PROBES = (b"/livez", b"/readyz", b"/v2/health/live", b"/v2/health/ready")
# A chunk's size line and the line end after its data, with room for a short extension.
_CHUNK_FRAMING_BYTES = 32
_FRAMING_TOO_LARGE = "the chunked body's trailer fields or chunk extensions are too large"


class _RefusedHeadError(Exception):
    """Raised from the parser's callback; the parser reports it as a parse error."""


class GuardedHttpProtocol(HttpToolsProtocol):
    header_timeout_s: float = 10.0
    body_timeout_s: float = 30.0
    min_body_rate: float = 1024.0  # bytes a second, on average over the body
    max_header_bytes: int = 64 * 1024
    max_header_fields: int = 100

    # Per request this adds two small callbacks and no timer when the request arrives whole
    # (the usual case): it sat on every request of the hot path.
    def __init__(self, config: Config, *args: Any, **kwargs: Any) -> None:
        super().__init__(config, *args, **kwargs)
        self._in_head = True  # waiting for (the rest of) a request head
        self._in_body = False  # the head is complete, the body is not
        self._head_bytes = 0
        # Why the head was refused, once it was (answered at the parser's error).
        self._refusal: tuple[HTTPStatus, str] | None = None
        self._received_at = 0.0
        self._body_started = 0.0
        self._body_bytes = 0
        # A chunked body's data, chunks and trailer fields: what is read besides the data
        # (chunk sizes and extensions, trailer fields) is bounded as a head is.
        self._payload_bytes = 0
        self._framing_bytes = 0
        self._heads = 0  # of the requests on this connection: a read spanning two is not counted
        self._heads_before_read = 0  # _heads when the read being parsed began
        # A head whose first bytes were parsed and not its end: one that began in the read
        # that ended the request before it is timed too (_head_bytes counts from the next).
        self._head_begun = False
        self._chunks = 0
        self._trailer_fields = 0
        self._timer: asyncio.TimerHandle | None = None
        self._write_timer: asyncio.TimerHandle | None = None
        # Whether the request being read keeps the connection once its body is read whole:
        # until then its cycle says "close" (_LINGER_QUIET_S), and only its body's end
        # gives it back what the client asked for.
        self._keep_alive_after_body = False
        self._lingering = False  # answered and closing: what arrives is dropped
        # Where a read goes instead of the parser: dropped while lingering, the body of a
        # request whose Upgrade was not taken (_read_upgrade_body).
        self._aside: Callable[[bytes], None] | None = None
        # The Content-Length body still to read of a request whose Upgrade was not taken.
        self._upgrade_body_left = 0
        self._refused_after_answers: tuple[HTTPStatus, str] | None = None
        self._linger_ends = 0.0

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
        if self._in_head and self.cycle is not None and not self.cycle.response_complete:
            # A request pipelined behind one still being answered: its refusal waits for the
            # answers before it (on_response_complete). Written at once, it came before them
            # and ended the connection under them: the earlier request's answer was lost, and
            # its write after our end raised a traceback into the log.
            self._refused_after_answers = (status, message)
            self.transport.pause_reading()
            return
        self._gathered.send()  # an answer held for an earlier request goes first
        # Refused in its head: a new id, not one the client sent (the head was not read
        # whole). Refused in its body (a bad chunk), its route is running: its id, and its
        # log line says what the client got.
        if self._in_head:
            request_id = new_request_id()
        else:
            # Its route may not have started yet (the chunk came with the head): the id it
            # will take is chosen here, and kept in the scope for it.
            chosen = self.scope.get(REQUEST_ID_SCOPE_KEY)
            request_id = chosen if isinstance(chosen, str) else request_id_from(self.headers)
            self.scope[REQUEST_ID_SCOPE_KEY] = request_id  # type: ignore[literal-required]
            self.scope[REFUSED_SCOPE_KEY] = status.value  # type: ignore[literal-required]
        # What was read of its path (none if the head broke before it), without its query
        # (which may hold a token): the answer's body is its protocol's (OpenAI's under /v1),
        # as every refusal made before a route runs; its line writes that path too.
        path = getattr(self, "url", b"").split(b"?", 1)[0].decode("latin-1")
        body = _refusal_body(status.value, message, path, self.root_path, request_id, self.app)
        retry = "retry-after: 1\r\n" if status is HTTPStatus.SERVICE_UNAVAILABLE else ""
        self.transport.write(
            f"HTTP/1.1 {status.value} {status.phrase}\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\nx-request-id: {request_id}\r\n{retry}"
            "connection: close\r\n\r\n".encode()
            + body
        )
        # Refused in its head, no route ran for it: its line is written here. (A body refused
        # once its head was read, a bad chunk, is its route's request: the route writes it.)
        if self._in_head and access_logger.isEnabledFor(logging.INFO):
            write_request_line("-", path or "-", status.value, 0.0, request_id)
        # Closing now, with the client's bytes unread, would reset the connection and the
        # client might never see the answer: stop reading, end our side, close shortly.
        self.transport.pause_reading()
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self.loop.call_later(1.0, self.transport.close)

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._gathered = _GatheredWrites(transport, self.loop, self.tasks, self._close_after_answer)
        self._loss = ConnectionLoss()
        self._arm(self.header_timeout_s, HTTPStatus.REQUEST_TIMEOUT)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        if self._write_timer is not None:
            self._write_timer.cancel()
            self._write_timer = None
        super().connection_lost(exc)
        self._loss.happened()  # the requests waiting for a model's answer stop at once

    # An answer its client does not read: the transport's buffer fills and it asks us to
    # pause; uvicorn then waits for it to drain, for ever. A client that reads nothing for
    # body_timeout_s is dropped (its connection aborted, what was buffered for it freed):
    # ten clients that never read an 18 MiB answer held 470 MiB, and fifty held every
    # connection slot (every request, probes too, a 503), for as long as they stayed.

    def pause_writing(self) -> None:
        super().pause_writing()
        if self._write_timer is None:
            self._write_timer = self.loop.call_later(self.body_timeout_s, self._not_read)

    def resume_writing(self) -> None:
        if self._write_timer is not None:
            self._write_timer.cancel()
            self._write_timer = None
        super().resume_writing()

    def _not_read(self) -> None:
        self._write_timer = None
        if self.transport.is_closing() and not self.transport.get_write_buffer_size():
            return
        logger.info(
            "a client read nothing of its answer for %g s (body_timeout_s): dropping it",
            self.body_timeout_s,
        )
        self.transport.abort()

    def data_received(self, data: bytes) -> None:
        self._received_at = self.loop.time()
        aside = self._aside
        if aside is not None:  # lingering, or an ignored Upgrade's body
            aside(data)
            return
        # A read that begins inside a body and ends there is that body's bytes alone (a
        # read holding a head, or a pipelined request's end, is not counted as framing).
        payload_before = self._payload_bytes if self._in_body else None
        heads_before = self._heads_before_read = self._heads
        if self._in_head:
            self._head_bytes += len(data)
        self._feed(data)
        if self._refusal is not None or self.transport.is_closing():
            return
        if self._in_head:
            if self._head_bytes > self.max_header_bytes:
                self._refusal = self._too_large_refusal()
                self._disarm()
                self._refuse(*self._refusal)
            elif (self._head_bytes or self._head_begun) and self._timer is None:
                self._arm(self.header_timeout_s, HTTPStatus.REQUEST_TIMEOUT)
        elif self._in_body:
            # Each piece restarts the pause's limit, within what the body as a whole is given.
            self._body_bytes += len(data)
            if payload_before is not None and self._heads == heads_before:
                self._framing_bytes += len(data) - (self._payload_bytes - payload_before)
            if self._framing_over_the_limit():
                self._refusal = (_HEAD_TOO_LARGE, _FRAMING_TOO_LARGE)
                self._disarm()
                self._refuse(*self._refusal)
                return
            whole = self.body_timeout_s + self._body_bytes / self.min_body_rate
            left = self._body_started + whole - self._received_at
            self._arm(min(self.body_timeout_s, left), None)

    def _linger_read(self, data: bytes) -> None:
        """The answer went: its body's bytes are dropped unparsed."""
        self._arm(min(_LINGER_QUIET_S, self._linger_ends - self._received_at), None)

    def _feed(self, data: bytes) -> None:
        """uvicorn's ``data_received``, with the parser's reason for refusing a head kept for
        the answer, and an Upgrade it does not take (not a WebSocket's) read on as HTTP/1.1."""
        self._unset_keepalive_if_required()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._upgrade_ignored(data[upgrade.args[0] :])
        except httptools.HttpParserError as error:
            self.logger.warning("Invalid HTTP request received.")
            if self._refusal is None:
                # The request line is quoted (its method) only when this read began with it.
                began_here = self._heads == self._heads_before_read and self._head_bytes == len(
                    data
                )
                self._refusal = parser_refusal(error, data[:64] if began_here else None)
            self.send_400_response("")

    def send_400_response(self, msg: str) -> None:
        self._gathered.send()  # an answer held for an earlier request goes first
        self._disarm()
        if self._refusal is None:
            self._refusal = (HTTPStatus.BAD_REQUEST, "the request is not valid HTTP/1.1")
        self._refuse(*self._refusal)

    def on_message_begin(self) -> None:
        self._head_begun = True
        super().on_message_begin()

    def on_headers_complete(self) -> None:
        self._head_begun = False
        # Each refusal is the parser's error: send_400_response answers it.
        if len(self.headers) > self.max_header_fields:
            self._refusal = (_HEAD_TOO_LARGE, "too many header fields")
            raise _RefusedHeadError
        if self._head_over_the_limit():  # it said "too many header fields" too
            self._refusal = self._too_large_refusal()
            raise _RefusedHeadError
        # Anything but a kept-alive HTTP/1.1 request for a path: a rare head, checked in
        # _unusual_head. (Not its version first: the parser formats it as a string, ten
        # times what these cost. A request not kept alive is HTTP/1.1 with "close", or
        # another version without "keep-alive".)
        parser = self.parser
        answer = None
        if not parser.should_keep_alive() or self.url[:1] != b"/" or parser.should_upgrade():
            answer = self._unusual_head(parser.get_http_version())
        coding = self._transfer_coding_refusal()
        if coding is not None:
            self._refuse_head(coding)
        self._in_head, self._in_body = False, True
        self._body_started, self._body_bytes = self._received_at, 0
        self._payload_bytes = self._chunks = self._trailer_fields = self._framing_bytes = 0
        self._heads += 1
        if self._timer is not None:
            self._disarm()  # the head's timer, if it came in pieces
        # Its deadline counts from here (ARRIVED_SCOPE_KEY), so the wait for the busy loop
        # to start the request's task is part of it.
        self.scope[ARRIVED_SCOPE_KEY] = self._received_at  # type: ignore[literal-required]
        # Where a route waiting for a model learns its client left (http/disconnect.py).
        self.scope[CONNECTION_LOSS_SCOPE_KEY] = self._loss  # type: ignore[literal-required]
        limit = self.limit_concurrency
        # max_connections open connections are served, this one among them (uvicorn's own
        # check counted it with the others: max_connections - 1 were, and a limit of 1
        # refused every request); as many requests running, this one not yet among them.
        busy = limit is not None and (len(self.connections) > limit or len(self.tasks) >= limit)
        app = self.app
        if busy and not self._is_a_probe():
            # Past max_connections: loadonce's refusal, not uvicorn's plain-text one. (A
            # health probe is answered past it: a few slow clients holding every slot made
            # /livez a 503, and an orchestrator kills a live worker for it.)
            self.app = functools.partial(_past_max_connections, app)
        elif answer is not None:
            self.app = answer
        self.limit_concurrency = None  # uvicorn's own check is the one above
        try:
            super().on_headers_complete()
        finally:
            self.app, self.limit_concurrency = app, limit
        cycle = self.cycle
        if cycle is not None:
            cycle.transport = self._gathered  # type: ignore[assignment]
            # An answer that starts before the body ends says "connection: close" (the
            # body's end, usually in this same read, gives the cycle its keep-alive back).
            self._keep_alive_after_body, cycle.keep_alive = cycle.keep_alive, False

    def handle_websocket_upgrade(self) -> None:
        # uvicorn takes a WebSocket handshake before its own max_connections check (and
        # ours, in on_headers_complete): past the limit every handshake was accepted, each
        # a connection held for good. Refused as a request past it is.
        limit = self.limit_concurrency
        if limit is not None and (len(self.connections) > limit or len(self.tasks) >= limit):
            self._in_head, self._in_body = True, False  # no route runs: a new id, its line here
            self._refuse(HTTPStatus.SERVICE_UNAVAILABLE, _PAST_MAX_CONNECTIONS)
            return
        super().handle_websocket_upgrade()

    def _refuse_head(self, refusal: Refusal) -> NoReturn:
        """Refuse the head being read (from a parser callback: send_400_response answers)."""
        self._refusal = refusal
        raise _RefusedHeadError

    def _unusual_head(self, version: str) -> ASGIApp | None:
        """A head that is not a kept-alive HTTP/1.1 request for a path, or that asks for an
        Upgrade: refused as RFC 9112 and 9110 say, or the app answering it (``OPTIONS *``).
        (An HTTP/1.0 request that asks for keep-alive is not seen here: its Expect is not
        ignored; its Transfer-Encoding is refused all the same, _transfer_coding_refusal.)"""
        if version != "1.1":
            if version != "1.0":
                self._refuse_head(version_refusal(version))
            # RFC 9110 10.1.1: an HTTP/1.0 client cannot read a 100 (Continue).
            self.expect_100_continue = False
        method = self.parser.get_method()
        if method == b"CONNECT":  # the parser would stop after it, as after an Upgrade
            self._refuse_head(CONNECT_REFUSAL)
        target = self.url
        if target == b"*":
            if method != b"OPTIONS":
                self._refuse_head(ASTERISK_NOT_OPTIONS)
            return _server_options
        if target[:1] != b"/":
            authority = absolute_form_authority(target)
            if isinstance(authority, tuple):
                self._refuse_head(authority)
            # RFC 9112 3.2.2: the target's authority is the request's Host (the browser
            # guard and the app read it there); without a Host field it is still a 400.
            self.headers[:] = [
                (name, authority if name == b"host" else value) for name, value in self.headers
            ]
        if self.parser.should_upgrade() and not self._should_upgrade():
            self._upgrade_body_left = self._upgrade_body_length()
        return None

    def _upgrade_body_length(self) -> int:
        """The body of a request whose Upgrade is not taken: the parser skips it (it stops
        after the head, as if the rest were the new protocol's), so it is read here, by its
        Content-Length."""
        length = 0
        for name, value in self.headers:
            if name == b"transfer-encoding":
                self._refuse_head(UPGRADE_WITH_CHUNKED_BODY)
            if name == b"content-length":
                length = int(value)  # the parser read it: digits, one field
        return length

    def _upgrade_ignored(self, rest: bytes) -> None:
        """After the head of a request asking for a protocol this server does not switch to
        (h2c: ``curl --http2``), the parser stopped, having skipped its body: the body was
        lost (the route read nothing), and a body sent later was parsed as a request of its
        own (one a proxy in front never saw: request smuggling). The request goes on as
        HTTP/1.1: its body read here (``_read_upgrade_body``), what follows parsed as the
        next request."""
        if self._get_upgrade() == b"websocket":
            self._unsupported_upgrade_warning()  # uvicorn's: no WebSocket library
        if self._refusal is not None or self.transport.is_closing():
            return
        if self._upgrade_body_left:
            self._aside = self._read_upgrade_body
        if rest:
            (self._aside or self.data_received)(rest)

    def _read_upgrade_body(self, data: bytes) -> None:
        left = self._upgrade_body_left
        piece = data[:left]
        self._upgrade_body_left = left - len(piece)
        self._body_bytes += len(piece)
        self.on_body(piece)
        if self._upgrade_body_left:
            whole = self.body_timeout_s + self._body_bytes / self.min_body_rate
            left_s = self._body_started + whole - self._received_at
            self._arm(min(self.body_timeout_s, left_s), None)
            return
        self._aside = None
        self.on_message_complete()
        if len(data) > left:
            self.data_received(data[left:])

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._in_head:
            super().on_header(name, value)
            return
        # A trailer field (after a chunked body): never merged into the request's headers,
        # which its route has been reading since the head (RFC 9110 6.5.1), only counted.
        self._trailer_fields += 1
        if self._trailer_fields > self.max_header_fields:
            self._refusal = (_HEAD_TOO_LARGE, "too many trailer fields")
            raise _RefusedHeadError

    def on_chunk_header(self) -> None:
        self._chunks += 1

    def on_body(self, body: bytes) -> None:
        self._payload_bytes += len(body)
        super().on_body(body)

    def _framing_over_the_limit(self) -> bool:
        """Whether what the body's reads carry besides its data (chunk sizes and extensions,
        trailer fields) passed what a head may hold, with a few bytes more per chunk: the
        parser keeps a trailer field whole until it ends, and chunk extensions would keep
        the body's timer going for ever. (The read that completed the head is not counted:
        at most one read, 64 KiB, more.)"""
        limit = self.max_header_bytes + _CHUNK_FRAMING_BYTES * self._chunks
        return self._framing_bytes > limit

    def _is_a_probe(self) -> bool:
        """A GET or HEAD of a health route (under a root path too): cheap, and never a body."""
        if self.parser.get_method() not in (b"GET", b"HEAD"):
            return False
        path = self.url.split(b"?", 1)[0]
        return path.endswith(_PROBES)

    def _too_large_refusal(self) -> Refusal:
        """431, or 414 when the request target is most of it."""
        if len(getattr(self, "url", b"")) * 2 > self.max_header_bytes:
            return HTTPStatus.REQUEST_URI_TOO_LONG, "the request target (URL) is too long"
        return _HEAD_TOO_LARGE, "the request head is too large"

    def _head_over_the_limit(self) -> bool:
        """A head that came in one read was parsed whole before data_received could refuse
        it: its size from what was parsed, counted only when the bytes read in the head's
        state (which may hold some of the body too) pass the limit, or when a request before
        it ended in the same read (pipelined: _head_bytes was not counting it): not on the
        usual request's path."""
        if self._head_bytes <= self.max_header_bytes and self._heads == self._heads_before_read:
            return False  # the read's first head, and the bytes read in the head's state fit
        size = len(self.url) + sum(len(name) + len(value) + 4 for name, value in self.headers)
        return size > self.max_header_bytes

    def _transfer_coding_refusal(self) -> Refusal | None:
        """The refusal of a Transfer-Encoding other than plain chunked (the parser reads a
        body "chunked" when that coding comes last, and took "gzip, chunked" as plain
        chunks, its gzip ignored: RFC 9112 says 501), or of one in an HTTP/1.0 request,
        whose framing RFC 9112 (6.1) says is faulty."""
        for name, value in self.headers:
            if name == b"transfer-encoding":
                if self.parser.get_http_version() == "1.0":
                    return TRANSFER_CODING_IN_HTTP_1_0
                if value.strip().lower() != b"chunked":
                    coding = repr(value.decode("latin-1")[:64])
                    return HTTPStatus.NOT_IMPLEMENTED, f"transfer coding {coding} is not supported"
        return None

    def on_message_complete(self) -> None:
        if self._upgrade_body_left:  # the parser skipped the body: _read_upgrade_body reads it
            return
        self._in_head, self._in_body, self._head_bytes = True, False, 0
        if self._timer is not None:
            self._disarm()
        cycle = self.cycle
        if cycle is not None and not cycle.response_started:
            cycle.keep_alive = self._keep_alive_after_body
        super().on_message_complete()

    def shutdown(self) -> None:
        self._keep_alive_after_body = False  # a request still being read closes too
        super().shutdown()

    def _close_after_answer(self) -> None:
        """The cycle closing the connection after its answer: at once when the request was
        read whole; else a lingering close (_LINGER_QUIET_S)."""
        if not self._in_body or self.transport.is_closing():
            self.transport.close()
            return
        self._lingering = True
        self._aside = self._linger_read
        self._linger_ends = self.loop.time() + self.body_timeout_s
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self._arm(_LINGER_QUIET_S, None)

    def on_response_complete(self) -> None:
        super().on_response_complete()
        refused = self._refused_after_answers
        if refused is not None and self.cycle is not None and self.cycle.response_complete:
            self._refused_after_answers = None
            self._refuse(*refused)
            return
        if self._lingering and self.timeout_keep_alive_task is not None:
            # uvicorn's keep-alive timer would cut the linger short: ours ends it.
            self.timeout_keep_alive_task.cancel()
            self.timeout_keep_alive_task = None


_PAST_MAX_CONNECTIONS = (
    "the server is at its limit of open connections and requests (max_connections): retry shortly"
)


def _refusal_body(
    status: int, message: str, path: str, root_path: str, request_id: str, app: object
) -> bytes:
    """The body of a refusal the protocol writes itself, as ``raw_error_response`` writes a
    refusal's for the path's protocol (a message may quote the client: JSON escapes it)."""
    scope = {
        "path": path,
        "root_path": root_path,
        "headers": [],
        REQUEST_ID_SCOPE_KEY: request_id,
        "app": _served(app),
    }
    return bytes(raw_error_response(status, message, scope).body)


def _served(app: object) -> object:
    """The app inside uvicorn's wrappers: its routes say where each protocol is (an app that
    included ``openai_router()`` under ``/llm``), as they do for its own middleware."""
    return unwrapped(app)


async def _past_max_connections(app: object, scope: Scope, receive: Receive, send: Send) -> None:
    """The answer to a request past max_connections: 503 with Retry-After, in the error body
    of the path's protocol, under its request id, logged."""
    request_id = request_id_from(scope["headers"])
    scope[REQUEST_ID_SCOPE_KEY] = request_id
    headers = {"Retry-After": "1", "Connection": "close"}
    # Its X-Request-ID header is the error's own (``raw_error_response``, from the scope).
    answer = raw_error_response(503, _PAST_MAX_CONNECTIONS, {**scope, "app": _served(app)}, headers)
    await answer(scope, receive, send)
    if access_logger.isEnabledFor(logging.INFO):
        write_request_line(scope["method"], scope["path"], 503, 0.0, request_id)


async def _server_options(scope: Scope, receive: Receive, send: Send) -> None:
    """The answer to ``OPTIONS *`` (RFC 9110 9.3.7: the server itself, a ping): 200, no body,
    under its request id, logged. Each route answers OPTIONS for itself."""
    request_id = request_id_from(scope["headers"])
    headers = [(b"content-length", b"0"), (b"x-request-id", request_id.encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": b""})
    if access_logger.isEnabledFor(logging.INFO):
        write_request_line("OPTIONS", "*", 200, 0.0, request_id)


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
