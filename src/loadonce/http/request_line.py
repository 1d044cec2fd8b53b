"""A request's log line as data, and the way it takes to the log.

The standard way makes a ``LogRecord`` and passes it through the logger's hierarchy (filters,
handlers, the handler's lock, its formatter): 5 µs a line alone, and about three times that in
a loaded server, whose every request runs that code cold (docs/benchmarks.md, "The request
log"). When the line's one destination is a handler that takes request lines as data (server
mode's buffered standard error, ``server/log_stream.py``) and nothing on the way could change,
add to or drop a record (no filter, no level above INFO, the standard record factory or
tracing's), the line is handed to that handler as it is: formatted with the others at the next
flush, into exactly the text its record would have given. Any other configuration (a user's
handler, caplog, a filter) gets the record, as before.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any, NamedTuple, Protocol

from loadonce.core.log_safe import log_safe_cut

ACCESS_LOGGER_NAME = "loadonce.access"
access_logger = logging.getLogger(ACCESS_LOGGER_NAME)
MESSAGE_FORMAT = "%s %s %d %.1f ms request_id=%s"


class RequestLine(NamedTuple):
    created: float  # time.time(), as a record's
    method: str
    path: str  # log-safe (and cut, past MOST_LOGGED_CHARACTERS) already
    status: int
    milliseconds: float
    request_id: str
    # The current span's ids (hex) when tracing is on and a span is current, as the record
    # factory of loadonce.tracing.logs sets them on a record.
    trace_id: str | None = None
    span_id: str | None = None

    def message_args(self) -> tuple[object, ...]:
        return (self.method, self.path, self.status, self.milliseconds, self.request_id)

    def message(self) -> str:
        return MESSAGE_FORMAT % self.message_args()

    def record(self) -> logging.LogRecord:
        """The line's record, made now as ``logger.info`` would make it, less the walk of the
        stack for the caller's file and line, which the line never shows (the record factory
        adds what it adds, such as the trace ids)."""
        return access_logger.makeRecord(
            ACCESS_LOGGER_NAME,
            logging.INFO,
            "",  # no caller's file: a path costs two string searches per line
            0,
            MESSAGE_FORMAT,
            self.message_args(),
            None,
            extra=self.fields(),
        )

    def fields(self) -> dict[str, object]:
        """The fields a record of this line carries (``extra=``), in the order JSON lines
        show them."""
        return {
            "request_id": self.request_id,
            "method": self.method,
            "path": self.path,
            "status": self.status,
            "duration_ms": round(self.milliseconds, 3),
        }


class RequestLineHandler(Protocol):
    """A handler that can take a request line as data (``server/log_stream.py``)."""

    level: int
    filters: list[Any]

    def takes_request_lines(self) -> bool: ...

    # ``line``: a RequestLine's fields, in its order, as a plain tuple (the serving thread's
    # part kept small: the tuple is all it builds), the path as the client sent it: the
    # handler makes it log-safe (and cuts it) when it formats the line.
    def emit_request_line(self, line: tuple[object, ...]) -> None: ...


def write_request_line(
    method: str, path: str, status: int, milliseconds: float, request_id: str
) -> None:
    """Log the line at INFO on ``loadonce.access`` (the caller checked it is enabled).
    ``path``: as the client sent it; made log-safe (and cut) before it is written."""
    handler = _direct_handler()
    if handler is not None:
        ids = _trace_ids()
        if ids is not _NOT_DIRECT:
            trace_id, span_id = ids if ids is not None else (None, None)
            handler.emit_request_line(
                (time.time(), method, path, status, milliseconds, request_id, trace_id, span_id)
            )
            return
    line = RequestLine(0.0, method, log_safe_cut(path), status, milliseconds, request_id)
    access_logger.handle(line.record())


def _direct_handler() -> RequestLineHandler | None:
    """The one handler every record of ``loadonce.access`` would reach, when it takes request
    lines and no logger or handler on the way has a filter; else None."""
    found: RequestLineHandler | None = None
    logger: logging.Logger | None = access_logger
    while logger is not None:
        if logger.filters:
            return None
        for handler in logger.handlers:
            if found is not None or not getattr(handler, "takes_request_lines", _no)():
                return None
            found = handler  # type: ignore[assignment]  # takes_request_lines said so
        if not logger.propagate:
            break
        logger = logger.parent
    if found is None or found.filters or found.level > logging.INFO:
        return None
    return found


def _no() -> bool:
    return False


_NOT_DIRECT = ("", "")


def _trace_ids() -> tuple[str, str] | None:
    """What the process's record factory would add to a record: nothing (the standard one),
    the current span's ids (tracing's, which says how), or ``_NOT_DIRECT`` for any other
    factory, whose records only it knows how to make."""
    factory = logging.getLogRecordFactory()
    if factory is logging.LogRecord:
        return None
    trace_ids: Callable[[], tuple[str, str] | None] | None = getattr(factory, "trace_ids", None)
    # Tracing's factory wraps the one it found: the standard one, or a user's.
    if trace_ids is None or getattr(factory, "previous", None) is not logging.LogRecord:
        return _NOT_DIRECT
    return trace_ids()
