"""Workers take turns to load: exclusive locks on files the supervisor names.

Loading is where a model's memory peaks (a file read, decompressed, converted); N workers
loading at once peak N times over. Taking turns keeps the startup peak to what the memory
holds, and with mapped weights (``share = "mmap"``) the later workers find the pages already
cached. By default one worker loads at a time; when the memory plan (server/plan.py) shows
that several loading at once still fit, the supervisor allows that many (``allow_at_once``):
there are then that many lock files, each held by one loading worker.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

logger = logging.getLogger("loadonce")

# Set by the supervisor for its workers; absent, a worker loads at once.
LOCK_VARIABLE = "LOADONCE_LOAD_LOCK"


def _slots_file(lock_path: str) -> str:
    return lock_path + ".slots"


def allow_at_once(count: int) -> None:
    """Let ``count`` workers load at the same time (the supervisor, before it starts them:
    the workers' environment is fixed when the fork server starts, so the count is a file
    beside the lock, read by each worker when it waits for its turn)."""
    path = os.environ.get(LOCK_VARIABLE)
    if path:
        with open(_slots_file(path), "w") as slots:
            slots.write(str(max(1, count)))


def _at_once(lock_path: str) -> int:
    try:
        with open(_slots_file(lock_path)) as slots:
            return max(1, int(slots.read().strip()))
    except (OSError, ValueError):
        return 1


def _take_a_turn(lock_path: str) -> int:
    """Block until this worker holds one of the lock files; its descriptor."""
    count = _at_once(lock_path)
    paths = [lock_path] if count == 1 else [f"{lock_path}.{i}" for i in range(count)]
    descriptors = [os.open(path, os.O_RDWR | os.O_CREAT, 0o600) for path in paths]
    held = None
    try:
        for descriptor in descriptors:
            try:
                fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue
            held = descriptor
            return held
        # Every turn is taken: wait for one (spread over them by process id).
        held = descriptors[os.getpid() % count]
        fcntl.flock(held, fcntl.LOCK_EX)
        return held
    finally:
        for descriptor in descriptors:
            if descriptor != held:
                os.close(descriptor)


@asynccontextmanager
async def one_worker_at_a_time() -> AsyncIterator[None]:
    """Hold a turn to load (one of the turns the supervisor allows) around the block."""
    path = os.environ.get(LOCK_VARIABLE)
    if not path:
        yield
        return
    started = time.perf_counter()
    import anyio.to_thread  # the worker's: the supervisor only names the lock

    # In a thread: the event loop stays free (signals, a stop while waiting).
    descriptor = await anyio.to_thread.run_sync(_take_a_turn, path)
    try:
        waited = time.perf_counter() - started
        if waited > 0.05:
            logger.info(
                "worker pid %d waited %.1f s for its turn to load (workers take turns to load)",
                os.getpid(),
                waited,
            )
        yield
    finally:
        with contextlib.suppress(OSError):
            fcntl.flock(descriptor, fcntl.LOCK_UN)
        os.close(descriptor)
