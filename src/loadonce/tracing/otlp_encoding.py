"""Finished spans as the bytes of OTLP's export request, written in protobuf's wire format.

The SDK exporter's encoder (``opentelemetry-exporter-otlp-proto-common``) builds a protobuf
message for every span, attribute, value, link and event, then serializes the tree: most of
what a sampled request cost the worker (the export thread shares the worker's interpreter
with the event loop). The spans' layout is fixed and small (ids, a name, two timestamps, a few
key-values, links), so loadonce writes their bytes directly: 3.3 µs a span against 15.8
(docs/benchmarks.md, "What tracing costs"). The layout is ``opentelemetry-proto``'s (the
messages' field numbers and types, named where each is written). A request's or a batch's span
may carry the spans below it (``spans.Child``): each is written as the span it stands for,
with a span id made here (``new_span_id``: the provider's id generator).

The bytes are the SDK encoder's, byte for byte (tests compare them for every kind of span,
value and grouping): the same fields, in field-number order, each written when protobuf writes
it (proto3: a scalar at its default is left out, a value of a ``oneof`` and a set message never
are). An attribute OTLP cannot hold (of no kind it has, an int beyond 64 bits, a string that is
not Unicode text: a lone surrogate) is left out and logged, as the SDK's encoder does, not its
span or the export. A span's name that is not Unicode text would fail the SDK's whole export;
here its odd characters become "?".
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan
from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
from opentelemetry.sdk.util.instrumentation import InstrumentationScope as SdkScope
from opentelemetry.trace import Link, SpanContext, SpanKind, Status, StatusCode
from opentelemetry.trace.span import DEFAULT_TRACE_STATE

from loadonce.tracing.spans import Child, FinishedSpan, RecordedSpan

logger = logging.getLogger(__name__)

# Wire types (protobuf's encoding): a varint, 64 bits, a length-delimited run of bytes, 32 bits.
_VARINT, _FIXED64, _LEN, _FIXED32 = 0, 1, 2, 5


def _varint(value: int) -> bytes:
    """An unsigned integer (below 2**64) as a base-128 varint."""
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


# Lengths and small numbers are most of the varints written: looked up, not computed.
_SMALL = [_varint(n) for n in range(1 << 14)]


def _size(value: int) -> bytes:
    return _SMALL[value] if value < 16384 else _varint(value)


def _tag(field: int, wire_type: int) -> bytes:
    return _varint(field << 3 | wire_type)


def _delimited(tag: bytes, payload: bytes) -> bytes:
    return tag + _size(len(payload)) + payload


# ExportTraceServiceRequest: 1 resource_spans. ResourceSpans: 1 resource, 2 scope_spans,
# 3 schema_url. ScopeSpans: 1 scope, 2 spans, 3 schema_url.
_RESOURCE_SPANS = _tag(1, _LEN)
_GROUP_RESOURCE = _tag(1, _LEN)
_SCOPE_SPANS = _tag(2, _LEN)
_GROUP_SCHEMA_URL = _tag(3, _LEN)
_GROUP_SCOPE = _tag(1, _LEN)
_SPAN = _tag(2, _LEN)
_RESOURCE_ATTRIBUTE = _tag(1, _LEN)
_SCOPE_NAME = _tag(1, _LEN)
_SCOPE_VERSION = _tag(2, _LEN)
_SCOPE_ATTRIBUTE = _tag(3, _LEN)
# Span (opentelemetry/proto/trace/v1/trace.proto).
_TRACE_ID = _tag(1, _LEN) + _size(16)
_SPAN_ID = _tag(2, _LEN) + _size(8)
_TRACE_STATE = _tag(3, _LEN)
_PARENT_SPAN_ID = _tag(4, _LEN) + _size(8)
_NAME = _tag(5, _LEN)
_KIND = _tag(6, _VARINT)
_START = _tag(7, _FIXED64)
_END = _tag(8, _FIXED64)
_ATTRIBUTE = _tag(9, _LEN)
_DROPPED_ATTRIBUTES = _tag(10, _VARINT)
_EVENT = _tag(11, _LEN)
_DROPPED_EVENTS = _tag(12, _VARINT)
_LINK = _tag(13, _LEN)
_DROPPED_LINKS = _tag(14, _VARINT)
_STATUS = _tag(15, _LEN)
_FLAGS = _tag(16, _FIXED32)
# Span.Event: 1 time_unix_nano, 2 name, 3 attributes, 4 dropped_attributes_count.
_EVENT_TIME = _tag(1, _FIXED64)
_EVENT_NAME = _tag(2, _LEN)
_EVENT_ATTRIBUTE = _tag(3, _LEN)
_EVENT_DROPPED = _tag(4, _VARINT)
# Span.Link: 1 trace_id, 2 span_id, 4 attributes, 5 dropped_attributes_count, 6 flags (the
# SDK's encoder writes no trace_state for a link).
_LINK_ATTRIBUTE = _tag(4, _LEN)
_LINK_DROPPED = _tag(5, _VARINT)
_LINK_FLAGS = _tag(6, _FIXED32)
# Status: 2 message, 3 code.
_STATUS_MESSAGE = _tag(2, _LEN)
_STATUS_CODE = _tag(3, _VARINT)
# KeyValue: 1 key, 2 value. AnyValue (a oneof): 1 string, 2 bool, 3 int, 4 double, 5 array,
# 6 key-value list, 7 bytes. ArrayValue and KeyValueList: 1 values.
_KEY = _tag(1, _LEN)
_VALUE = _tag(2, _LEN)
_STRING = _tag(1, _LEN)
_BOOL = _tag(2, _VARINT)
_INT = _tag(3, _VARINT)
_DOUBLE = _tag(4, _FIXED64)
_ARRAY = _tag(5, _LEN)
_KEY_VALUES = _tag(6, _LEN)
_BYTES = _tag(7, _LEN)
_VALUES = _tag(1, _LEN)

# OTLP's span kinds are the API's, counted from 1 (0 is "unspecified").
_KINDS = [(kind, _KIND + _size(kind.value + 1)) for kind in SpanKind]
_INTERNAL = _KIND + _size(SpanKind.INTERNAL.value + 1)


def _kind(kind: SpanKind) -> bytes:
    """The kind's field, found by identity (an enum member hashes in Python)."""
    for member, encoded in _KINDS:
        if kind is member:
            return encoded
    raise ValueError(f"not a SpanKind: {kind!r}")


