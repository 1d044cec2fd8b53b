"""Logging for server mode: uvicorn's own configuration plus loadonce's loggers, in plain text
or one JSON object per line (``log_format = "json"``), for log collectors.

uvicorn is imported only to configure its own loggers (a worker's): the supervisor of
``--workers N`` logs through the same formatters without it (uvicorn's import brings asyncio
and ssl, about 9 MiB the supervisor never needs)."""

from __future__ import annotations

import copy
import json
import json.encoder
import logging
import os
import re
import sys
import traceback
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Literal

import click

from loadonce.core.log_safe import log_safe, log_safe_cut
from loadonce.http.request_line import ACCESS_LOGGER_NAME, RequestLine

# Fields a record may carry (``extra=``) that a JSON line keeps: the request log's, and the
# current span's ids while tracing is on (loadonce.tracing.logs).
_EXTRA_FIELDS = ("request_id", "method", "path", "status", "duration_ms", "trace_id", "span_id")
# The names a plain format may use for its request lines to be written from their data.
_REQUEST_LINE_NAMES = {"levelprefix", "message"}
_NAME_IN_FORMAT = re.compile(r"%\((\w+)\)")


class _Values:
    """What a format reads of a record (its ``__dict__``), for a line that has no record."""

    def __init__(self, **values: object) -> None:
        self.__dict__.update(values)


# uvicorn's colours for a level's name (uvicorn.logging.ColourizedFormatter), so loadonce's
# lines and uvicorn's look alike.
_LEVEL_COLOURS = {
    5: "blue",  # uvicorn's TRACE
    logging.DEBUG: "cyan",
    logging.INFO: "green",
    logging.WARNING: "yellow",
    logging.ERROR: "red",
    logging.CRITICAL: "bright_red",
}


class PlainFormatter(logging.Formatter):
    """uvicorn's line (``%(levelprefix)s``: the level's name, coloured on a terminal, as
    uvicorn's formatter writes it), with every message one line: a client-supplied value (a
    path, a file name) can never start a forged line. A traceback, appended after, keeps its
    lines, with each exception's message one line too (``formatException``).

    Its ``levelprefix`` is set on the record itself: uvicorn's formatter copies each record
    first, a third of a request log line's cost (docs/benchmarks.md, "The request log")."""

    def __init__(
        self,
        fmt: str | None = None,
        datefmt: str | None = None,
        style: Literal["%", "{", "$"] = "%",
        use_colors: bool | None = None,
    ) -> None:
        super().__init__(fmt=fmt, datefmt=datefmt, style=style)
        # uvicorn's rule: as asked, else colours when standard output is a terminal.
        self.use_colors = use_colors if use_colors is not None else sys.stdout.isatty()
        self._request_line_parts = self._parts_around_a_request_message()

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 - logging's name
        record.message = self._one_line(record.message, getattr(record, "trace_id", None), record)
        record.levelprefix = self._level_prefix(record.levelname, record.levelno)
        return self._style.format(record)

    def formatException(self, ei: Any) -> str:  # noqa: N802 - logging's name
        return _one_line_messages(ei) or super().formatException(ei)

    def takes_request_lines(self) -> bool:
        """Whether a request line's text needs nothing but the line (the server's formats)."""
        return self._request_line_parts is not None

    def format_request_line(self, line: RequestLine) -> str:
        """The text ``format`` gives the request line's record (``takes_request_lines``)."""
        parts = self._request_line_parts
        assert parts is not None, "takes_request_lines() was False"
        return self._one_line(line.message(), line.trace_id, line).join(parts)

    def _parts_around_a_request_message(self) -> list[str] | None:
        """The format's text for an INFO line, cut where its message goes; None when the format
        names anything but the level prefix and the message."""
        fmt = self._style._fmt
        if type(self._style) is not logging.PercentStyle or not isinstance(fmt, str):
            return None
        if not set(_NAME_IN_FORMAT.findall(fmt)) <= _REQUEST_LINE_NAMES:
            return None
        cut = "\x00"  # never in a message: log-safe text escapes it
        values = _Values(message=cut, levelprefix=self._level_prefix("INFO", logging.INFO))
        return self._style.format(values).split(cut)  # reads its __dict__

    @staticmethod
    def _one_line(message: str, trace_id: str | None, source: object) -> str:
        if not message.isprintable():  # the usual line is: a C scan, not a regex's
            # A message's own final line break ends nothing (uvicorn's "Exception in ASGI
            # application\n" was written "...application\x0a"); any other is escaped.
            message = log_safe(message.rstrip("\r\n"))
        if trace_id is not None:  # tracing is on and a span is current
            message += f" trace_id={trace_id} span_id={getattr(source, 'span_id', '')}"
        return message

    def _level_prefix(self, name: str, number: int) -> str:
        colour = _LEVEL_COLOURS.get(number) if self.use_colors else None
        prefix = click.style(name, fg=colour) if colour is not None else name
        return f"{prefix}:{' ' * (8 - len(name))}"


