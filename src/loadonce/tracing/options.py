"""TracingOptions: the ``[tracing]`` table, its ``LOADONCE_TRACING_*`` variables and flags, and
the library's ``tracing=`` argument. Validated when the config is read, before any worker
starts; nothing here imports OpenTelemetry."""

from __future__ import annotations

import os
from typing import Annotated

from pydantic import ConfigDict, Field

from loadonce.core.config_model import ConfigModel

# OpenTelemetry's own variable choosing the exporter: "otlp" (the default), "console", "none".
TRACES_EXPORTER = "OTEL_TRACES_EXPORTER"


class TracingOptions(ConfigModel):
    """OpenTelemetry tracing. Each option left unset falls back to OpenTelemetry's own
    ``OTEL_*`` variable, read by its SDK (``OTEL_SERVICE_NAME``, ``OTEL_TRACES_SAMPLER`` and
    ``OTEL_TRACES_SAMPLER_ARG``, ``OTEL_EXPORTER_OTLP_ENDPOINT`` or
    ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``...)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # None: on when OTEL_TRACES_EXPORTER names an exporter (not "none"), else off.
    enabled: bool | None = None
    # The share of requests traced (a request whose caller sent a sampled traceparent is
    # traced whatever this says: the caller's decision is followed). None: OTEL_TRACES_SAMPLER.
    sample_ratio: Annotated[float, Field(ge=0, le=1)] | None = None
    # The collector's OTLP/HTTP base URL ("http://collector:4318"; spans go to its
    # /v1/traces), as OTEL_EXPORTER_OTLP_ENDPOINT. None: that variable, else localhost:4318.
    endpoint: Annotated[str, Field(pattern=r"^https?://")] | None = None
    # None: OTEL_SERVICE_NAME, else "loadonce".
    service_name: Annotated[str, Field(min_length=1)] | None = None

    @property
    def active(self) -> bool:
        """Whether tracing is on: asked for, or OpenTelemetry's exporter variable names one."""
        if self.enabled is not None:
            return self.enabled
        exporter = os.environ.get(TRACES_EXPORTER, "").strip().lower()
        return exporter not in ("", "none")