_NONE_DROPPED = (0, 0, 0)
# Every span and link says whether its parent (its target) is remote: SpanFlags'
# CONTEXT_HAS_IS_REMOTE (0x100), with CONTEXT_IS_REMOTE (0x200) when it is.
_LOCAL = struct.pack("<I", 0x100)
_REMOTE = struct.pack("<I", 0x300)
_SPAN_FLAGS = {False: _FLAGS + _LOCAL, True: _FLAGS + _REMOTE}
_LINK_SPAN_FLAGS = {False: _LINK_FLAGS + _LOCAL, True: _LINK_FLAGS + _REMOTE}
_TIMES = struct.Struct("<Q")
# The status of most spans: unset, without a message (an empty message, still written).
_UNSET_STATUS = _STATUS + _size(0)
_DOUBLE_VALUE = struct.Struct("<d")
_MOST_NEGATIVE, _MOST_POSITIVE = -(2**63), 2**63 - 1

# Names and keys repeat (span names are routes' templates; attribute keys a fixed few): their
# encoded bytes are kept, up to this many of each, so that code naming spans or keys without
# bound cannot grow the cache.
_MOST_REMEMBERED = 1024
_names: dict[str, bytes] = {}
_keys: dict[str, bytes] = {}
# Most attributes repeat with their values too (a model's name, a method, a route, a status):
# each (key, str or int value) pair's bytes, with their length, are kept until there are this
# many, then all are forgotten.
_MOST_PAIRS = 4096
_pairs: dict[tuple[str, str | int], bytes] = {}
# Only what is this short (encoded) is kept: the caches hold at most a few hundred KiB,
# whatever names and values code gives its spans.
_LONGEST_REMEMBERED = 128


# The span ids of carried spans where no provider gave its generator: the SDK's default.
_RANDOM_SPAN_ID = RandomIdGenerator().generate_span_id