def _one_line_messages(ei: Any) -> str | None:
    """The traceback with each exception's message (and notes) one line, and cut: a model's
    exception often quotes the request (``ValueError(f"cannot handle {value}")``), and its
    text went into the log raw, newlines and all (and whole: a 1 MB input, a 1 MB
    traceback), after a one-line summary. None: no exception to describe."""
    value = ei[1]
    if value is None:
        return None
    described = traceback.TracebackException(type(value), value, ei[2], compact=True)
    _escape_messages(described)
    return "".join(described.format()).rstrip("\n")


def _escape_messages(described: traceback.TracebackException) -> None:
    """Every message and note in a traceback's chain (causes, contexts, groups) made
    log-safe and cut (``log_safe_cut``). ``_str`` is where TracebackException keeps the
    message it prints (3.11-3.13)."""
    pending, seen = [described], set()
    while pending:
        current = pending.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        message = getattr(current, "_str", None)
        if isinstance(message, str):
            current._str = log_safe_cut(message)  # type: ignore[attr-defined]
        notes = getattr(current, "__notes__", None)
        if isinstance(notes, list):
            current.__notes__ = [log_safe_cut(str(note)) for note in notes]
        linked = [current.__cause__, current.__context__, *(current.exceptions or ())]
        pending.extend(item for item in linked if item is not None)


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, pid, message, and request fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": _iso_time(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "pid": record.process,
            "message": log_safe(record.getMessage().rstrip("\r\n")),
        }
        for field in _EXTRA_FIELDS:
            if hasattr(record, field):
                entry[field] = getattr(record, field)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)

    def formatException(self, ei: Any) -> str:  # noqa: N802 - logging's name
        """As plain lines write it: each message one line and cut (JSON escaped the line
        breaks, but kept a message quoting a 1 MB input whole)."""
        return _one_line_messages(ei) or super().formatException(ei)

    def takes_request_lines(self) -> bool:
        return True

    def format_request_line(self, line: RequestLine) -> str:
        """The text ``format`` gives the request line's record: the same object, written
        field by field with the encoder ``json.dumps`` uses for strings (``json.dumps`` of a
        dict with a ``default`` builds an encoder per line, most of a JSON line's cost)."""
        quoted = _quoted
        text = (
            f'{{"time": "{_request_line_time(line.created)}", "level": "info", '
            f'"logger": "{ACCESS_LOGGER_NAME}", "pid": {os.getpid()}, '
            f'"message": {quoted(log_safe(line.message()))}, '
            f'"request_id": {quoted(line.request_id)}, "method": {quoted(line.method)}, '
            f'"path": {quoted(line.path)}, "status": {line.status:d}, '
            f'"duration_ms": {round(line.milliseconds, 3)!r}'
        )
        if line.trace_id is not None:
            text += f', "trace_id": {quoted(line.trace_id)}, "span_id": {quoted(line.span_id)}'
        return text + "}"


# A JSON string as json.dumps writes it (ensure_ascii); a float's repr is its JSON too.
_quoted: Callable[[object], str] = json.encoder.encode_basestring_ascii  # type: ignore[assignment]


