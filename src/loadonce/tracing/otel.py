"""Tracing with OpenTelemetry (imported only when tracing is on): the request's span, its
phases, its wait in the queue, the model's call it shared and the model's loads.

Span names and attributes are listed in docs/tracing.md. The batch span is a
child of the first sampled request it carried and links to every sampled request it carried;
each of those requests' "queue wait" span links back to it, so either side leads to the other.
"""

from __future__ import annotations

import logging
import os
import random
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from typing import TYPE_CHECKING, Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_ON, ParentBased
from opentelemetry.trace import Link, Span, SpanContext, SpanKind, Status, StatusCode, TraceFlags
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from loadonce._version import __version__
from loadonce.tracing.active import ACTIVE
from loadonce.tracing.logs import install_log_fields, remove_log_fields
from loadonce.tracing.options import TRACES_EXPORTER, TracingOptions
from loadonce.tracing.spans import (
    ChildWriter,
    FinishedSpan,
    FinishedSpanWriter,
    OpenSpan,
    Phase,
    RecordedSpan,
    SpanWriter,
    id_makers,
    writer_for,
)

if TYPE_CHECKING:
    from loadonce.core.batcher import CallTiming

MODEL = "loadonce.model"
REQUEST_ID = "loadonce.request_id"
BATCH_SIZE = "loadonce.batch.size"
BATCH_REQUESTS = "loadonce.batch.requests"
STATUS_CODE = "http.response.status_code"
ROUTE = "http.route"
_PROPAGATOR = TraceContextTextMapPropagator()
# The headers (lowercase, as servers hand them over) that carry a caller's trace.
_TRACEPARENT, _TRACESTATE = b"traceparent", b"tracestate"
_TRACE_HEADERS = frozenset((_TRACEPARENT, _TRACESTATE))


class _QuietWhileReading(logging.Filter):
    """Drops OpenTelemetry's warnings about a traceparent or tracestate while this worker
    reads a client's (its event loop's thread, inside ``reading``): a malformed tracestate of
    8 KB made a warning of 8 KB, one per request, from clients without a key too."""

    def __init__(self) -> None:
        super().__init__()
        self.thread: int | None = None

    def filter(self, record: logging.LogRecord) -> bool:
        # A filter runs in the thread that logs; the record's own thread id is not kept
        # (server mode sets logging.logThreads off).
        return threading.get_ident() != self.thread

    @contextmanager
    def reading(self) -> Iterator[None]:
        self.thread = threading.get_ident()
        try:
            yield
        finally:
            self.thread = None


_QUIET = _QuietWhileReading()
# Where OpenTelemetry logs what it drops of a traceparent or tracestate it reads.
_HEADER_WARNINGS = (
    logging.getLogger("opentelemetry.trace.propagation.tracecontext"),
    logging.getLogger("opentelemetry.trace.span"),
)
_SAMPLED = TraceFlags(TraceFlags.SAMPLED)
_PARENT_BASED_ALWAYS_ON: str = ParentBased(ALWAYS_ON).get_description()  # type: ignore[no-untyped-call]


def tracing_for(options: TracingOptions) -> Tracing:
    """A worker's tracing on a provider of its own, built from the options. When its one way
    out is loadonce's OTLP exporter, a request's children travel inside its span
    (``spans.Child``)."""
    provider, direct = provider_for(options)
    return Tracing(provider, owned=True, ratio=root_ratio(options), nests_into=direct)


def provider_for(options: TracingOptions) -> tuple[TracerProvider, SpanProcessor | None]:
    """A tracer provider from the options, and its one span processor when that hands spans
    to loadonce's OTLP exporter, which writes them itself (``DirectOtlpSpanExporter``); what
    the options leave unset, the SDK reads from its OTEL_* variables (sampler, resource
    attributes, exporter endpoint, headers, timeouts)."""
    attributes: dict[str, Any] = {}
    if options.service_name is not None:
        attributes["service.name"] = options.service_name
    elif not os.environ.get("OTEL_SERVICE_NAME") and not _names_the_service(
        os.environ.get("OTEL_RESOURCE_ATTRIBUTES", "")
    ):
        # loadonce's default over the SDK's "unknown_service": never over a name the
        # environment gives (OTEL_RESOURCE_ATTRIBUTES' service.name was replaced by it).
        attributes["service.name"] = "loadonce"
    sampler = None
    if root_ratio(options) is not None:
        # Requests without a caller's decision are sampled at the ratio by Tracing itself,
        # before the SDK is asked anything (see start_request); what reaches the SDK is kept.
        sampler = ParentBased(ALWAYS_ON)
    resource = Resource.create(attributes)
    provider = TracerProvider(
        resource=_HashedOnce(resource.attributes, resource.schema_url), sampler=sampler
    )
    exporter = os.environ.get(TRACES_EXPORTER, "otlp").strip().lower() or "otlp"
    if exporter == "console":
        provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter()))
    elif exporter == "otlp":
        from loadonce.tracing.otlp_exporter import DirectOtlpSpanExporter

        endpoint = None
        if options.endpoint is not None:
            endpoint = options.endpoint.rstrip("/") + "/v1/traces"
        otlp = DirectOtlpSpanExporter(endpoint=endpoint)
        otlp.new_span_id = id_makers(provider.id_generator)[0]
        processor = _LoadonceSpanProcessor(otlp)
        provider.add_span_processor(processor)
        return provider, processor if otlp.encodes_directly else None
    return provider, None