def encode_spans(
    spans: Sequence[ReadableSpan], new_span_id: Callable[[], int] = _RANDOM_SPAN_ID
) -> bytes:
    """The serialized export request for ``spans``: grouped by resource, then by
    instrumentation scope, each group where its first span put it, as the SDK's encoder groups
    them. ``new_span_id``: the ids of the spans they carry (``spans.Child``)."""
    # The spans' bytes of each (resource, scope) pair of objects seen; equal pairs share one.
    by_identity: dict[tuple[int, int], list[bytes]] = {}
    by_value: dict[Resource, dict[SdkScope | None, list[bytes]]] = {}
    # Spans come in runs of one pair (a worker's spans all share one): the last group is kept.
    last_resource: Resource | None = None
    last_scope: SdkScope | None = None
    group: list[bytes] = []
    # The fields carried spans share (``_child``), while ``spans`` holds what they were
    # written from (keys are the objects' ids).
    tails: dict[tuple[int, int, int, int], bytes] = {}
    for span in spans:
        resource, scope = span.resource, span.instrumentation_scope
        if resource is not last_resource or scope is not last_scope or not group:
            key = (id(resource), id(scope))
            found = by_identity.get(key)
            if found is None:
                found = by_value.setdefault(resource, {}).setdefault(scope, [])
                by_identity[key] = found
            group, last_resource, last_scope = found, resource, scope
        group.append(_span(span, new_span_id, tails))
    request = []
    for resource, scopes in by_value.items():
        parts = [_delimited(_GROUP_RESOURCE, _resource(resource))]
        for scope, encoded in scopes.items():
            parts.append(_delimited(_SCOPE_SPANS, _scope_spans(scope, encoded)))
        if resource.schema_url:
            parts.append(_delimited(_GROUP_SCHEMA_URL, resource.schema_url.encode()))
        request.append(_delimited(_RESOURCE_SPANS, b"".join(parts)))
    return b"".join(request)


def _resource(resource: Resource) -> bytes:
    """Resource: 1 attributes."""
    parts: list[bytes] = []
    _add_key_values(parts, _RESOURCE_ATTRIBUTE, resource.attributes)
    return b"".join(parts)


def _scope_spans(scope: SdkScope | None, spans: list[bytes]) -> bytes:
    parts = [_delimited(_GROUP_SCOPE, _scope(scope)), *spans]
    if scope is not None and scope.schema_url:
        parts.append(_delimited(_GROUP_SCHEMA_URL, scope.schema_url.encode()))
    return b"".join(parts)


def _scope(scope: SdkScope | None) -> bytes:
    """InstrumentationScope: 1 name, 2 version, 3 attributes."""
    if scope is None:
        return b""
    parts = []
    if scope.name:
        parts.append(_delimited(_SCOPE_NAME, scope.name.encode("utf-8", "replace")))
    if scope.version:
        parts.append(_delimited(_SCOPE_VERSION, scope.version.encode("utf-8", "replace")))
    if scope.attributes:
        _add_key_values(parts, _SCOPE_ATTRIBUTE, scope.attributes)
    return b"".join(parts)


def _span(
    span: ReadableSpan,
    new_span_id: Callable[[], int],
    tails: dict[tuple[int, int, int, int], bytes],
) -> bytes:
    """One span, as the ScopeSpans' ``spans`` field: tag, length, its fields; then the spans
    it carries, if any. (Each of the span's properties is read once: most build something, a
    copy or a check, when read.)"""
    context = span.context
    parent = span.parent
    assert context is not None  # a finished span has its ids
    trace_id = context.trace_id.to_bytes(16, "big")
    span_id = context.span_id.to_bytes(8, "big")
    parts = [_TRACE_ID, trace_id, _SPAN_ID, span_id]
    trace_state = context.trace_state
    state = b""
    if trace_state is not DEFAULT_TRACE_STATE and trace_state:
        written = ",".join(f"{key}={value}" for key, value in trace_state.items())
        state = _delimited(_TRACE_STATE, written.encode())
        parts.append(state)
    if parent is not None:
        parts += (_PARENT_SPAN_ID, parent.span_id.to_bytes(8, "big"))
    if type(span) is FinishedSpan or type(span) is RecordedSpan:
        # loadonce's own, read through their fields (ReadableSpan's properties copy or check
        # them when read: 1 µs a span). A request's events and links are the SDK's bounded
        # lists once it has any, which count what they dropped.
        events, links = span._events, span._links
        _add_head(parts, span._name, _kind(span._kind), span._start_time, span._end_time)
        dropped = (
            getattr(span, "_dropped_attributes", 0),
            getattr(events, "dropped", 0),
            getattr(links, "dropped", 0),
        )
        _add_rest(parts, span._attributes, events, links, span._status, dropped)
    else:
        _add_head(parts, span.name, _kind(span.kind), span.start_time, span.end_time)
        dropped = (span.dropped_attributes, span.dropped_events, span.dropped_links)
        _add_rest(parts, span.attributes, span.events, span.links, span.status, dropped)
    parts.append(_SPAN_FLAGS[parent is not None and parent.is_remote])
    encoded = b"".join(parts)
    spans = _SPAN + _size(len(encoded)) + encoded
    children: Sequence[Child] = getattr(span, "children", ())
    if children:
        below = (_TRACE_ID, trace_id, _SPAN_ID)
        above = (state, _PARENT_SPAN_ID, span_id)
        spans += b"".join([_child(child, new_span_id(), below, above, tails) for child in children])
    return spans


