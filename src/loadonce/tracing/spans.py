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

import functools
import random
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from types import MappingProxyType, TracebackType
from typing import Any, Protocol

from opentelemetry import trace
from opentelemetry.attributes import BoundedAttributes
from opentelemetry.sdk.trace import Event, ReadableSpan, SpanLimits, SpanProcessor
from opentelemetry.sdk.trace import Tracer as SdkTracer
from opentelemetry.sdk.trace.id_generator import IdGenerator, RandomIdGenerator
from opentelemetry.sdk.util import BoundedList
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import Link, NonRecordingSpan, SpanContext, SpanKind, Status, StatusCode
from opentelemetry.util import types

from loadonce._version import __version__

# At most this many of a span's errors become its exception events.
ERRORS_RECORDED = 8
# A span's status when nothing failed (a status is never changed once made: one serves all).
_UNSET = Status()
# An enum member read once (each read through the enum's class is a lookup CPython 3.11 does
# not specialize).
_INTERNAL = SpanKind.INTERNAL


class OpenSpan(Protocol):
    """A span loadonce has opened: its ids now, written when it ends."""

    @property
    def context(self) -> SpanContext: ...

    # A finished span below it (a call's ``predict``), its status ERROR if ``failed``.
    def child(
        self, name: str, start_ns: int, end_ns: int, *, failed: str | None = None
    ) -> None: ...

    # ``end_ns``: when it ended (now if None); ``errors`` become exception events, and
    # ``failed`` (a description) sets the span's status to ERROR.
    def end(
        self,
        end_ns: int | None = None,
        errors: Sequence[BaseException] = (),
        failed: str | None = None,
    ) -> None: ...


class SpanWriter(Protocol):
    # A span that ends later (the batch's): its ids now.
    def open(
        self,
        name: str,
        parent: SpanContext,
        start_ns: int | None = None,
        *,
        links: Sequence[Link] = (),
        attributes: Mapping[str, Any] | None = None,
    ) -> OpenSpan: ...

    # A span whose start and end are both known (a phase, a wait, a predict), written in one
    # call.
    def child(
        self,
        name: str,
        parent: SpanContext,
        start_ns: int,
        end_ns: int,
        *,
        links: Sequence[Link] = (),
        attributes: Mapping[str, Any] | None = None,
        errors: Sequence[BaseException] = (),
        failed: str | None = None,
    ) -> None: ...


def writer_for(tracer: trace.Tracer, *, nests_into: SpanProcessor | None = None) -> SpanWriter:
    """Finished spans for the SDK's tracer, the tracer's live spans for any other.
    ``nests_into``: the one span processor of a provider loadonce built, whose exporter is
    loadonce's own: a request's spans below it travel inside its own (see ``Child``)."""
    if isinstance(tracer, SdkTracer):
        return FinishedSpanWriter(tracer, nests_into=nests_into)
    return LiveSpanWriter(tracer)


# A span below a request's (decode, queue wait, encode) or a batch's (predict), carried inside
# that span instead of handed to the processors on its own: its name, start and end (epoch
# ns), attributes, links, events and status. A plain tuple: the event loop makes one per
# phase of a sampled request, and a NamedTuple's construction costs five times a tuple's.
#
# Only where loadonce owns the whole way to the collector (the provider it builds from its
# options, whose one processor hands spans to ``otlp_exporter.DirectOtlpSpanExporter``): the
# exporter writes each child as the span it stands for, in its carrier's trace, under it, with
# its trace state, of kind INTERNAL, with a span id of its own made there (nothing refers to a
# child's id, so the event loop does not make one). The event loop then builds one span object
# per sampled request instead of four, and hands the processor one instead of four
# (docs/benchmarks.md, "What tracing costs"). Anywhere else (a provider of the user's, other
# processors) every span is handed to the processors on its own.
Child = tuple[str, int, int, Mapping[str, Any] | None, Sequence[Link], Sequence[Event], Status]