class _LoadonceSpanProcessor(BatchSpanProcessor):
    """The SDK's batch span processor, queuing loadonce's own spans without reading them: they
    are handed over only when sampled, and the SDK's check of that (three properties of the
    span and its ids) ran, on the event loop, for each."""

    def on_end(self, span: ReadableSpan) -> None:
        kind = type(span)
        if kind is RecordedSpan or kind is FinishedSpan:
            self._batch_processor.emit(span)
        else:
            super().on_end(span)


def _names_the_service(resource_attributes: str) -> bool:
    """Whether OTEL_RESOURCE_ATTRIBUTES (``key=value,key=value``) sets ``service.name``."""
    return any(
        pair.split("=", 1)[0].strip() == "service.name"
        for pair in resource_attributes.split(",")
        if "=" in pair
    )


class _HashedOnce(Resource):
    """A resource that computes its hash once. OTLP's encoder groups every span it exports
    by its resource, hashing it each time, and a resource's hash is a JSON dump of its
    attributes: 3.5 µs of the 13 µs it takes to encode a span (measured). A resource is
    immutable, so its hash never changes."""

    _hash: int | None = None

    def __hash__(self) -> int:
        if self._hash is None:
            self._hash = super().__hash__()
        return self._hash

    def __eq__(self, other: object) -> bool:
        return super().__eq__(other)


def root_ratio(options: TracingOptions) -> float | None:
    """The share of requests without a caller's ``traceparent`` that are sampled, when the
    sampler is a parent-based ratio (``sample_ratio``, or OpenTelemetry's
    ``parentbased_traceidratio`` variables); None for any other sampler, left to the SDK."""
    if options.sample_ratio is not None:
        return options.sample_ratio
    if os.environ.get("OTEL_TRACES_SAMPLER", "").strip().lower() != "parentbased_traceidratio":
        return None
    try:
        ratio = float(os.environ.get("OTEL_TRACES_SAMPLER_ARG", "1.0"))
    except ValueError:
        return None  # the SDK warns of it and samples everything
    return ratio if 0.0 <= ratio <= 1.0 else None


