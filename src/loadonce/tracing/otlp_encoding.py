"""Finished spans as OTLP's export request, each message built where it belongs.

The SDK exporter's encoder (``opentelemetry-exporter-otlp-proto-common``) builds every span's
messages apart and then hands them to the message above, which copies them, at each of the
three levels a span is nested in; with its per-value type checks and enum lookups, it was most
of the export thread's work: 24.7 µs a span against 9.0 µs built in place (the same 512 spans
of served requests, docs/benchmarks.md "What tracing costs"). The messages are OpenTelemetry's
own (``opentelemetry-proto``) and every field holds what the SDK's encoder puts there: a test
compares the two requests, span for span, for every kind of span, value and grouping.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import (
    AnyValue,
    ArrayValue,
    KeyValue,
    KeyValueList,
)
from opentelemetry.proto.trace.v1.trace_pb2 import ScopeSpans, SpanFlags
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.util.instrumentation import InstrumentationScope as SdkScope
from opentelemetry.trace import SpanContext, SpanKind, Status

logger = logging.getLogger(__name__)

# OTLP's span kinds are the API's, counted from 1 (0 is "unspecified").
_KINDS = {kind: kind.value + 1 for kind in SpanKind}
# Every span and link says whether its parent (its target) is remote.
_HAS_IS_REMOTE = SpanFlags.SPAN_FLAGS_CONTEXT_HAS_IS_REMOTE_MASK
_REMOTE = _HAS_IS_REMOTE | SpanFlags.SPAN_FLAGS_CONTEXT_IS_REMOTE_MASK
# How a span's attributes (and its events' and links') become key-values.
_KeyValues = Callable[[Mapping[str, Any] | None], list[Any]]


def encode_spans(spans: Sequence[ReadableSpan]) -> ExportTraceServiceRequest:
    """The export request for ``spans``: grouped by resource, then by instrumentation scope,
    each group where its first span put it, as the SDK's encoder groups them."""
    request = ExportTraceServiceRequest()
    # The scope group of each (resource, scope) pair of objects seen; equal pairs share one.
    by_identity: dict[tuple[int, int], ScopeSpans] = {}
    by_value: dict[Resource, tuple[Any, dict[SdkScope | None, ScopeSpans]]] = {}
    for span in spans:
        resource, scope = span.resource, span.instrumentation_scope
        group = by_identity.get((id(resource), id(scope)))
        if group is None:
            group = _group(request, by_value, resource, scope)
            by_identity[(id(resource), id(scope))] = group
        _add_span(group, span)
    return request


def _group(
    request: ExportTraceServiceRequest,
    by_value: dict[Resource, tuple[Any, dict[SdkScope | None, ScopeSpans]]],
    resource: Resource,
    scope: SdkScope | None,
) -> ScopeSpans:
    found = by_value.get(resource)
    if found is None:
        resource_spans = request.resource_spans.add(
            schema_url=resource.schema_url,
            resource={"attributes": _checked_key_values(resource.attributes)},
        )
        found = by_value[resource] = (resource_spans, {})
    resource_spans, scopes = found
    group = scopes.get(scope)
    if group is None:
        group = resource_spans.scope_spans.add(
            schema_url=scope.schema_url if scope else None, scope=_scope(scope)
        )
        scopes[scope] = group
    return group


def _scope(scope: SdkScope | None) -> dict[str, Any]:
    """The scope's message, for its group's ``add``."""
    if scope is None:
        return {}
    return {
        "name": scope.name,
        "version": scope.version or "",  # "": not set
        "attributes": _checked_key_values(scope.attributes),
    }


def _add_span(group: ScopeSpans, span: ReadableSpan) -> None:
    """The span's message, built by one ``add``: its attributes, events, links and status as
    dicts that protobuf turns into messages in place (each ``add`` or field set from Python
    costs a call). If a value cannot be encoded (of no kind OTLP holds, or refused by protobuf
    there: an int beyond 64 bits, a string with a lone surrogate; code may set any of them on
    a request's span), the span is built again with each attribute checked on its own, so
    that only that attribute is left out (logged), as the SDK's encoder does, not the span or
    the export. A refused ``add`` adds nothing."""
    try:
        group.spans.add(**_span_fields(span, _key_values))
    except Exception:  # a value refused (or of no kind OTLP holds): checked one by one
        group.spans.add(**_span_fields(span, _checked_key_values))


