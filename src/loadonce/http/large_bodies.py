"""Parsing a large request body off the event loop.

A valid 30-60 MB JSON body took the event loop 1.2-6.6 s to parse: every other request of the
worker, health probes included, waited that long. Bodies past ``LARGE_BODY_BYTES`` are parsed
in a thread instead, one at a time per worker, so that several maximal bodies at once do not
also multiply the memory their parsing takes. A thread alone does not free the loop:
pydantic-core holds the GIL for a whole parse. What does is how the caller parses: the JSON
route counts a large body's examples first and parses it a piece at a time
(``protocols/json/routes.py``, ``protocols/json/count.py``). Small bodies, the common
case, are parsed where they are: a thread hop would cost more than the parse.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Callable
from typing import TypeVar

import anyio.to_thread
from starlette.requests import Request

from loadonce.http.body_limit import held_body
from loadonce.http.content_encoding import decoded_body, is_encoded
from loadonce.http.state import LoadonceState
from loadonce.tracing import phase

LARGE_BODY_BYTES = 1 << 20

_T = TypeVar("_T")
_GATES: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Semaphore] = (
    weakref.WeakKeyDictionary()
)


def _gate() -> asyncio.Semaphore:
    loop = asyncio.get_running_loop()
    gate = _GATES.get(loop)
    if gate is None:
        gate = _GATES[loop] = asyncio.Semaphore(1)
    return gate


async def parse_body(parse: Callable[[bytes], _T], raw: bytes) -> _T:
    """``parse(raw)``: here for a small body, in a thread (one at a time) for a large one.
    Traced as "decode"."""
    with phase("decode"):
        if len(raw) < LARGE_BODY_BYTES:
            return parse(raw)
        return await off_the_loop(lambda: parse(raw))


async def off_the_loop(work: Callable[[], _T]) -> _T:
    """``work()`` in a thread, one such work at a time per worker: what a large body costs
    to parse or decode, without the event loop holding the GIL for all of it (the thread
    gives the GIL back between its steps of Python code)."""
    async with _gate():
        return await anyio.to_thread.run_sync(work)


async def parse_request_body(request: Request, parse: Callable[[bytes], _T]) -> _T:
    """``parse_body`` of the request's body, inflated first when its Content-Encoding says so
    (within the server's max_body_bytes; in a thread: a few bytes may inflate to the limit),
    what it inflated to counted in the worker's body budget (``body_limit.py``): what every
    route that takes a body calls."""
    raw = await request.body()
    headers = request.scope["headers"]
    if not is_encoded(headers):
        return await parse_body(parse, raw)
    limit = LoadonceState.of(request).limits.max_body_bytes
    with phase("decode"):
        decoded = await off_the_loop(lambda: decoded_body(raw, headers, limit))
        held = held_body(request.scope)
        if held is not None:
            held.take(len(decoded))
        return await off_the_loop(lambda: parse(decoded))
