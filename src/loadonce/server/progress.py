"""While models load in an interactive terminal: one status line, rewritten every second.

A large artifact can take minutes to load; a terminal that says nothing looks hung. The line
names the worker, the model, the time so far, the bytes the process has read and how much its
resident memory grew (mapped weights show there as they are touched). Only when stderr is a
terminal: logs keep their one line at the start and one at the end of each load.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TextIO

import psutil

from loadonce.core.model import ModelState
from loadonce.core.registry import Registry

_LOADING = (ModelState.LOADING, ModelState.RELOADING)


def _read_bytes(process: psutil.Process) -> int:
    try:
        return int(process.io_counters().read_chars)
    except (AttributeError, psutil.Error):
        return 0


def status_line(registry: Registry, started: float, read_before: int, rss_before: int) -> str:
    """``worker 123: loading 'big' 12 s, 1.5 GiB read, resident +1.2 GiB``."""
    process = psutil.Process()
    loading = [m.name for m in registry.models if m.state in _LOADING]
    what = f"loading '{loading[0]}'" if loading else "loading"
    read = _read_bytes(process) - read_before
    grown = int(process.memory_info().rss) - rss_before
    return (
        f"worker {os.getpid()}: {what} {time.monotonic() - started:.0f} s, "
        f"{read / 2**30:.2f} GiB read, resident {grown / 2**30:+.2f} GiB"
    )


@asynccontextmanager
async def load_progress(
    registry: Registry, stream: TextIO | None = None, interval: float = 1.0
) -> AsyncIterator[None]:
    out = stream or sys.stderr
    if not out.isatty():
        yield
        return
    process = psutil.Process()
    started, read_before = time.monotonic(), _read_bytes(process)
    rss_before = int(process.memory_info().rss)
    done = threading.Event()

    def report() -> None:
        while not done.wait(interval):
            out.write("\r\x1b[K" + status_line(registry, started, read_before, rss_before))
            out.flush()

    reporter = threading.Thread(target=report, name="loadonce-progress", daemon=True)
    clear = _ClearStatusFirst(out)
    handlers = _terminal_handlers()
    for handler in handlers:
        handler.addFilter(clear)
    reporter.start()
    try:
        yield
    finally:
        done.set()
        reporter.join()
        for handler in handlers:
            handler.removeFilter(clear)
        out.write("\r\x1b[K")
        out.flush()


class _ClearStatusFirst(logging.Filter):
    """A log line written while the status line is shown starts by erasing it (the next
    report draws it again below the log line), so the two never share a line."""

    def __init__(self, out: TextIO) -> None:
        super().__init__()
        self.out = out

    def filter(self, record: logging.LogRecord) -> bool:
        self.out.write("\r\x1b[K")
        return True


def _terminal_handlers() -> list[logging.Handler]:
    """The handlers of the loggers a worker writes to while it loads."""
    names = ("", "loadonce", "uvicorn", "uvicorn.error", "py.warnings")
    return list({h for name in names for h in logging.getLogger(name).handlers})
