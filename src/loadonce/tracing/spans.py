"""loadonce's own spans below a request (decode, queue wait, batch, predict, encode): timed by
loadonce, and written whole when they end.

With the OpenTelemetry SDK's tracer (the usual case, and always under ``loadonce serve``) a
span is handed, finished, to the tracer's span processors: the SDK's live span (a lock, a
bounded attribute map, a sampler's decision) costs 21 µs to start and end, a finished span
2.6 µs (measured, docs/benchmarks.md "What tracing costs"), and a sampled request has four or
five of them. Such a span follows its parent's sampling decision (it is only opened under a
sampled request) and reaches the processors' ``on_end`` only, not ``on_start`` (the
request's ``RecordedSpan`` reaches both). With any
other tracer (an API implementation that is not the SDK's), spans are the tracer's own,
started and ended through the API.
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import Any, Protocol

from opentelemetry import trace
from opentelemetry.attributes import BoundedAttributes
from opentelemetry.sdk.trace import Event, ReadableSpan
from opentelemetry.sdk.trace import Tracer as SdkTracer
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import Link, NonRecordingSpan, SpanContext, SpanKind, Status, StatusCode
from opentelemetry.util import types

from loadonce._version import __version__

# At most this many of a span's errors become its exception events.
ERRORS_RECORDED = 8
# What the SDK's own spans keep at most (its default limits): the attributes and events that
# code besides loadonce's (a user's handler, through the current span) adds to a request span.
MOST_ATTRIBUTES = 128
MOST_EVENTS = 128


class OpenSpan(Protocol):
    """A span loadonce has opened: its ids now, written when it ends."""

    @property
    def context(self) -> SpanContext: ...

    # ``end_ns``: when it ended (now if None); ``errors`` become exception events, and
    # ``failed`` (a description) sets the span's status to ERROR.
    def end(
        self,
        end_ns: int | None = None,
        errors: Sequence[BaseException] = (),
        failed: str | None = None,
    ) -> None: ...


class SpanWriter(Protocol):
    def open(
        self,
        name: str,
        parent: SpanContext,
        start_ns: int | None = None,
        *,
        links: Sequence[Link] = (),
        attributes: dict[str, Any] | None = None,
    ) -> OpenSpan: ...


def writer_for(tracer: trace.Tracer) -> SpanWriter:
    """Finished spans for the SDK's tracer, the tracer's live spans for any other."""
    if isinstance(tracer, SdkTracer):
        return FinishedSpanWriter(tracer)
    return LiveSpanWriter(tracer)


class FinishedSpanWriter:
    """Spans handed finished to the SDK tracer's span processors."""

    def __init__(self, tracer: SdkTracer) -> None:
        self.processor = tracer.span_processor
        self.resource = tracer.resource
        self.new_span_id = tracer.id_generator.generate_span_id
        self.new_trace_id = tracer.id_generator.generate_trace_id
        self.scope = InstrumentationScope("loadonce", __version__)

    def open(
        self,
        name: str,
        parent: SpanContext,
        start_ns: int | None = None,
        *,
        links: Sequence[Link] = (),
        attributes: dict[str, Any] | None = None,
    ) -> OpenSpan:
        context = SpanContext(
            parent.trace_id,
            self.new_span_id(),
            is_remote=False,
            trace_flags=parent.trace_flags,
            trace_state=parent.trace_state,
        )
        started = time.time_ns() if start_ns is None else start_ns
        return _Finishing(self, name, context, parent, started, links, attributes)

    def started(self, span: RecordedSpan) -> None:
        """Tell the tracer's span processors a request's span started, as the SDK does for its
        own (a processor may add attributes to it then). Typed for the SDK's own span class,
        processors use the API's methods and ``name``, ``context``, ``attributes``, which it
        has."""
        self.processor.on_start(span, parent_context=None)  # type: ignore[arg-type]

    def write(
        self,
        name: str,
        context: SpanContext,
        parent: SpanContext | None,
        start_ns: int,
        end_ns: int,
        *,
        attributes: Mapping[str, Any] | None,
        events: Sequence[Event],
        links: Sequence[Link],
        status: Status,
        kind: SpanKind = SpanKind.INTERNAL,
    ) -> None:
        """Hand a finished span to the tracer's span processors."""
        self.processor.on_end(
            ReadableSpan(
                name=name,
                context=context,
                parent=parent,
                resource=self.resource,
                attributes=attributes,
                events=events,
                links=links,
                kind=kind,
                status=status,
                start_time=start_ns,
                end_time=end_ns,
                instrumentation_scope=self.scope,
            )
        )


