"""OpenTelemetry tracing (the ``otel`` extra): one trace per request, through the queue and
the batch it shared.

Importing this package imports no OpenTelemetry: ``start_tracing`` does, in each worker after
it forked (the exporter's thread must not exist before a fork), and only when tracing is on.
``phase`` and ``record_failure`` are what the protocols call along a request's path; they do
nothing unless the request is sampled. See docs/tracing.md.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from typing import TYPE_CHECKING

from loadonce.core.errors import ConfigError
from loadonce.tracing.active import phase, record_failure
from loadonce.tracing.options import TRACES_EXPORTER, TracingOptions

if TYPE_CHECKING:
    from loadonce.tracing.otel import Tracing

__all__ = ["TracingOptions", "check_tracing", "phase", "record_failure", "start_tracing"]

logger = logging.getLogger("loadonce")

_INSTALL = "pip install 'loadonce[otel]'"
_PROTOCOL = "OTEL_EXPORTER_OTLP_PROTOCOL"
_TRACES_PROTOCOL = "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"


def check_tracing(options: TracingOptions | None) -> bool:
    """Whether tracing will be on, checked before any worker starts: tracing asked for
    without the ``otel`` extra, or an exporter loadonce does not ship, is a ConfigError (one
    line). Turned on by OTEL_TRACES_EXPORTER alone (a variable often set for a whole cluster)
    without the extra, it is off, with a warning."""
    if options is None or not options.active:
        return False
    if importlib.util.find_spec("opentelemetry.sdk") is None or (
        importlib.util.find_spec("opentelemetry.exporter.otlp.proto.http") is None
    ):
        if options.enabled:
            raise ConfigError(f"tracing is enabled but OpenTelemetry is not installed: {_INSTALL}")
        logger.warning(
            "%s is set but OpenTelemetry is not installed: tracing stays off (%s)",
            TRACES_EXPORTER,
            _INSTALL,
        )
        return False
    exporter = os.environ.get(TRACES_EXPORTER, "otlp").strip().lower() or "otlp"
    if exporter not in ("otlp", "console", "none"):
        raise ConfigError(
            f"{TRACES_EXPORTER}={exporter} is not supported: loadonce exports 'otlp' (over "
            "HTTP) or 'console'"
        )
    try:
        # OpenTelemetry reads its span limits (OTEL_SPAN_*_LIMIT, OTEL_ATTRIBUTE_*_LIMIT) when
        # its SDK is imported and when a provider is made; a malformed one raised there, deep
        # in a worker's startup.
        from opentelemetry.sdk.trace import SpanLimits

        SpanLimits()
    except ValueError as exc:
        raise ConfigError(f"tracing: {exc}") from None
    for variable in (_TRACES_PROTOCOL, _PROTOCOL):
        protocol = os.environ.get(variable, "").strip()
        if protocol and protocol != "http/protobuf":
            raise ConfigError(
                f"{variable}={protocol} is not supported: loadonce exports OTLP over HTTP "
                "(http/protobuf, port 4318)"
            )
    return True


def start_tracing(config: TracingOptions | object | None) -> Tracing | None:
    """The worker's tracing, from options (checked, then a tracer provider of its own, shut
    down with the app) or a user's own ``TracerProvider`` (left to its owner); None when off."""
    if config is None:
        return None
    if isinstance(config, TracingOptions):
        if not check_tracing(config):
            return None
        from loadonce.tracing.otel import tracing_for

        return tracing_for(config)
    from loadonce.tracing.otel import Tracing

    return Tracing(config, owned=False)