def _span_fields(span: ReadableSpan, key_values: _KeyValues) -> dict[str, Any]:
    """The span's fields, for ``add``; its attributes, its events' and links' through
    ``key_values``. An empty list is left out (an empty repeated field is what it would
    write)."""
    context = span.context
    parent = span.parent
    assert context is not None  # a finished span has its ids
    status = span.status
    fields: dict[str, Any] = {
        "trace_id": context.trace_id.to_bytes(16, "big"),
        "span_id": context.span_id.to_bytes(8, "big"),
        "name": span.name,
        "kind": _KINDS[span.kind],
        "start_time_unix_nano": span.start_time,
        "end_time_unix_nano": span.end_time,
        "dropped_attributes_count": span.dropped_attributes,
        "dropped_events_count": span.dropped_events,
        "dropped_links_count": span.dropped_links,
        "flags": _REMOTE if parent is not None and parent.is_remote else _HAS_IS_REMOTE,
    }
    if parent is not None:
        fields["parent_span_id"] = parent.span_id.to_bytes(8, "big")
    trace_state = _trace_state(context)
    if trace_state is not None:
        fields["trace_state"] = trace_state
    if status is not None:
        fields["status"] = _status(status)
    attributes = span.attributes
    if attributes:
        fields["attributes"] = key_values(attributes)
    events = span.events
    if events:
        fields["events"] = [
            {
                "name": event.name,
                "time_unix_nano": event.timestamp,
                "attributes": key_values(event.attributes),
                "dropped_attributes_count": event.dropped_attributes,
            }
            for event in events
        ]
    links = span.links
    if links:
        fields["links"] = [
            {
                "trace_id": link.context.trace_id.to_bytes(16, "big"),
                "span_id": link.context.span_id.to_bytes(8, "big"),
                "attributes": key_values(link.attributes),
                "dropped_attributes_count": link.dropped_attributes,
                "flags": _REMOTE if link.context.is_remote else _HAS_IS_REMOTE,
            }
            for link in links
        ]
    return fields


def _status(status: Status) -> dict[str, Any]:
    """The status's message; its description only when there is one, as the SDK's encoder."""
    if status.description:
        return {"code": status.status_code.value, "message": status.description}
    return {"code": status.status_code.value}


def _trace_state(context: SpanContext) -> str | None:
    state = context.trace_state
    if not state:
        return None
    return ",".join(f"{key}={value}" for key, value in state.items())


def _key_values(attributes: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    """Attributes as key-values, for a message's constructor (or ``add``), unchecked: a value
    that cannot be encoded raises, in ``_any_value`` or in protobuf's ``add`` (``_add_span``
    then checks each with ``_checked_key_values``).

    Each is a dict, which protobuf turns into the KeyValue in place: building the KeyValue
    and AnyValue messages in Python first, to be copied into the span, took twice as long (a
    span with five attributes: 12.1 against 6.1 µs, docs/benchmarks.md)."""
    if not attributes:
        return []
    encoded = []
    for key, value in attributes.items():
        kind = type(value)
        # The usual values first, without the general case's checks in turn.
        if kind is str:
            encoded.append({"key": key, "value": {"string_value": value}})
        elif kind is int:
            encoded.append({"key": key, "value": {"int_value": value}})
        else:
            encoded.append({"key": key, "value": _any_value(value)})
    return encoded


def _checked_key_values(attributes: Mapping[str, Any] | None) -> list[KeyValue]:
    """Attributes as key-value messages, each built on its own: one protobuf refuses is left
    out, logged, as the SDK's encoder does (slower than ``_key_values``: for the rare span
    that has such a value, and for a resource's and a scope's few)."""
    encoded = []
    for key, value in (attributes or {}).items():
        try:
            encoded.append(KeyValue(key=key, value=_any_value(value)))
        except Exception as exc:  # the SDK's encoder logs and goes on
            logger.exception("Failed to encode key %s: %s", key, exc)
    return encoded


def _any_value(value: Any) -> AnyValue:
    """Any attribute value, checked in the SDK encoder's order (a bool is an int, a str a
    sequence)."""
    if value is None:
        return AnyValue()
    if isinstance(value, bool):
        return AnyValue(bool_value=value)
    if isinstance(value, str):
        return AnyValue(string_value=value)
    if isinstance(value, int):
        return AnyValue(int_value=value)
    if isinstance(value, float):
        return AnyValue(double_value=value)
    if isinstance(value, bytes):
        return AnyValue(bytes_value=value)
    if isinstance(value, Sequence):
        return AnyValue(array_value=ArrayValue(values=[_any_value(v) for v in value]))
    if isinstance(value, Mapping):
        return AnyValue(
            kvlist_value=KeyValueList(
                values=[KeyValue(key=str(k), value=_any_value(v)) for k, v in value.items()]
            )
        )
    raise TypeError(f"Invalid type {type(value)} of value {value}")
