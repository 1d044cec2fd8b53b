"""Log records carry ``trace_id`` and ``span_id`` while a sampled span is current (loadonce's
plain and JSON formats print them; a user's own format can name them), while tracing is on.

A log record factory, as OpenTelemetry's logging instrumentation does it: every logger's
records get them, a library's too, and nothing is installed while tracing is off."""

from __future__ import annotations

import logging
from typing import Any

from opentelemetry import trace

# The factory it replaced, and how many tracings (apps in this process) use it.
_installed: list[Any] = []
_users = [0]


def install_log_fields() -> None:
    _users[0] += 1
    if _installed:
        return
    previous = logging.getLogRecordFactory()

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        context = trace.get_current_span().get_span_context()
        if context.is_valid:
            record.trace_id = format(context.trace_id, "032x")
            record.span_id = format(context.span_id, "016x")
        return record

    _installed.append(previous)
    logging.setLogRecordFactory(factory)


def remove_log_fields() -> None:
    _users[0] -= 1
    if _installed and _users[0] <= 0:
        _users[0] = 0
        logging.setLogRecordFactory(_installed.pop())
