"""Stop waiting for a model's answer when the client that asked for it has gone away."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

from starlette.requests import Request

from loadonce._errors import ClientDisconnectedError

T = TypeVar("T")


async def unless_disconnected(request: Request, work: Awaitable[T]) -> T:
    """Await ``work``; if the client disconnects first, cancel it (a queued request leaves the
    queue without reaching the model) and raise ClientDisconnectedError.

    The watcher cancels the current task the way ``asyncio.timeout`` does (cancel, then
    ``uncancel`` on the way out), which costs one task per request and no ``asyncio.wait``:
    this runs on every request, so its cost is the server's throughput.
    """
    current = asyncio.current_task()
    assert current is not None
    already_cancelling = current.cancelling()
    disconnected = False

    async def watch() -> None:
        nonlocal disconnected
        # Once the body has been read, the server's next message for this request is the
        # disconnect: this waits for it without polling.
        while (await request.receive())["type"] != "http.disconnect":
            pass
        disconnected = True
        current.cancel()

    watcher = asyncio.get_running_loop().create_task(watch())
    try:
        return await work
    except asyncio.CancelledError:
        if disconnected and current.uncancel() <= already_cancelling:
            raise ClientDisconnectedError(
                "the client disconnected before the model answered"
            ) from None
        raise
    finally:
        watcher.cancel()
