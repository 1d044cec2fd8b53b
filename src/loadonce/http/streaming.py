"""Answering a generation as it is generated: Server-Sent Events that start with the first token.

A generation's errors before its first token (a prompt over the context, a full queue, a
deadline) are ordinary HTTP answers with their status; only once the first event exists does
the 200 and its event stream begin. When the client goes away, Starlette cancels the response's
iteration: the generation is closed then, and its sequence leaves the model's batch at the next
step.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import TypeVar

from fastapi import Request
from fastapi.responses import StreamingResponse
from starlette.types import Message, Receive, Scope, Send

from loadonce.core.tracebacks import release_tracebacks
from loadonce.core.utf8 import utf8
from loadonce.http.errors import DRAIN_ENDED, status_and_message
from loadonce.http.request_info import ENDED_SCOPE_KEY
from loadonce.http.state import LoadonceState

__all__ = [
    "EventStreamResponse",
    "StreamOutcome",
    "first_then_rest",
    "guarded",
    "server_sent_event",
]

T = TypeVar("T")

# Proxies (nginx) buffer answers by default: a stream would reach the client all at once.
_STREAM_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


async def first_then_rest(events: AsyncIterator[T]) -> AsyncIterator[T]:
    """Wait for the first event of ``events`` (what it raises before then raises here, for the
    route's error answer), and return an iterator of every event, the first included, that
    closes ``events`` however it ends."""
    try:
        first = await anext(events)
    except BaseException:
        await _close(events)
        raise

    async def every() -> AsyncIterator[T]:
        async with contextlib.aclosing(events):  # type: ignore[type-var]
            yield first
            async for event in events:
                yield event

    return every()


def server_sent_event(data: str) -> bytes:
    """One SSE event of one line of data (JSON never holds a raw newline)."""
    return b"data: " + utf8(data) + b"\n\n"


class EventStreamResponse(StreamingResponse):
    """``text/event-stream``, never buffered by a proxy. ``when_done``, if set (by the code
    that counts requests), is told the stream's final status once it ended: a stream that
    failed midway, or whose client left, was counted as the 200 it began with."""

    media_type = "text/event-stream"

    def __init__(self, content: AsyncIterator[bytes], outcome: StreamOutcome) -> None:
        super().__init__(content, headers=_STREAM_HEADERS)
        self._content = content
        self.outcome = outcome
        self.when_done: Callable[[int], None] | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = False

        async def sending(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        # Closed however the answer ends: a server of ASGI spec 2.4 stops iterating when a
        # send fails (the client went away) and leaves the iterator to the garbage collector,
        # while the generation it holds would go on.
        try:
            await super().__call__(scope, receive, sending)
        except asyncio.CancelledError:
            # The server's drain ended with the stream running (uvicorn cancels its task):
            # the body was cut mid-stream (the client's "incomplete chunked read", logged as
            # its own 499 with the cancellation's traceback). Its last event says so, as a
            # request not yet answered is answered 503, and the body ends whole.
            last_event = self.outcome.last_event
            if not started or last_event is None or not _drain_ended(scope):
                raise
            self.outcome.status = 503
            body = last_event(503, DRAIN_ENDED)
            await send({"type": "http.response.body", "body": body, "more_body": False})
        finally:
            await _close(self._content)
            final = self.outcome.final_status
            # The request's log line says it too (it said the 200 the stream began with).
            scope[ENDED_SCOPE_KEY] = final
            if self.when_done is not None:
                self.when_done(final)


@dataclass
class StreamOutcome:
    """How a stream ended, for the request's line in the metrics (its 200 left at the
    start): ``status`` an error's status when one ended it; ``whole`` once every chunk went."""

    status: int = 200
    whole: bool = False
    # Its last event when it fails after it began (``guarded``'s ``on_error``).
    last_event: Callable[[int, str], bytes] | None = None

    @property
    def final_status(self) -> int:
        if self.status != 200 or self.whole:
            return self.status
        return 499  # the client left before the end (nginx's "client closed request")


async def guarded(
    chunks: AsyncIterator[bytes],
    request: Request,
    request_id: str,
    on_error: Callable[[int, str], bytes],
    outcome: StreamOutcome | None = None,
) -> AsyncIterator[bytes]:
    """``chunks``, with an error raised after the stream began sent as a last event
    (``on_error(status, message)``: the message a client may see, the details logged under
    the request id), since the status line has left already; ``outcome`` told how it ended."""
    outcome = outcome if outcome is not None else StreamOutcome()
    outcome.last_event = on_error
    try:
        async for chunk in chunks:
            yield chunk
    except Exception as exc:
        status, message = status_and_message(exc, request, request_id)
        release_tracebacks(exc)  # logged: its memory goes back now (core/tracebacks.py)
        outcome.status = status
        yield on_error(status, message)
    else:
        outcome.whole = True


def _drain_ended(scope: Scope) -> bool:
    """Whether the server is draining: a cancellation then is its drain timeout's end."""
    state = LoadonceState.in_scope(scope)
    return state is not None and state.registry.draining


async def _close(events: AsyncIterator[T]) -> None:
    close = getattr(events, "aclose", None)
    if close is not None:
        await close()