def _child(
    child: Child,
    span_id: int,
    below: tuple[bytes, ...],
    above: tuple[bytes, ...],
    tails: dict[tuple[int, int, int, int], bytes],
) -> bytes:
    """A span another carries (``spans.Child``), as the span it stands for: in its carrier's
    trace (``below``: the trace id's field, the span id's tag), under it with its trace state
    (``above``), of kind INTERNAL, its parent local. Its fields after its times (attributes,
    events, links, status, flags) are written once for each set of those objects (``tails``,
    by identity, for one export): a request's phases share theirs, and so do the waits of the
    requests one call carried (one attribute map and one link back to the call)."""
    name, start_ns, end_ns, attributes, links, events, status = child
    key = (id(attributes), id(events), id(links), id(status))
    tail = tails.get(key)
    if tail is None:
        written: list[bytes] = []
        _add_rest(written, attributes, events, links, status, _NONE_DROPPED)
        written.append(_SPAN_FLAGS[False])
        tail = tails[key] = b"".join(written)
    parts = [*below, span_id.to_bytes(8, "big"), *above]
    _add_head(parts, name, _INTERNAL, start_ns, end_ns)
    parts.append(tail)
    encoded = b"".join(parts)
    return _SPAN + _size(len(encoded)) + encoded


def _add_head(
    parts: list[bytes], name: str, kind: bytes, start: int | None, end: int | None
) -> None:
    """A span's name, kind (encoded) and times (fields 5 to 8), in their order."""
    if name:
        parts.append(_names.get(name) or _name(name))
    parts.append(kind)
    if start:
        parts += (_START, _TIMES.pack(start))
    if end:
        parts += (_END, _TIMES.pack(end))


def _add_rest(
    parts: list[bytes],
    attributes: Mapping[str, Any] | None,
    events: Sequence[Event],
    links: Sequence[Link],
    status: Status | None,
    dropped: tuple[int, int, int],
) -> None:
    """A span's attributes, events, links, how many of each were left out (``dropped``), and
    its status (fields 9 to 15), in their order."""
    if attributes:
        _add_key_values(parts, _ATTRIBUTE, attributes)
    dropped_attributes, dropped_events, dropped_links = dropped
    if dropped_attributes:
        parts += (_DROPPED_ATTRIBUTES, _size(dropped_attributes))
    for event in events:
        encoded = _event(event)
        parts += (_EVENT, _size(len(encoded)), encoded)
    if dropped_events:
        parts += (_DROPPED_EVENTS, _size(dropped_events))
    for link in links:
        encoded = _link(link)
        parts += (_LINK, _size(len(encoded)), encoded)
    if dropped_links:
        parts += (_DROPPED_LINKS, _size(dropped_links))
    if status is None:
        return
    if status.status_code is StatusCode.UNSET and not status.description:
        parts.append(_UNSET_STATUS)
    else:
        parts.append(_delimited(_STATUS, _status(status)))


def _name(name: str) -> bytes:
    encoded = _delimited(_NAME, name.encode("utf-8", "replace"))
    if len(_names) < _MOST_REMEMBERED and len(encoded) <= _LONGEST_REMEMBERED:
        _names[name] = encoded
    return encoded


