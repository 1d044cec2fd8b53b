"""Log records carry ``trace_id`` and ``span_id`` while a sampled span is current (loadonce's
plain and JSON formats print them; a user's own format can name them), while tracing is on.

A log record factory, as OpenTelemetry's logging instrumentation does it: every logger's
records get them, a library's too, and nothing is installed while tracing is off."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from opentelemetry import trace

# The factory it replaced, and how many tracings (apps in this process) use it.
_installed: list[Any] = []
_users = [0]


class _TraceFieldsFactory:
    """The record factory: the one it replaced, plus the current span's ids. ``trace_ids``
    says what it adds, for the request log's lines written without a record
    (``http/request_line.py``)."""

    def __init__(self, previous: Callable[..., logging.LogRecord]) -> None:
        self.previous = previous

    def __call__(self, *args: Any, **kwargs: Any) -> logging.LogRecord:
        record = self.previous(*args, **kwargs)
        ids = self.trace_ids()
        if ids is not None:
            record.trace_id, record.span_id = ids
        return record

    @staticmethod
    def trace_ids() -> tuple[str, str] | None:
        context = trace.get_current_span().get_span_context()
        if not context.is_valid:
            return None
        return format(context.trace_id, "032x"), format(context.span_id, "016x")


def install_log_fields() -> None:
    _users[0] += 1
    if _installed:
        return
    previous = logging.getLogRecordFactory()
    _installed.append(previous)
    logging.setLogRecordFactory(_TraceFieldsFactory(previous))


def remove_log_fields() -> None:
    _users[0] -= 1
    if _installed and _users[0] <= 0:
        _users[0] = 0
        logging.setLogRecordFactory(_installed.pop())