def _iso_time(created: float) -> str:
    return datetime.fromtimestamp(created, UTC).isoformat(timespec="milliseconds")


class _SecondsText:
    """The text of the last whole second asked for: a request line's time is its second's
    text (made once a second) and its milliseconds, as ``_iso_time`` writes them."""

    def __init__(self) -> None:
        self.second = -1
        self.text = ""

    def __call__(self, created: float) -> str:
        second = int(created)
        # As datetime.fromtimestamp: microseconds rounded half to even, which may carry.
        micro = round((created - second) * 1e6)
        if micro >= 1_000_000:
            second, micro = second + 1, micro - 1_000_000
        if second != self.second:
            self.text = datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S")
            self.second = second
        return f"{self.text}.{micro // 1000:03d}+00:00"


_request_line_time = _SecondsText()


def log_config(level: str, log_format: str = "plain", *, uvicorn: bool = True) -> dict[str, Any]:
    """The process's logging (``logging.config.dictConfig``). ``uvicorn``: uvicorn's loggers
    too, as a process that runs uvicorn (a worker) needs; the supervisor's has loadonce's."""
    config: dict[str, Any] = {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {},
        "handlers": {},
        "loggers": {},
    }
    if uvicorn:
        from uvicorn.config import LOGGING_CONFIG

        config = copy.deepcopy(LOGGING_CONFIG)
        config["formatters"]["default"]["()"] = f"{__name__}.PlainFormatter"
    config["formatters"]["loadonce"] = {
        "()": f"{__name__}.PlainFormatter",
        "fmt": "%(levelprefix)s [loadonce] %(message)s",
        "use_colors": None,
    }
    if log_format == "json":
        for name in config["formatters"]:  # uvicorn's "default" and "access", and loadonce's
            config["formatters"][name] = {"()": f"{__name__}.JsonFormatter"}
    # Buffered, flushed every 0.1 s and at once for warnings (log_stream.py): a write per line
    # cost the request log a third of its time.
    config["handlers"]["loadonce"] = {
        "formatter": "loadonce",
        "class": "loadonce.server.log_stream.BufferedStderrHandler",
    }
    python_level = "DEBUG" if level == "trace" else level.upper()
    # "loadonce.access" (one line per request, with its id) is a child: it shares the handler.
    config["loggers"]["loadonce"] = {
        "handlers": ["loadonce"],
        "level": python_level,
        "propagate": False,
    }
    # Python's warnings (a library's, while a model loads) as log lines in the same format:
    # in JSON mode every line is JSON (logging.captureWarnings sends them to py.warnings).
    config["loggers"]["py.warnings"] = {"handlers": ["loadonce"], "propagate": False}
    # Any other library's records (OpenTelemetry's, which quote a client's traceparent and
    # tracestate; an exporter's failures) through the same handler: with no handler on the
    # root, Python's last resort printed them raw (a client's U+0085 made a forged line, and
    # JSON logs got lines that were not JSON).
    config["root"] = {"handlers": ["loadonce"], "level": "WARNING"}
    logging.captureWarnings(True)  # the process is about to log with this configuration
    # No format of loadonce's shows a record's thread or process name, and looking them up
    # took a tenth of a request log line's cost (the pid, in JSON lines, is still recorded).
    logging.logThreads = False
    logging.logMultiprocessing = False
    if not uvicorn:
        return config
    # The worker logs why a startup failed in one line of its own (the model, its source, the
    # cause); uvicorn's "Application startup failed. Exiting." before it says nothing more.
    config["filters"] = {"startup_failed": {"()": f"{__name__}.WithoutStartupFailedLine"}}
    config["handlers"]["default"]["filters"] = ["startup_failed"]
    # uvicorn's own lines share loadonce's buffer (log_stream.py), so the log keeps its order.
    config["handlers"]["default"]["class"] = "loadonce.server.log_stream.BufferedStderrHandler"
    config["handlers"]["default"].pop("stream", None)
    return config


class WithoutStartupFailedLine(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not (
            record.name == "uvicorn.error"
            and record.getMessage().startswith("Application startup failed")
        )