class FinishedSpanWriter:
    """Spans handed finished to the SDK tracer's span processors. ``nests_into``: the
    provider's one processor (loadonce's), handed spans directly, each carrying the spans
    below it (``Child``)."""

    def __init__(self, tracer: SdkTracer, *, nests_into: SpanProcessor | None = None) -> None:
        # Where loadonce built the provider, its one processor is called directly, not
        # through the provider's list of them (one call less per span on the event loop).
        self.processor: SpanProcessor = nests_into or tracer.span_processor
        self.nests = nests_into is not None
        self.resource = tracer.resource
        self.new_span_id, self.new_trace_id = id_makers(tracer.id_generator)
        self.scope = InstrumentationScope("loadonce", __version__)
        # What code besides loadonce's (a user's handler, through the current span) may add
        # to a request's span: the tracer's limits, as on the SDK's own spans (the provider's,
        # else OpenTelemetry's OTEL_SPAN_*_LIMIT and OTEL_ATTRIBUTE_*_LIMIT variables).
        limits = getattr(tracer, "_span_limits", None)
        self.limits: SpanLimits = limits if isinstance(limits, SpanLimits) else SpanLimits()

    def open(
        self,
        name: str,
        parent: SpanContext,
        start_ns: int | None = None,
        *,
        links: Sequence[Link] = (),
        attributes: Mapping[str, Any] | None = None,
    ) -> OpenSpan:
        started = time.time_ns() if start_ns is None else start_ns
        return _Finishing(self, name, self._below(parent), parent, started, links, attributes)

    def child(
        self,
        name: str,
        parent: SpanContext,
        start_ns: int,
        end_ns: int,
        *,
        links: Sequence[Link] = (),
        attributes: Mapping[str, Any] | None = None,
        errors: Sequence[BaseException] = (),
        failed: str | None = None,
    ) -> None:
        self.write(
            FinishedSpan(
                name,
                self._below(parent),
                parent,
                self.resource,
                attributes,
                _error_events(errors, end_ns),
                links,
                _INTERNAL,
                None,
                _status(failed),
                start_ns,
                end_ns,
                self.scope,
            )
        )

    def _below(self, parent: SpanContext) -> SpanContext:
        """A new span's ids under ``parent``, in its trace, with its sampling decision."""
        return SpanContext(
            parent.trace_id, self.new_span_id(), False, parent.trace_flags, parent.trace_state
        )

    def started(self, span: RecordedSpan) -> None:
        """Tell the tracer's span processors a request's span started, as the SDK does for its
        own (a processor may add attributes to it then); not loadonce's own processor (a
        ``BatchSpanProcessor``, whose ``on_start`` does nothing)."""
        if not self.nests:
            self.processor.on_start(span, parent_context=None)  # type: ignore[arg-type]

    def write(self, span: ReadableSpan) -> None:
        """Hand a finished span to the span processors."""
        self.processor.on_end(span)


def id_makers(generator: IdGenerator) -> tuple[Callable[[], int], Callable[[], int]]:
    """The generator's span and trace ids' makers. The SDK's default draws random bits until
    they are not zero (an invalid id): called in C here (no Python frame per id on the event
    loop), drawn once (2**-64 and 2**-128 of a zero are not worth a loop)."""
    if type(generator) is RandomIdGenerator:
        return functools.partial(random.getrandbits, 64), functools.partial(random.getrandbits, 128)
    return generator.generate_span_id, generator.generate_trace_id


class FinishedSpan(ReadableSpan):
    """A span loadonce wrote whole. Its attributes, events and links are plain collections,
    not the SDK's bounded ones, so its counts of what was left out are kept here, plain
    numbers: the SDK's span works them out with three type checks each time they are read
    (0.5 µs a span, read by the OTLP encoder)."""

    dropped_attributes = 0
    dropped_events = 0
    dropped_links = 0
    # The spans below it it carries, when the writer nests them (``Child``).
    children: Sequence[Child] = ()


class _Finishing:
    """A span opened now and written when it ends (a model call's ``batch``); the spans
    below it (its ``predict``) are carried in it when the writer nests them."""

    __slots__ = (
        "attributes",
        "children",
        "context",
        "links",
        "name",
        "parent",
        "start_ns",
        "writer",
    )

    def __init__(
        self,
        writer: FinishedSpanWriter,
        name: str,
        context: SpanContext,
        parent: SpanContext,
        start_ns: int,
        links: Sequence[Link],
        attributes: Mapping[str, Any] | None,
    ) -> None:
        self.writer = writer
        self.name = name
        self.context = context
        self.parent = parent
        self.start_ns = start_ns
        self.links = links
        self.attributes = attributes
        self.children: list[Child] = []

    def child(self, name: str, start_ns: int, end_ns: int, *, failed: str | None = None) -> None:
        if self.writer.nests:
            self.children.append((name, start_ns, end_ns, None, (), (), _status(failed)))
        else:
            self.writer.child(name, self.context, start_ns, end_ns, failed=failed)

    def end(
        self,
        end_ns: int | None = None,
        errors: Sequence[BaseException] = (),
        failed: str | None = None,
    ) -> None:
        ended = time.time_ns() if end_ns is None else end_ns
        span = FinishedSpan(
            self.name,
            self.context,
            self.parent,
            self.writer.resource,
            self.attributes,
            _error_events(errors, ended),
            self.links,
            _INTERNAL,
            None,
            _status(failed),
            self.start_ns,
            ended,
            self.writer.scope,
        )
        if self.children:
            span.children = self.children
        self.writer.write(span)


