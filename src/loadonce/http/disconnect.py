"""Stop waiting for a model's answer when the client that asked for it has gone away."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

from starlette.requests import Request

from loadonce.core.errors import ClientDisconnectedError

T = TypeVar("T")

# A request answered (or refused) sooner than this never pays for a watcher: under overload
# most are refused at once, and the event loop's time is the server's throughput.
WATCH_AFTER_S = 0.02
# Where `loadonce serve`'s HTTP protocol puts its connection's ``ConnectionLoss`` in the scope.
CONNECTION_LOSS_SCOPE_KEY = "loadonce.connection_loss"


class ConnectionLoss:
    """Told by the server's HTTP protocol when its connection is lost, it tells the requests
    waiting on it at once: no timer and no watcher task per request. Under load a request
    waited past WATCH_AFTER_S often, and each then started a watcher (a task, a ``receive``,
    a cancellation): the slower the loop, the more requests waited that long and the more
    the loop had to do, so any added work (tracing's) cost about twice itself."""

    __slots__ = ("lost", "waiting")

    def __init__(self) -> None:
        self.lost = False
        self.waiting: list[Callable[[], None]] = []

    def happened(self) -> None:
        self.lost = True
        waiting, self.waiting = self.waiting, []
        for tell in waiting:
            tell()


async def unless_disconnected(request: Request, work: Awaitable[T]) -> T:
    """Await ``work``; if the client disconnects first, cancel it (a queued request leaves the
    queue without reaching the model) and raise ClientDisconnectedError.

    The disconnect cancels the current task the way ``asyncio.timeout`` does (cancel, then
    ``uncancel`` on the way out), told by the server's protocol where it says (``loadonce
    serve``'s: ``ConnectionLoss``), else by one task started for a request still waiting
    after WATCH_AFTER_S (any other ASGI server), and no ``asyncio.wait``.
    """
    current = asyncio.current_task()
    assert current is not None
    already_cancelling = current.cancelling()
    disconnected = False
    told = request.scope.get(CONNECTION_LOSS_SCOPE_KEY)
    loss = told if isinstance(told, ConnectionLoss) else None

    def cancel() -> None:
        nonlocal disconnected
        disconnected = True
        current.cancel()

    stop_watching = None
    if loss is None:
        stop_watching = _watch_later(request, cancel)
    elif loss.lost:
        _close(work)
        raise ClientDisconnectedError(_GONE)
    else:
        loss.waiting.append(cancel)
    try:
        return await work
    except asyncio.CancelledError:
        if disconnected and current.uncancel() <= already_cancelling:
            raise ClientDisconnectedError(_GONE) from None
        raise
    finally:
        if stop_watching is not None:
            stop_watching()
        elif loss is not None and not loss.lost:
            loss.waiting.remove(cancel)


_GONE = "the client disconnected before the model answered"


def _watch_later(request: Request, cancel: Callable[[], None]) -> Callable[[], None]:
    """Watch for the disconnect through ``receive``, from WATCH_AFTER_S on."""
    loop = asyncio.get_running_loop()
    watcher: asyncio.Task[None] | None = None

    async def watch() -> None:
        # Once the body has been read, the server's next message for this request is the
        # disconnect: this waits for it without polling.
        while (await request.receive())["type"] != "http.disconnect":
            pass
        cancel()

    def start_watching() -> None:
        nonlocal watcher
        watcher = loop.create_task(watch())

    timer = loop.call_later(WATCH_AFTER_S, start_watching)

    def stop() -> None:
        timer.cancel()
        if watcher is not None:
            watcher.cancel()

    return stop


def _close(work: Awaitable[object]) -> None:
    """A coroutine never awaited, closed (Python warns of one left unclosed)."""
    close = getattr(work, "close", None)
    if close is not None:
        close()
