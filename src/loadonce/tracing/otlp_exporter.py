"""The OTLP/HTTP span exporter of the ``otel`` extra, with spans written in protobuf's wire
format directly (``otlp_encoding.py``).

Everything else is the SDK exporter's own: its endpoint, headers, TLS, compression, timeout
and retries from the ``OTEL_EXPORTER_OTLP_*`` variables, its size limit, its metrics. It
offers no way to change its encoder, so ``export`` repeats its few lines around the encoding
with the encoder swapped; with an exporter release whose parts differ from those it was
written against (the versions in requirements/constraints.txt, which a test pins), the
exporter's own ``export`` runs, unchanged.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExportResult
from opentelemetry.sdk.trace.id_generator import RandomIdGenerator

from loadonce.tracing.otlp_encoding import encode_spans

# The SDK exporter's own logger: its messages read, and are configured, as they were.
logger = logging.getLogger("opentelemetry.exporter.otlp.proto.http.trace_exporter")

# What ``export`` uses of the SDK exporter's state, each as the SDK's own ``export`` does.
_PARTS = ("_shutdown", "_metrics", "_max_request_size", "_client")


class DirectOtlpSpanExporter(OTLPSpanExporter):
    """``OTLPSpanExporter`` whose spans are encoded by ``otlp_encoding``. ``new_span_id``:
    the ids of the spans the exported ones carry (``spans.Child``): the provider's id
    generator's, where the provider sets it."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.new_span_id: Callable[[], int] = RandomIdGenerator().generate_span_id
        self.encodes_directly = all(hasattr(self, part) for part in _PARTS) and callable(
            getattr(self._client, "export", None)
        )

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        if not self.encodes_directly:
            return super().export(spans)
        if self._shutdown:
            logger.warning("Exporter already shutdown, ignoring batch")
            return SpanExportResult.FAILURE
        with self._metrics.export_operation(len(spans)) as result:
            try:
                data = encode_spans(spans, self.new_span_id)
            except Exception as error:  # as the SDK's: a batch that cannot be encoded is dropped
                logger.error("Failed to encode span batch: %s", error)
                result.error = error
                return SpanExportResult.FAILURE
            if 0 < self._max_request_size < len(data):
                logger.warning(
                    "Dropping span batch: serialized size %d bytes exceeds max_request_size "
                    "%d bytes.",
                    len(data),
                    self._max_request_size,
                )
                result.error = ValueError("span batch over max_request_size")
                return SpanExportResult.FAILURE
            sent = self._client.export(data)
            if not sent.success:
                result.error = sent.error
                result.error_attrs = (
                    {"http.response.status_code": sent.status_code}
                    if sent.status_code is not None
                    else None
                )
                return SpanExportResult.FAILURE
        return SpanExportResult.SUCCESS