class Tracing:
    """One worker's tracing: the core's ``CallTracer`` and the request spans of HTTP and
    gRPC. ``owned``: the provider was built here, and is shut down (its spans flushed) with
    the app."""

    def __init__(
        self,
        provider: Any,
        *,
        owned: bool,
        ratio: float | None = None,
        nests_into: SpanProcessor | None = None,
    ) -> None:
        self.provider = provider
        # Requests sampled out without a caller's decision cost one random draw: at 10%
        # sampling, asking the SDK (trace ids, a sampler, a non-recording span) for each of
        # the other 90% cost several microseconds per request (docs/benchmarks.md).
        self._ratio = ratio
        self._draw = random.Random().random  # noqa: S311 - sampling, not secrets
        self.tracer: trace.Tracer = provider.get_tracer("loadonce", __version__)
        # The spans below a request's (docs in spans.py: written whole, when they end),
        # carried inside the request's own when loadonce's exporter is the only way out.
        self.writer = writer_for(self.tracer, nests_into=nests_into)
        # The request's span written whole too, when the tracer is the SDK's and the
        # sampling parent-based with every root sampled (loadonce's own sampler, its ratio
        # drawn before; or the SDK's default): the decision is then the caller's flag, which
        # loadonce reads itself. Any other sampler is asked, through the SDK's live span.
        sampler = getattr(self.tracer, "sampler", None)
        parent_based = sampler is not None and (
            sampler.get_description() == _PARENT_BASED_ALWAYS_ON
        )
        writer = self.writer
        self._recorded = writer if isinstance(writer, FinishedSpanWriter) and parent_based else None
        self._owned = owned
        # time.perf_counter() (the batcher's clock) to the epoch nanoseconds spans carry.
        self._epoch_offset_ns = time.time_ns() - time.perf_counter_ns()
        install_log_fields()
        for header_logger in _HEADER_WARNINGS:
            header_logger.addFilter(_QUIET)

    def shutdown(self) -> None:
        remove_log_fields()
        for header_logger in _HEADER_WARNINGS:
            header_logger.removeFilter(_QUIET)
        if self._owned:
            self.provider.shutdown()

    def _ns(self, perf_counter: float) -> int:
        return int(perf_counter * 1e9) + self._epoch_offset_ns

    # The request.

    def start_request(
        self,
        name: str,
        headers: Sequence[tuple[bytes, bytes]],
        kind: SpanKind = SpanKind.SERVER,
    ) -> RequestSpan | None:
        """The request's span, a child of the caller's ``traceparent`` if it sent one; None
        when the request is sampled out (nothing more is built for it). A request without
        trace headers costs a scan of its header names and, sampled out, one random draw."""
        for key, _ in headers:
            if key in _TRACE_HEADERS:
                return self._continued(name, headers, kind)
        if self._ratio is not None and self._draw() >= self._ratio:
            return None
        return self._started(name, None, None, kind)

    def _continued(
        self, name: str, headers: Sequence[tuple[bytes, bytes]], kind: SpanKind
    ) -> RequestSpan | None:
        """A request whose caller sent trace headers: a child of its span, sampled as it
        decided. As W3C Trace Context (and its test suite) asks: two ``traceparent`` headers
        are no parent at all (the last one was continued), and several ``tracestate``
        headers are one list, in their order (only the last one was kept)."""
        parents: list[str] = []
        states: list[str] = []
        for key, value in headers:
            if key == _TRACEPARENT:
                parents.append(value.decode("latin-1"))
            elif key == _TRACESTATE:
                states.append(value.decode("latin-1"))
        if len(parents) == 1:
            carrier = {"traceparent": parents}
            if states:
                carrier["tracestate"] = states
            with _QUIET.reading():
                parent = _PROPAGATOR.extract(carrier)
            remote = trace.get_current_span(parent).get_span_context()
            if remote.is_valid:
                return self._started(name, parent, remote, kind)
        # A malformed traceparent is no caller's decision: it does not force sampling.
        if self._ratio is not None and self._draw() >= self._ratio:
            return None
        return self._started(name, None, None, kind)

    def _started(
        self,
        name: str,
        parent: otel_context.Context | None,
        remote: SpanContext | None,
        kind: SpanKind,
    ) -> RequestSpan | None:
        if self._recorded is not None:
            return self._recorded_request(self._recorded, name, remote, kind)
        span = self.tracer.start_span(name, context=parent, kind=kind)
        if not span.is_recording():
            return None
        return RequestSpan(self, span)

    def _recorded_request(
        self,
        writer: FinishedSpanWriter,
        name: str,
        remote: SpanContext | None,
        kind: SpanKind,
    ) -> RequestSpan | None:
        """The SDK's parent-based decision (the caller's flag, else sampled: the ratio was
        drawn before), and the span loadonce writes itself."""
        if remote is None:
            new_trace_id = writer.new_trace_id  # an attribute, then a call: both specialized
            trace_id, flags, state = new_trace_id(), _SAMPLED, None
        elif remote.trace_flags.sampled:
            trace_id, flags, state = remote.trace_id, remote.trace_flags, remote.trace_state
        else:
            return None
        new_span_id = writer.new_span_id
        context = SpanContext(trace_id, new_span_id(), False, flags, state)
        span = RecordedSpan(writer, name, context, remote, kind)
        if not writer.nests:
            writer.started(span)
        return RequestSpan(self, span)

    # The core's CallTracer.

    def call_started(
        self,
        model: str,
        carried: Sequence[tuple[object, float]],
        examples: int,
        requests: int,
        started: float,
    ) -> object:
        contexts = [traced.context for traced, _ in carried]  # type: ignore[attr-defined]
        start_ns = self._ns(started)
        batch = self.writer.open(
            "batch",
            contexts[0],
            start_ns,
            links=[Link(context) for context in contexts],
            attributes={MODEL: model, BATCH_SIZE: examples, BATCH_REQUESTS: requests},
        )
        back = [Link(batch.context)]
        attributes = {MODEL: model}  # read only, by every span: one serves all
        offset = self._epoch_offset_ns
        for traced, submitted in carried:
            traced.below.child(  # type: ignore[attr-defined]  # a RequestSpan (TRACED_REQUEST)
                "queue wait",
                int(submitted * 1e9) + offset,
                start_ns,
                links=back,
                attributes=attributes,
            )
        return batch

    def call_ended(
        self, call: object, timing: CallTiming | None, errors: Sequence[BaseException]
    ) -> None:
        batch: OpenSpan = call  # type: ignore[assignment]
        failed = [e for e in errors if getattr(e, "status", 500) >= 500]
        failure = str(failed[0]) if failed else None
        if timing is not None:
            begins = self._ns(timing.began + timing.input_s)
            ends = begins + int(timing.infer_s * 1e9)
            batch.child("predict", begins, ends, failed=failure)
        batch.end(errors=errors, failed=failure)

    def lifecycle(self, model: str, action: str) -> AbstractContextManager[object]:
        return self.tracer.start_as_current_span(f"model {action}", attributes={MODEL: model})


