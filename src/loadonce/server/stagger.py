"""Workers load one at a time: an exclusive lock on a file the supervisor names.

Loading is where a model's memory peaks (a file read, decompressed, converted); N workers
loading at once peak N times over. Taking turns keeps the startup peak to one load's, and
with mapped weights (``share = "mmap"``) the later workers find the pages already cached.
"""

from __future__ import annotations

import fcntl
import logging
import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio.to_thread

logger = logging.getLogger("loadonce")

# Set by the supervisor for its workers; absent, a worker loads at once.
LOCK_VARIABLE = "LOADONCE_LOAD_LOCK"


@asynccontextmanager
async def one_worker_at_a_time() -> AsyncIterator[None]:
    path = os.environ.get(LOCK_VARIABLE)
    if not path:
        yield
        return
    descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        started = time.perf_counter()
        # In a thread: the event loop stays free (signals, a stop while waiting).
        await anyio.to_thread.run_sync(fcntl.flock, descriptor, fcntl.LOCK_EX)
        waited = time.perf_counter() - started
        if waited > 0.05:
            logger.info(
                "worker pid %d waited %.1f s for its turn to load (workers load one at a time)",
                os.getpid(),
                waited,
            )
        try:
            yield
        finally:
            fcntl.flock(descriptor, fcntl.LOCK_UN)
    finally:
        os.close(descriptor)