def _event(event: Event) -> bytes:
    parts: list[bytes] = []
    if event.timestamp:
        parts += (_EVENT_TIME, _TIMES.pack(event.timestamp))
    if event.name:
        parts.append(_delimited(_EVENT_NAME, event.name.encode("utf-8", "replace")))
    if event.attributes:
        _add_key_values(parts, _EVENT_ATTRIBUTE, event.attributes)
    if event.dropped_attributes:
        parts += (_EVENT_DROPPED, _size(event.dropped_attributes))
    return b"".join(parts)


def _link(link: Link) -> bytes:
    context: SpanContext = link.context
    parts = [
        _TRACE_ID,
        context.trace_id.to_bytes(16, "big"),
        _SPAN_ID,
        context.span_id.to_bytes(8, "big"),
    ]
    if link.attributes:
        _add_key_values(parts, _LINK_ATTRIBUTE, link.attributes)
    if link.dropped_attributes:
        parts += (_LINK_DROPPED, _size(link.dropped_attributes))
    parts.append(_LINK_SPAN_FLAGS[context.is_remote])
    return b"".join(parts)


def _status(status: Status) -> bytes:
    parts = []
    if status.description:
        parts.append(_delimited(_STATUS_MESSAGE, status.description.encode("utf-8", "replace")))
    code = status.status_code.value
    if code:
        parts += (_STATUS_CODE, _size(code))
    return b"".join(parts)


def _add_key_values(parts: list[bytes], tag: bytes, attributes: Mapping[str, Any]) -> None:
    """Each attribute as a KeyValue field (``tag``) of the message ``parts`` is building; one
    OTLP cannot hold is left out, logged, as the SDK's encoder does."""
    for key, value in attributes.items():
        kind = type(value)
        if kind is str or kind is int:  # exactly: True == 1, but is another value
            remembered = _pairs.get((key, value))
            if remembered is not None:
                parts += (tag, remembered)
                continue
        try:
            pair = _key(key) + _delimited(_VALUE, _any_value(value))
        except Exception as error:  # the SDK's encoder logs and goes on
            logger.exception("Failed to encode key %s: %s", key, error)
            continue
        delimited = _size(len(pair)) + pair
        if (kind is str or kind is int) and len(delimited) <= _LONGEST_REMEMBERED:
            if len(_pairs) >= _MOST_PAIRS:
                _pairs.clear()  # values without bound (request ids) pass through; the rest return
            _pairs[key, value] = delimited
        parts += (tag, delimited)


def _key(key: str) -> bytes:
    encoded = _keys.get(key)
    if encoded is None:
        encoded = _delimited(_KEY, key.encode()) if key else b""
        if len(_keys) < _MOST_REMEMBERED and len(encoded) <= _LONGEST_REMEMBERED:
            _keys[key] = encoded
    return encoded


def _any_value(value: Any) -> bytes:
    """An AnyValue's fields, the value's kind checked in the SDK encoder's order (a bool is an
    int, a str a sequence); the usual kinds first, by exact type."""
    kind = type(value)
    if kind is str:
        return _delimited(_STRING, value.encode())
    if kind is int:
        return _int_value(value)
    if value is None:
        return b""
    if isinstance(value, bool):
        return _BOOL + (b"\x01" if value else b"\x00")
    if isinstance(value, str):
        return _delimited(_STRING, value.encode())
    if isinstance(value, int):
        return _int_value(value)
    if isinstance(value, float):
        return _DOUBLE + _DOUBLE_VALUE.pack(value)
    if isinstance(value, bytes):
        return _delimited(_BYTES, value)
    if isinstance(value, Sequence):
        items = b"".join(_delimited(_VALUES, _any_value(item)) for item in value)
        return _delimited(_ARRAY, items)
    if isinstance(value, Mapping):
        pairs = b"".join(
            _delimited(_VALUES, _key(str(k)) + _delimited(_VALUE, _any_value(v)))
            for k, v in value.items()
        )
        return _delimited(_KEY_VALUES, pairs)
    raise TypeError(f"Invalid type {type(value)} of value {value}")


def _int_value(value: int) -> bytes:
    if not _MOST_NEGATIVE <= value <= _MOST_POSITIVE:  # an int64's
        raise ValueError(f"Value out of range: {value}")
    return _INT + _varint(value & 0xFFFF_FFFF_FFFF_FFFF)
