"""Stop waiting for a model's answer when the client that asked for it has gone away."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable
from typing import TypeVar

from starlette.requests import Request

from loadonce._errors import ClientDisconnectedError

T = TypeVar("T")


async def unless_disconnected(request: Request, work: Awaitable[T]) -> T:
    """Await ``work``; if the client disconnects first, cancel it (a queued request leaves the
    queue without reaching the model) and raise ClientDisconnectedError."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        task.cancel()
        raise
    finally:
        watcher.cancel()
    if task.done():
        return task.result()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    raise ClientDisconnectedError("the client disconnected before the model answered")


async def _disconnected(request: Request) -> None:
    # Once the body has been read, the server's next message for this request is the
    # disconnect: this waits for it without polling.
    while (await request.receive())["type"] != "http.disconnect":
        pass
