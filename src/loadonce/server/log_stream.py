"""The handler of loadonce's own log lines in server mode: written to standard error through a
buffer, flushed every tenth of a second, at once for a warning or worse, and at exit.

Python's standard error is line-buffered: a ``StreamHandler`` on it makes one write (a system
call) per line, which was a third of what a request log line cost the serving thread
(docs/benchmarks.md, "The request log"). Under load, the lines of 0.1 s go out in one write.
Nothing is dropped: the buffer grows as needed, a warning flushes everything before it, and
``logging.shutdown`` (at exit, and when a worker stops) flushes the rest. A process killed
outright (SIGKILL) loses at most the last 0.1 s of info lines.
"""

from __future__ import annotations

import io
import logging
import os
import sys
import threading
import weakref
from typing import TextIO

FLUSH_EVERY_S = 0.1
_BUFFER_BYTES = 1 << 16


class BufferedStderrHandler(logging.StreamHandler[TextIO]):
    def __init__(self) -> None:
        super().__init__(_buffered_stderr())
        self._flusher: threading.Thread | None = None
        self._stopped = threading.Event()
        # A forked worker has no thread of its parent's: it starts its own at its first line.
        handler = weakref.ref(self)
        os.register_at_fork(after_in_child=lambda: _forget_flusher(handler))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record) + self.terminator
            self.acquire()
            try:
                self.stream.write(line)
                if record.levelno >= logging.WARNING:
                    self.stream.flush()
            finally:
                self.release()
            if self._flusher is None:
                self._start_flusher()
        except RecursionError:
            raise
        except Exception:
            self.handleError(record)

    def _start_flusher(self) -> None:
        flusher = threading.Thread(target=self._flush_often, name="loadonce-log-flush", daemon=True)
        self._flusher = flusher
        flusher.start()

    def _flush_often(self) -> None:
        while not self._stopped.wait(FLUSH_EVERY_S):
            self.flush()

    def close(self) -> None:
        self._stopped.set()
        self.flush()
        super().close()


def _forget_flusher(handler: weakref.ref[BufferedStderrHandler]) -> None:
    found = handler()
    if found is not None:
        found._flusher = None


def _buffered_stderr() -> TextIO:
    """A buffered text stream on standard error's file (its own descriptor: closing it leaves
    ``sys.stderr`` open), encoded as ``sys.stderr`` is; ``sys.stderr`` itself when it has no
    file (replaced by a test's capture)."""
    try:
        raw = io.FileIO(os.dup(sys.stderr.fileno()), "w")
    except (AttributeError, OSError, ValueError):
        return sys.stderr
    return io.TextIOWrapper(
        io.BufferedWriter(raw, _BUFFER_BYTES),
        encoding=sys.stderr.encoding or "utf-8",
        errors="backslashreplace",
        line_buffering=False,
    )