class RequestSpan:
    """A sampled request's span, current in its task from ``enter`` to ``finish``. ``below``:
    where the spans below it go (its decode, encode and wait in the queue): into its own span
    when loadonce writes it (``RecordedSpan.child``, carried or written), else to the writer."""

    __slots__ = (
        "_active_token",
        "_carrier",
        "_context_token",
        "_own",
        "below",
        "context",
        "span",
        "tracing",
    )

    def __init__(self, tracing: Tracing, span: Span) -> None:
        self.tracing = tracing
        self.span = span
        self.context = span.get_span_context()
        self._context_token: object = None
        self._active_token: Any = None
        # loadonce's own attributes, written directly on a span loadonce writes (they need
        # none of the checks a user's get); None: set through the API.
        self._own: dict[str, Any] | None = None
        # Its span, when that carries the spans below it (its phases are added directly).
        self._carrier: RecordedSpan | None = None
        self.below: ChildWriter
        # Its exact type (RecordedSpan is an ABC's subclass: isinstance asks its metaclass).
        if type(span) is RecordedSpan:
            self._own = span.own_attributes
            self.below = span
            if span.writer.nests:
                self._carrier = span
        else:
            self.below = _WrittenApart(tracing.writer, self.context)

    def enter(self) -> None:
        self._context_token = otel_context.attach(trace.set_span_in_context(self.span))
        self._active_token = ACTIVE.set(self)

    def describe(self, attributes: dict[str, Any]) -> None:
        """loadonce's own attributes of the request."""
        if self._own is not None:
            self._own.update(attributes)
        else:
            self.span.set_attributes(attributes)

    def finish(self, status: int | None = None) -> None:
        if status is not None:
            if self._own is not None:
                self._own[STATUS_CODE] = status
            else:
                self.span.set_attribute(STATUS_CODE, status)
            if status >= 500:
                self.span.set_status(StatusCode.ERROR)
        self.span.end()
        ACTIVE.reset(self._active_token)
        otel_context.detach(self._context_token)  # type: ignore[arg-type]

    def phase(self, name: str) -> AbstractContextManager[object]:
        return Phase(self.below, name, self._carrier)

    def named(self, method: str, route: str) -> None:
        """The route's template is known: the span's name, low in cardinality."""
        self.span.update_name(f"{method} {route}")
        if self._own is not None:
            self._own[ROUTE] = route
        else:
            self.span.set_attribute(ROUTE, route)

    def failed(self, error: BaseException, status: int) -> None:
        self.span.record_exception(error)
        if status >= 500:
            self.span.set_status(Status(StatusCode.ERROR, type(error).__name__))


class _WrittenApart:
    """The spans below a request's span that is not loadonce's (the SDK's live span, its
    sampler asked): each written on its own, under it."""

    __slots__ = ("context", "writer")

    def __init__(self, writer: SpanWriter, context: SpanContext) -> None:
        self.writer = writer
        self.context = context

    def child(
        self,
        name: str,
        start_ns: int,
        end_ns: int,
        *,
        links: Sequence[Link] = (),
        attributes: Mapping[str, Any] | None = None,
        errors: Sequence[BaseException] = (),
        failed: str | None = None,
    ) -> None:
        self.writer.child(
            name,
            self.context,
            start_ns,
            end_ns,
            links=links,
            attributes=attributes,
            errors=errors,
            failed=failed,
        )


@contextmanager
def request_span(
    tracing: Tracing, name: str, headers: Sequence[tuple[bytes, bytes]], **attributes: Any
) -> Iterator[RequestSpan | None]:
    """A request's span around a block (gRPC's calls), current inside it."""
    traced = tracing.start_request(name, headers)
    if traced is None:
        yield None
        return
    traced.describe(attributes)
    traced.enter()
    try:
        yield traced
    except BaseException as exc:
        traced.failed(exc, 500)
        raise
    finally:
        traced.finish()