class RecordedSpan(trace.Span, ReadableSpan):
    """A request's span, opened by loadonce (the sampling decided before, the ids made here)
    and handed, itself, to the SDK tracer's span processors when it ends, as the SDK hands
    its own spans: a live SDK span takes 21 µs to start and end (docs/benchmarks.md). It is
    the current span while the request runs, so a handler's ``trace.get_current_span()``
    gets it: what such code sets goes through OpenTelemetry's attribute checks and limits,
    as on the SDK's own span; loadonce's own attributes are written directly. Once ended, it
    is read as a ``ReadableSpan`` is (its fields are the ones ``ReadableSpan`` reads) and
    changes no more. For use on one thread (the event loop's), as a request's span is."""

    def __init__(
        self,
        writer: FinishedSpanWriter,
        name: str,
        context: SpanContext,
        parent: SpanContext | None,
        kind: SpanKind,
    ) -> None:
        self.writer = writer
        # ReadableSpan's fields (its properties read them).
        self._name = name
        self._context = context
        self._parent = parent
        self._kind = kind
        self._start_time: int | None = time.time_ns()
        self._end_time: int | None = None
        self._resource = writer.resource
        self._instrumentation_scope = writer.scope
        # loadonce's own attributes (RequestSpan writes them here); what other code sets is
        # kept apart, bounded (``_added``), and merged in when the span ends.
        self.own_attributes: dict[str, Any] = {}
        self._attributes: Mapping[str, Any] = self.own_attributes
        self.children: list[Child] = []
        # Every field is the instance's own from the start, none a class attribute read
        # through it: CPython 3.11 specializes reading an instance's own attribute, not a
        # class attribute read through an instance, which goes through the type's cache;
        # code that runs once every ten requests (a sampled request's) finds that cache
        # cold, and each miss walks the class's bases (measured: docs/benchmarks.md).
        self._instrumentation_info = None
        self._status = _UNSET
        self._added: BoundedAttributes | None = None
        self._dropped_attributes = 0
        # Bounded on the first event or link, as the SDK's span bounds them: over the limit,
        # the oldest is dropped and counted.
        self._events: Sequence[Event] = ()
        self._links: Sequence[Link] = ()
        self.ended = False  # once True, nothing changes it

    def get_span_context(self) -> SpanContext:
        return self._context  # type: ignore[return-value]  # always set (ReadableSpan's type)

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
        """A finished span below this one: carried in it when the writer nests them (and
        this span is still open), else written on its own."""
        writer = self.writer
        if not writer.nests or self.ended:
            writer.child(
                name,
                self.get_span_context(),
                start_ns,
                end_ns,
                links=links,
                attributes=attributes,
                errors=errors,
                failed=failed,
            )
            return
        self.children.append(
            (
                name,
                start_ns,
                end_ns,
                attributes,
                links,
                _error_events(errors, end_ns) if errors else (),
                _status(failed),
            )
        )

    @property
    def attributes(self) -> Mapping[str, Any]:
        """Its attributes so far (as the SDK's span shows them to a processor)."""
        if self._added is None or self.ended:
            return MappingProxyType(self._attributes)
        return MappingProxyType({**self.own_attributes, **self._added})

    @property
    def dropped_attributes(self) -> int:
        return self._dropped_attributes

    def is_recording(self) -> bool:
        return not self.ended

    def set_attributes(self, attributes: Mapping[str, types.AnyValue]) -> None:
        for key, value in attributes.items():
            self.set_attribute(key, value)

    def set_attribute(self, key: str, value: types.AnyValue) -> None:
        if self.ended:
            return
        if self._added is None:
            limits = self.writer.limits
            self._added = BoundedAttributes(
                limits.max_span_attributes,
                immutable=False,
                max_value_len=limits.max_span_attribute_length,
            )
        self._added[key] = value

    def add_event(
        self, name: str, attributes: types.Attributes = None, timestamp: int | None = None
    ) -> None:
        if self.ended:
            return
        limits = self.writer.limits
        cleaned = BoundedAttributes(
            limits.max_event_attributes, attributes, max_value_len=limits.max_attribute_length
        )
        self._add_event(Event(name, cleaned, timestamp or time.time_ns()))

    def _add_event(self, event: Event) -> None:
        if not isinstance(self._events, BoundedList):
            self._events = BoundedList(self.writer.limits.max_events)
        self._events.append(event)

    def add_link(self, context: SpanContext, attributes: types.Attributes = None) -> None:
        if self.ended or not context.is_valid:
            return
        limits = self.writer.limits
        cleaned = BoundedAttributes(
            limits.max_link_attributes, attributes, max_value_len=limits.max_attribute_length
        )
        if not isinstance(self._links, BoundedList):
            self._links = BoundedList(limits.max_links)
        self._links.append(Link(context, cleaned))

    def update_name(self, name: str) -> None:
        if not self.ended:
            self._name = name

    def set_status(self, status: Status | StatusCode, description: str | None = None) -> None:
        # The SDK's rules: OK is final, UNSET changes nothing.
        if self.ended or self._status.status_code is StatusCode.OK:
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
        if self.ended:
            return
        event = _exception_event(exception, timestamp or time.time_ns(), escaped)
        if attributes:
            limits = self.writer.limits
            merged = BoundedAttributes(
                limits.max_event_attributes,
                {**(event.attributes or {}), **attributes},
                max_value_len=limits.max_attribute_length,
            )
            event = Event(event.name, merged, event.timestamp)
        self._add_event(event)

    def end(self, end_time: int | None = None) -> None:
        if self.ended:
            return
        self.ended = True
        self._end_time = time.time_ns() if end_time is None else end_time
        if self._added is not None:
            self._attributes = {**self.own_attributes, **self._added}
            self._dropped_attributes = self._added.dropped
        self.writer.processor.on_end(self)