class _Finishing:
    __slots__ = ("attributes", "context", "links", "name", "parent", "start_ns", "writer")

    def __init__(
        self,
        writer: FinishedSpanWriter,
        name: str,
        context: SpanContext,
        parent: SpanContext,
        start_ns: int,
        links: Sequence[Link],
        attributes: dict[str, Any] | None,
    ) -> None:
        self.writer = writer
        self.name = name
        self.context = context
        self.parent = parent
        self.start_ns = start_ns
        self.links = links
        self.attributes = attributes

    def end(
        self,
        end_ns: int | None = None,
        errors: Sequence[BaseException] = (),
        failed: str | None = None,
    ) -> None:
        ended = time.time_ns() if end_ns is None else end_ns
        self.writer.write(
            self.name,
            self.context,
            self.parent,
            self.start_ns,
            ended,
            attributes=self.attributes,
            events=[_exception_event(e, ended) for e in errors[:ERRORS_RECORDED]],
            links=self.links,
            status=Status(StatusCode.ERROR, failed) if failed is not None else Status(),
        )


class RecordedSpan(trace.Span):
    """A request's span, opened by loadonce (the sampling decided before, the ids made here)
    and handed finished to the SDK tracer's span processors, as the spans below it are: a
    live SDK span takes 21 µs to start and end (docs/benchmarks.md). It is the current span
    while the request runs, so a handler's ``trace.get_current_span()`` gets it: what such
    code sets goes through OpenTelemetry's attribute checks and limits, as on the SDK's own
    span; loadonce's own attributes are written directly. For use on one thread (the event
    loop's), as a request's span is."""

    def __init__(
        self,
        writer: FinishedSpanWriter,
        name: str,
        context: SpanContext,
        parent: SpanContext | None,
        kind: SpanKind,
    ) -> None:
        self.writer = writer
        self.name = name
        self.context = context
        self.parent = parent
        self.kind = kind
        self.start_ns = time.time_ns()
        self.own_attributes: dict[str, Any] = {}
        self._added: BoundedAttributes | None = None
        self._events: list[Event] = []
        self._links: list[Link] = []
        self._status = Status()
        self._ended = False

    def get_span_context(self) -> SpanContext:
        return self.context

    @property
    def attributes(self) -> Mapping[str, Any]:
        """Its attributes so far (as the SDK's span shows them to a processor)."""
        return {**self.own_attributes, **(self._added or {})}

    def is_recording(self) -> bool:
        return not self._ended

    def set_attributes(self, attributes: Mapping[str, types.AnyValue]) -> None:
        for key, value in attributes.items():
            self.set_attribute(key, value)

    def set_attribute(self, key: str, value: types.AnyValue) -> None:
        if self._ended:
            return
        if self._added is None:
            self._added = BoundedAttributes(MOST_ATTRIBUTES, immutable=False)
        self._added[key] = value

    def add_event(
        self, name: str, attributes: types.Attributes = None, timestamp: int | None = None
    ) -> None:
        if not self._ended and len(self._events) < MOST_EVENTS:
            cleaned = BoundedAttributes(MOST_ATTRIBUTES, attributes)
            self._events.append(Event(name, cleaned, timestamp or time.time_ns()))

    def add_link(self, context: SpanContext, attributes: types.Attributes = None) -> None:
        if not self._ended and context.is_valid and len(self._links) < MOST_EVENTS:
            self._links.append(Link(context, BoundedAttributes(MOST_ATTRIBUTES, attributes)))

    def update_name(self, name: str) -> None:
        if not self._ended:
            self.name = name

    def set_status(self, status: Status | StatusCode, description: str | None = None) -> None:
        # The SDK's rules: OK is final, UNSET changes nothing.
        if self._ended or self._status.status_code is StatusCode.OK:
            return
        if isinstance(status, StatusCode):
            status = Status(status, description)
        if status.status_code is not StatusCode.UNSET:
            self._status = status

    def record_exception(
        self,
        exception: BaseException,
        attributes: types.Attributes = None,
        timestamp: int | None = None,
        escaped: bool = False,
    ) -> None:
        if self._ended or len(self._events) >= MOST_EVENTS:
            return
        event = _exception_event(exception, timestamp or time.time_ns(), escaped)
        if attributes:
            merged = {**(event.attributes or {}), **attributes}
            event = Event(event.name, merged, event.timestamp)
        self._events.append(event)

    def end(self, end_time: int | None = None) -> None:
        if self._ended:
            return
        self._ended = True
        attributes = self.own_attributes
        if self._added:
            attributes = {**attributes, **self._added}
        self.writer.write(
            self.name,
            self.context,
            self.parent,
            self.start_ns,
            time.time_ns() if end_time is None else end_time,
            attributes=attributes,
            events=self._events,
            links=self._links,
            status=self._status,
            kind=self.kind,
        )


