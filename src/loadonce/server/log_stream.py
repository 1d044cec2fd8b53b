"""The handler of server mode's log lines: standard error through one buffer per process.

Python's standard error is line-buffered: a ``StreamHandler`` on it makes one write (a system
call) per line, which was a third of what a request log line cost the serving thread
(docs/benchmarks.md, "The request log"). Here the request log's lines (``loadonce.access``)
are held in a buffer and written together, every tenth of a second; any other line (a model
loaded, a warning, uvicorn's own) writes everything held before it and itself at once, so the
log keeps its order and a server's state changes appear as they happen. The first line after
a quiet tenth of a second also goes at once: a server that logs little writes each line when
it comes. Nothing is dropped: the buffer grows as needed, and ``logging.shutdown`` (at exit,
and when a worker stops) flushes the rest; a process killed outright (SIGKILL) loses at most
the last 0.1 s of request lines. Every handler of the process shares the one buffer.

A line may also come while its own thread is writing: from a signal handler (Python runs one
on the main thread between any two bytecodes, and ``logging`` gives no warning) or from a
finalizer the collector runs mid-write. Waiting for the lock there would wait forever (a
server once hung on SIGTERM so), and writing into the stream mid-write would corrupt it or
raise; such a line is kept aside and written right after what was being written.
"""

from __future__ import annotations

import io
import logging
import os
import sys
import threading
import time
from collections import deque
from typing import Any, Protocol, TextIO

from loadonce.core.log_safe import log_safe_cut
from loadonce.http.request_line import ACCESS_LOGGER_NAME, RequestLine


class _LineFormatter(Protocol):
    """A formatter that writes a request line from its data (``log_format.py``)."""

    def format_request_line(self, line: RequestLine) -> str: ...


FLUSH_EVERY_S = 0.1
_BUFFER_BYTES = 1 << 16
# Lines of this logger wait for the next flush; every other line flushes.
HELD_LOGGER = ACCESS_LOGGER_NAME


class _SharedStream:
    """The process's buffered standard error, its lock, its flusher thread and when it was
    last flushed; made at the first handler, made again in a forked child's (its parent's is
    forgotten at the fork)."""

    def __init__(self) -> None:
        self.stream = _buffered_stderr()
        # Reentrant: a line from a signal handler or finalizer on the thread that holds it
        # must not wait for it (see the module's docstring); ``writing`` says that thread is
        # mid-write, and ``late`` keeps what came meanwhile.
        self.lock = threading.RLock()
        self.writing = False
        self.late: deque[str] = deque()
        # Request lines handed over as data, formatted at the next write or flush; a deque:
        # appended on the serving thread, emptied on the flusher's, without the lock. Each is
        # held as a plain tuple (its formatter's number, then the line's fields): Python's
        # collector stops tracking a tuple of strings and numbers the first time it looks, so
        # the lines waiting here are never promoted and walked again by older collections
        # (held as objects, they made each line cost twice as much: bench/log_line.py).
        self.held: deque[tuple[Any, ...]] = deque()
        # Each formatter that held a line, by number (a line holds its formatter's number).
        self.formatters: list[_LineFormatter] = []
        self.flushed_at = 0.0
        self.flusher: threading.Thread | None = None

    def write(self, line: str, *, now: bool) -> None:
        self._write(line, now=now)
        if self.flusher is None:
            self._start_flusher()

    def hold(self, formatter: _LineFormatter, line: tuple[object, ...]) -> None:
        try:
            number = self.formatters.index(formatter)
        except ValueError:
            number = len(self.formatters)
            self.formatters.append(formatter)
        self.held.append((number, *line))
        # The first line after a quiet tenth of a second goes at once; under load the flusher
        # thread writes them, never the serving thread (all that is held, formatted, would
        # otherwise be written on the event loop whenever the flusher is a moment late).
        if len(self.held) == 1 and time.monotonic() - self.flushed_at >= FLUSH_EVERY_S:
            self.flush()
        if self.flusher is None:
            self._start_flusher()

    def flush(self) -> None:
        self._write(None, now=True)

    def _write(self, line: str | None, *, now: bool) -> None:
        """What is held, then ``line``, then what came meanwhile; flushed if ``now`` or a
        tenth of a second has passed. Re-entered mid-write on the same thread, ``line`` is
        kept aside for the write in progress (or the next flush) to write."""
        with self.lock:
            if self.writing:
                if line is not None:
                    self.late.append(line)
                return
            self.writing = True
            try:
                self._write_held()
                if line is not None:
                    self.stream.write(line)
                self._write_late()
                moment = time.monotonic()
                if now or moment - self.flushed_at >= FLUSH_EVERY_S:
                    self.stream.flush()
                    self.flushed_at = moment
            finally:
                self.writing = False

    def _write_held(self) -> None:
        # Formatted here, together: the serving thread only appended them.
        while self.held:
            number, created, method, path, *rest = self.held.popleft()
            # The path as the client sent it: made log-safe (and cut) here, off the serving
            # thread.
            line = RequestLine(created, method, log_safe_cut(path), *rest)
            try:
                self.stream.write(self.formatters[number].format_request_line(line) + "\n")
            except Exception:
                self.stream.write(f"{ACCESS_LOGGER_NAME}: {line.message()!r}\n")

    def _write_late(self) -> None:
        while self.late:
            self.stream.write(self.late.popleft())

    def _start_flusher(self) -> None:
        with self.lock:
            if self.flusher is not None:
                return
            self.flusher = threading.Thread(
                target=self._flush_often, name="loadonce-log-flush", daemon=True
            )
            self.flusher.start()

    def _flush_often(self) -> None:
        while True:
            time.sleep(FLUSH_EVERY_S)
            self.flush()


_shared: list[_SharedStream] = []


def _stream() -> _SharedStream:
    if not _shared:
        _shared.append(_SharedStream())
    return _shared[0]


def _flush_before_fork() -> None:
    # A child would otherwise inherit what the buffer holds and write it a second time.
    if _shared:
        _shared[0].flush()


# The child makes its own at its first line: its parent's flusher thread is not in it, and
# nothing per line has to ask which process it is in.
os.register_at_fork(before=_flush_before_fork, after_in_child=_shared.clear)


class BufferedStderrHandler(logging.StreamHandler[TextIO]):
    def __init__(self) -> None:
        shared = _stream()
        super().__init__(shared.stream)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record) + self.terminator
            held = record.name == HELD_LOGGER and record.levelno < logging.WARNING
            _stream().write(line, now=not held)
        except RecursionError:
            raise
        except Exception:
            self.handleError(record)

    def flush(self) -> None:
        if _shared:
            _stream().flush()

    def takes_request_lines(self) -> bool:
        """Whether its formatter writes request lines from their data (log_format.py)."""
        takes = getattr(self.formatter, "takes_request_lines", None)
        return takes is not None and takes() is True

    def emit_request_line(self, line: tuple[object, ...]) -> None:
        """``line`` held for the next flush, as its record would be (``takes_request_lines``)."""
        _stream().hold(self.formatter, line)  # type: ignore[arg-type]


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
