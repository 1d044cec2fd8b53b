"""Stop waiting for a model's answer when the client that asked for it has gone away."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

from starlette.requests import Request

from loadonce.core.errors import ClientDisconnectedError

T = TypeVar("T")

# A request answered (or refused) sooner than this never pays for a watcher: under overload
# most are refused at once, and the event loop's time is the server's throughput.
WATCH_AFTER_S = 0.02


async def unless_disconnected(request: Request, work: Awaitable[T]) -> T:
    """Await ``work``; if the client disconnects first, cancel it (a queued request leaves the
    queue without reaching the model) and raise ClientDisconnectedError.

    The watcher cancels the current task the way ``asyncio.timeout`` does (cancel, then
    ``uncancel`` on the way out): one task, started only for a request still waiting after
    WATCH_AFTER_S, and no ``asyncio.wait``.
    """
    current = asyncio.current_task()
    assert current is not None
    loop = asyncio.get_running_loop()
    already_cancelling = current.cancelling()
    disconnected = False
    watcher: asyncio.Task[None] | None = None

    async def watch() -> None:
        nonlocal disconnected
        # Once the body has been read, the server's next message for this request is the
        # disconnect: this waits for it without polling.
        while (await request.receive())["type"] != "http.disconnect":
            pass
        disconnected = True
        current.cancel()

    def start_watching() -> None:
        nonlocal watcher
        watcher = loop.create_task(watch())

    timer = loop.call_later(WATCH_AFTER_S, start_watching)
    try:
        return await work
    except asyncio.CancelledError:
        if disconnected and current.uncancel() <= already_cancelling:
            raise ClientDisconnectedError(
                "the client disconnected before the model answered"
            ) from None
        raise
    finally:
        timer.cancel()
        if watcher is not None:
            watcher.cancel()