def _error_events(errors: Sequence[BaseException], timestamp: int) -> Sequence[Event]:
    return [_exception_event(e, timestamp) for e in errors[:ERRORS_RECORDED]] if errors else ()


def _status(failed: str | None) -> Status:
    return _UNSET if failed is None else Status(StatusCode.ERROR, failed)


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
        attributes: Mapping[str, Any] | None = None,
    ) -> OpenSpan:
        span = self.tracer.start_span(
            name,
            context=trace.set_span_in_context(NonRecordingSpan(parent)),
            links=links,
            attributes=attributes,
            start_time=start_ns,
        )
        return _Live(self, span)

    def child(
        self,
        name: str,
        parent: SpanContext,
        start_ns: int,
        end_ns: int,
        *,
        links: Sequence[Link] = (),
        attributes: Mapping[str, Any] | None = None,
        errors: Sequence[BaseException] = (),
        failed: str | None = None,
    ) -> None:
        opened = self.open(name, parent, start_ns, links=links, attributes=attributes)
        opened.end(end_ns, errors, failed)


class _Live:
    __slots__ = ("context", "span", "writer")

    def __init__(self, writer: LiveSpanWriter, span: trace.Span) -> None:
        self.writer = writer
        self.span = span
        self.context = span.get_span_context()

    def child(self, name: str, start_ns: int, end_ns: int, *, failed: str | None = None) -> None:
        self.writer.child(name, self.context, start_ns, end_ns, failed=failed)

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


class ChildWriter(Protocol):
    """Where the finished spans below a request's go (its phases, its wait in the queue):
    ``RecordedSpan.child`` or ``otel._WrittenApart``, as ``RequestSpan.below``."""

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
    ) -> None: ...


class Phase:
    """A span around a block (``with``), below a request's, written when the block ends; an
    exception leaving it is recorded on it. ``carrier``: the request's span when it carries
    the spans below it (``Child``): a phase that ended well is added to them directly."""

    __slots__ = ("carrier", "name", "owner", "started")

    def __init__(self, owner: ChildWriter, name: str, carrier: RecordedSpan | None = None) -> None:
        self.owner = owner
        self.name = name
        self.carrier = carrier
        self.started = 0

    def __enter__(self) -> None:
        self.started = time.time_ns()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace_back: TracebackType | None,
    ) -> None:
        ended = time.time_ns()
        if error is None:
            carrier = self.carrier
            if carrier is not None and not carrier.ended:
                carrier.children.append((self.name, self.started, ended, None, (), (), _UNSET))
            else:
                self.owner.child(self.name, self.started, ended)
        else:
            failed = f"{type(error).__name__}: {error}"
            self.owner.child(self.name, self.started, ended, errors=[error], failed=failed)