def _exception_event(error: BaseException, timestamp: int, escaped: bool = False) -> Event:
    """The event the SDK's ``record_exception`` makes (OpenTelemetry's exception semantic
    conventions)."""
    kind, module = type(error), type(error).__module__
    named = kind.__qualname__ if module in ("", "builtins") else f"{module}.{kind.__qualname__}"
    return Event(
        "exception",
        {
            "exception.type": named,
            "exception.message": str(error),
            "exception.stacktrace": "".join(traceback.format_exception(error)),
            "exception.escaped": str(escaped),
        },
        timestamp,
    )


class LiveSpanWriter:
    """Spans started and ended through the OpenTelemetry API, for a tracer that is not the
    SDK's."""

    def __init__(self, tracer: trace.Tracer) -> None:
        self.tracer = tracer

    def open(
        self,
        name: str,
        parent: SpanContext,
        start_ns: int | None = None,
        *,
        links: Sequence[Link] = (),
        attributes: dict[str, Any] | None = None,
    ) -> OpenSpan:
        span = self.tracer.start_span(
            name,
            context=trace.set_span_in_context(NonRecordingSpan(parent)),
            links=links,
            attributes=attributes,
            start_time=start_ns,
        )
        return _Live(span)


class _Live:
    __slots__ = ("context", "span")

    def __init__(self, span: trace.Span) -> None:
        self.span = span
        self.context = span.get_span_context()

    def end(
        self,
        end_ns: int | None = None,
        errors: Sequence[BaseException] = (),
        failed: str | None = None,
    ) -> None:
        for error in errors[:ERRORS_RECORDED]:
            self.span.record_exception(error)
        if failed is not None:
            self.span.set_status(Status(StatusCode.ERROR, failed))
        self.span.end(end_time=end_ns)


class Phase:
    """A span around a block (``with``), under ``parent``; an exception leaving the block is
    recorded on it."""

    __slots__ = ("name", "opened", "parent", "writer")

    def __init__(self, writer: SpanWriter, name: str, parent: SpanContext) -> None:
        self.writer = writer
        self.name = name
        self.parent = parent
        self.opened: OpenSpan | None = None

    def __enter__(self) -> None:
        self.opened = self.writer.open(self.name, self.parent)

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace_back: TracebackType | None,
    ) -> None:
        assert self.opened is not None
        if error is None:
            self.opened.end()
        else:
            self.opened.end(errors=[error], failed=f"{type(error).__name__}: {error}")
