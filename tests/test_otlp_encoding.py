"""The OTLP export request loadonce writes is the SDK encoder's, byte for byte: for the spans
of served requests (every span loadonce writes, an error's events, a batch's links, the SDK's
own load span) and for hand-made spans with every kind of value, parent, link, event, status,
drop count and grouping. The exporter built on it sends that request, honours the size limit
and shutdown, and encodes directly with the pinned SDK."""

from __future__ import annotations

import enum
import logging
import random
import threading
import tracemalloc
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from fastapi.testclient import TestClient
from opentelemetry.attributes import BoundedAttributes
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans as sdk_encode
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan, SpanLimits, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import (
    Link,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
    TraceState,
)

import loadonce
from loadonce.tracing import start_tracing
from loadonce.tracing.otlp_encoding import encode_spans
from loadonce.tracing.otlp_exporter import DirectOtlpSpanExporter
from loadonce.tracing.spans import Child, FinishedSpan, FinishedSpanWriter, RecordedSpan
from tests.test_tracing import Doubler
from tests.test_tracing_otlp import Receiver
from tests.test_tracing_otlp import receiver as receiver  # the fixture


class Colour(enum.IntEnum):
    RED = 1


class Label(str):
    """A str subclass, as some libraries hand out."""


SCOPE = InstrumentationScope("tests", "1.0", "https://scope.example/1", {"scope.key": "v"})
OTHER_SCOPE = InstrumentationScope("other")
RESOURCE = Resource({"service.name": "svc", "host.cores": 2}, "https://schema.example/1")


def context(trace_id: int, span_id: int, *, remote: bool = False, **kw: Any) -> SpanContext:
    return SpanContext(trace_id, span_id, is_remote=remote, trace_flags=TraceFlags(1), **kw)


def span(name: str, **kw: Any) -> ReadableSpan:
    kw.setdefault("context", context(0xABC, 0x1))
    kw.setdefault("resource", RESOURCE)
    kw.setdefault("instrumentation_scope", SCOPE)
    kw.setdefault("start_time", 1_764_700_000_000_000_000)
    kw.setdefault("end_time", 1_764_700_000_000_500_000)
    return ReadableSpan(name=name, **kw)


def every_kind_of_span() -> list[ReadableSpan]:
    values: dict[str, Any] = {
        "str": "text",
        "empty": "",
        "int": -(2**62),
        "bool": True,
        "float": 0.25,
        "bytes": b"\x00\xff",
        "ints": (1, 2, 3),
        "strs": ["a", "b"],
        "bools": [False],
        "floats": (1.5,),
        "enum": Colour.RED,
        "subclass": Label("x"),
        "none": None,
        "nested": {"inner": 1},
    }
    bounded = BoundedAttributes(2, {"a": 1, "b": 2, "c": 3, "d": 4})  # 2 dropped
    bounded_event = BoundedAttributes(1, {"x": "1", "y": "2"})
    remote_parent = context(0xABC, 0x99, remote=True)
    state = TraceState([("vendor", "value"), ("other", "x")])
    return [
        span("values", attributes=values, kind=SpanKind.SERVER),
        span("no attributes", attributes=None, kind=SpanKind.CLIENT, parent=context(0xABC, 7)),
        span("remote parent", parent=remote_parent, kind=SpanKind.PRODUCER),
        span("trace state", context=context(0xDEF, 2, trace_state=state), kind=SpanKind.CONSUMER),
        span("dropped attributes", attributes=bounded),
        span(
            "events",
            events=[
                Event("plain", timestamp=5),
                Event("with attributes", {"k": "v", "n": 3}, timestamp=6),
                Event("dropped", bounded_event, timestamp=7),
            ],
        ),
        span(
            "links",
            links=[
                Link(context(0x1, 0x2)),
                Link(context(0x3, 0x4, remote=True), {"link.key": 1.5}),
            ],
        ),
        span("error", status=Status(StatusCode.ERROR, "it broke")),
        span("ok", status=Status(StatusCode.OK)),
        span("error without words", status=Status(StatusCode.ERROR)),
        # Grouping: an equal resource that is another object shares the group; a scope of
        # another name, no scope, and another resource each open their own.
        span("equal resource", resource=Resource(dict(RESOURCE.attributes), RESOURCE.schema_url)),
        span("other scope", instrumentation_scope=OTHER_SCOPE),
        span("no scope", instrumentation_scope=None),
        span("other resource", resource=Resource({"service.name": "another"})),
        span("back to the first", kind=SpanKind.INTERNAL),
    ]


def test_every_kind_of_span_is_encoded_as_the_sdk_encodes_it() -> None:
    spans = every_kind_of_span()
    ours, theirs = encode_spans(spans), sdk_encode(spans)
    assert ours == theirs.SerializeToString()
    # And a receiver reads the request the SDK built.
    read = ExportTraceServiceRequest.FromString(ours)
    assert read == theirs
    assert len(read.resource_spans) == 2
    assert [len(r.scope_spans) for r in read.resource_spans] == [3, 1]


def test_a_value_otlp_cannot_hold_is_left_out_and_logged_as_the_sdk_does(
    caplog: pytest.LogCaptureFixture,
) -> None:
    spans = [span("odd value", attributes={"fine": 1, "odd": object(), "after": "x"})]
    with caplog.at_level(logging.ERROR):
        ours = read(encode_spans(spans))
    assert ours == sdk_encode(spans)
    keys = [kv.key for kv in ours.resource_spans[0].scope_spans[0].spans[0].attributes]
    assert keys == ["fine", "after"]
    assert "Failed to encode key odd" in caplog.text


def test_values_protobuf_refuses_lose_only_themselves_as_with_the_sdk(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Of a kind OTLP holds, but not these values: an int beyond 64 bits, a string with a lone
    # surrogate (code may set either on a request's span). Only they are left out, not the
    # span, nor the other spans of the export.
    refused = {"fine": 1, "huge": 2**70, "surrogate": "a\udc80", "after": "x"}
    spans = [
        span("refused values", attributes=refused),
        span("in an event", events=[Event("e", {"huge": -(2**64), "kept": 2}, timestamp=5)]),
        span("in a link", links=[Link(context(0x1, 0x2), {"surrogate": "\udc80", "k": 1.5})]),
        span("unharmed"),
    ]
    with caplog.at_level(logging.ERROR):
        ours = read(encode_spans(spans))
    assert ours == sdk_encode(spans)
    encoded = ours.resource_spans[0].scope_spans[0].spans
    assert [s.name for s in encoded] == ["refused values", "in an event", "in a link", "unharmed"]
    assert [kv.key for kv in encoded[0].attributes] == ["fine", "after"]
    assert [kv.key for kv in encoded[1].events[0].attributes] == ["kept"]
    assert [kv.key for kv in encoded[2].links[0].attributes] == ["k"]
    assert "Failed to encode key huge" in caplog.text
    assert "Failed to encode key surrogate" in caplog.text


def test_the_children_a_request_span_carries_are_written_as_their_own_spans() -> None:
    # Where loadonce's exporter is the only way out, a request's decode, queue wait and
    # encode travel inside its span: written out, they are the spans they stand for, as the
    # SDK's encoder writes those.
    state = TraceState([("vendor", "value")])
    batch = Link(context(0xFEED, 0x77))
    failed = Status(StatusCode.ERROR, "ValueError: bad body")
    model = {"loadonce.model": "m"}
    back = (batch,)
    unset = Status()
    children: list[Child] = [
        ("decode", 100, 200, None, (), (), unset),
        ("queue wait", 200, 300, model, back, (), unset),
        ("encode", 300, 400, None, (), [Event("exception", {"a": "b"}, 350)], failed),
    ]
    # Another request of the same call: its children share some of those objects (as the
    # requests of one call share the wait's attributes and link back), not others.
    other_children: list[Child] = [
        ("decode", 110, 210, None, (), (), unset),
        ("queue wait", 210, 300, model, back, (), unset),
        (
            "queue wait",
            210,
            300,
            {"loadonce.model": "n"},
            (Link(context(0xFEED, 0x78)),),
            (),
            unset,
        ),
        ("encode", 310, 410, None, (), (), Status(StatusCode.ERROR, "other")),
    ]
    # A child's span id is made by the exporter, with the provider's id generator.
    child_ids = [0x11, 0x12, 0x13, 0x21, 0x22, 0x23, 0x24]
    carriers: list[ReadableSpan] = []
    stood_for: list[ReadableSpan] = []
    ids = iter(child_ids)
    for span_id, carried in ((0x10, children), (0x20, other_children)):
        carrier_context = context(0xFEED, span_id, trace_state=state)
        carrier = FinishedSpan(
            name="POST /models/{name}/predict",
            context=carrier_context,
            parent=context(0xFEED, 0x9, remote=True),
            resource=RESOURCE,
            attributes={"http.route": "/models/{name}/predict"},
            kind=SpanKind.SERVER,
            start_time=50,
            end_time=450,
            instrumentation_scope=SCOPE,
        )
        carrier.children = carried
        carriers.append(carrier)
        stood_for.append(carrier)
        stood_for += [
            span(
                name,
                context=context(0xFEED, next(ids), trace_state=state),
                parent=carrier_context,
                start_time=start_ns,
                end_time=end_ns,
                attributes=attributes,
                links=links,
                events=events,
                status=status,
            )
            for name, start_ns, end_ns, attributes, links, events, status in carried
        ]
    alone = span("alone")
    assert encode_spans([*carriers, alone], iter(child_ids).__next__) == (
        sdk_encode([*stood_for, alone]).SerializeToString()
    )


@pytest.mark.parametrize(("exporter", "nests"), [("otlp", True), ("console", False)])
def test_children_travel_inside_only_where_loadonces_exporter_is_the_way_out(
    monkeypatch: pytest.MonkeyPatch, exporter: str, nests: bool
) -> None:
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", exporter)
    tracing = start_tracing(loadonce.TracingOptions(enabled=True))
    assert tracing is not None
    try:
        assert isinstance(tracing.writer, FinishedSpanWriter)
        assert tracing.writer.nests is nests
    finally:
        tracing.shutdown()
    # A provider of the user's: every span reaches its processors on its own.
    theirs = start_tracing(TracerProvider())
    assert theirs is not None
    assert isinstance(theirs.writer, FinishedSpanWriter)
    assert not theirs.writer.nests


def test_what_the_encoder_remembers_stays_small_whatever_spans_it_sees() -> None:
    # Names, keys and values repeat and are remembered; code may give every span a long name
    # and long values of its own: nothing of that size is kept after the export.
    def unusual(n: int) -> ReadableSpan:
        long = f"{n:08d}" * 1_250  # 10 kB
        return span(long, attributes={long: long, "n": n})

    encode_spans([unusual(n) for n in range(20)])  # what any first export keeps
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for start in range(0, 3_000, 500):
            encode_spans([unusual(n) for n in range(start, start + 500)])
        kept = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert kept < 2_000_000  # 30 MB of names and values went through
    again = [unusual(7), unusual(7)]
    assert encode_spans(again) == sdk_encode(again).SerializeToString()


def random_value(draw: random.Random, depth: int = 0) -> Any:
    """An attribute value of any kind OTLP holds, edges included: int64's ends, floats' odd
    values, text of every width, strings and bytes long enough for a multi-byte length."""
    kinds = ["str", "int", "float", "bool", "bytes", "none", "long"]
    if depth < 2:
        kinds += ["list", "dict"]
    kind = draw.choice(kinds)
    if kind == "str":
        return "".join(draw.choice("aé中🙂\x00\n") for _ in range(draw.randrange(0, 12)))
    if kind == "int":
        return draw.choice([0, 1, -1, 127, 128, 2**63 - 1, -(2**63), draw.getrandbits(40)])
    if kind == "float":
        return draw.choice([0.0, -0.0, 1.5, float("inf"), float("-inf"), float("nan"), 1e-300])
    if kind == "bool":
        return draw.random() < 0.5
    if kind == "bytes":
        return bytes(draw.getrandbits(8) for _ in range(draw.randrange(0, 6)))
    if kind == "long":
        return "x" * draw.choice([127, 128, 16383, 16384, 70_000])
    if kind == "list":
        return [random_value(draw, depth + 1) for _ in range(draw.randrange(0, 4))]
    if kind == "dict":
        return {f"k{i}": random_value(draw, depth + 1) for i in range(draw.randrange(0, 3))}
    return None


def random_span(draw: random.Random, number: int) -> ReadableSpan:
    def attributes() -> dict[str, Any]:
        return {f"key.{i}": random_value(draw) for i in range(draw.randrange(0, 5))}

    def some_context() -> SpanContext:
        remote = draw.random() < 0.3
        return context(draw.getrandbits(128) or 1, draw.getrandbits(64) or 1, remote=remote)

    return span(
        draw.choice(["", "n", "é" * 70, f"span {number}"]),
        context=some_context(),
        parent=draw.choice([None, some_context()]),
        kind=draw.choice(list(SpanKind)),
        attributes=attributes(),
        events=[
            Event(draw.choice(["", "e"]), attributes(), timestamp=draw.getrandbits(63))
            for _ in range(draw.randrange(0, 3))
        ],
        links=[Link(some_context(), attributes()) for _ in range(draw.randrange(0, 3))],
        status=draw.choice([Status(), Status(StatusCode.ERROR, "boom"), Status(StatusCode.OK)]),
        start_time=draw.choice([None, 0, draw.getrandbits(63)]),
        end_time=draw.choice([None, 0, 2**64 - 1]),
        resource=draw.choice([RESOURCE, Resource({"service.name": "other"})]),
        instrumentation_scope=draw.choice([SCOPE, OTHER_SCOPE, None]),
    )


def test_random_spans_of_every_shape_are_the_sdk_encoders_bytes() -> None:
    draw = random.Random(20261203)
    for round_ in range(40):
        spans = [random_span(draw, n) for n in range(draw.randrange(1, 12))]
        assert encode_spans(spans) == sdk_encode(spans).SerializeToString(), round_


def read(data: bytes) -> ExportTraceServiceRequest:
    request = ExportTraceServiceRequest()
    request.ParseFromString(data)
    return request


def test_a_name_that_is_not_unicode_text_costs_only_its_odd_characters() -> None:
    # Code may name a span (or an event) with a lone surrogate: the SDK's encoder would fail
    # the whole export; here the name keeps its other characters and nothing else changes.
    odd = span("a\udc80b", events=[Event("e\udc80", timestamp=5)])
    fine = span("fine")
    encoded = read(encode_spans([odd, fine])).resource_spans[0].scope_spans[0].spans
    assert [s.name for s in encoded] == ["a?b", "fine"]
    assert encoded[0].events[0].name == "e?"
    assert encoded[1] == sdk_encode([fine]).resource_spans[0].scope_spans[0].spans[0]


def served_spans() -> list[ReadableSpan]:
    """The spans of served requests: one that shared a batch of three, one that failed."""
    memory = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    gate = threading.Event()
    model = Doubler(gate)
    specs = [loadonce.ModelSpec(name="m", loader=lambda: model, batching={"max_batch_size": 8})]
    with (
        TestClient(loadonce.create_app(specs, tracing=provider)) as client,
        ThreadPoolExecutor(4) as pool,
    ):
        first = pool.submit(client.post, "/models/m/predict", json={"inputs": [1]})
        while not model.calls:
            threading.Event().wait(0.01)
        rest = [pool.submit(client.post, "/models/m/predict", json={"inputs": [x]}) for x in (2, 3)]
        queue = client.app.state.loadonce.registry.get("m").batcher  # type: ignore[attr-defined]
        while queue.queued_examples < 2:
            threading.Event().wait(0.01)
        gate.set()
        assert [f.result().status_code for f in [first, *rest]] == [200, 200, 200]
        assert client.post("/models/m/predict", json={"inputs": [13]}).status_code == 500
    return list(memory.get_finished_spans())


def test_served_requests_spans_are_encoded_as_the_sdk_encodes_them() -> None:
    spans = served_spans()
    names = {s.name for s in spans}
    assert {"model load", "decode", "queue wait", "batch", "predict", "encode"} <= names
    assert any(s.name == "batch" and len(s.links) == 2 for s in spans)
    assert any(e.name == "exception" for s in spans for e in s.events)
    assert encode_spans(spans) == sdk_encode(spans).SerializeToString()


def test_a_request_span_code_added_to_past_its_limits_is_encoded_as_the_sdk_encodes_it() -> None:
    # What a handler adds to the request's span (through the current span) is bounded by the
    # tracer's limits, its drops counted: encoded as the SDK's encoder reads them.
    provider = TracerProvider(
        resource=RESOURCE,
        span_limits=SpanLimits(max_events=2, max_links=2, max_span_attributes=2),
    )
    writer = FinishedSpanWriter(provider.get_tracer("tests"))  # type: ignore[arg-type]
    request = RecordedSpan(writer, "POST /x", context(0xAB, 0x2), None, SpanKind.SERVER)
    request.own_attributes["http.route"] = "/x"
    for n in range(3):
        request.set_attribute(f"user.{n}", n)
        request.add_event(f"event {n}", {"n": n})
        request.add_link(context(0xAB, 0x10 + n), {"n": n})
    request.set_status(StatusCode.ERROR, "bad")
    request.end()
    quiet = RecordedSpan(
        writer, "GET /y", context(0xAB, 0x3), context(0xAC, 0x4, remote=True), SpanKind.SERVER
    )
    quiet.end()
    assert (request.dropped_events, request.dropped_links, request.dropped_attributes) == (1, 1, 1)
    assert encode_spans([request, quiet]) == sdk_encode([request, quiet]).SerializeToString()


def test_the_exporter_sends_the_request_the_sdk_would_send(receiver: Receiver) -> None:
    exporter = DirectOtlpSpanExporter(endpoint=f"{receiver.url}/v1/traces")
    # With the SDK release loadonce pins, its encoding is swapped in, not the SDK's run.
    assert exporter.encodes_directly
    spans = every_kind_of_span()
    assert exporter.export(spans) is SpanExportResult.SUCCESS
    expected = [s for r in sdk_encode(spans).resource_spans for g in r.scope_spans for s in g.spans]
    assert [s for _, s in receiver.spans] == expected
    assert receiver.paths == ["/v1/traces"]
    exporter.shutdown()  # type: ignore[no-untyped-call]  # the SDK leaves it untyped
    assert exporter.export(spans) is SpanExportResult.FAILURE
    assert len(receiver.paths) == 1


def test_a_batch_over_the_size_limit_is_dropped_unsent(
    receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    exporter = DirectOtlpSpanExporter(endpoint=f"{receiver.url}/v1/traces", max_request_size=64)
    with caplog.at_level(logging.WARNING):
        assert exporter.export(every_kind_of_span()) is SpanExportResult.FAILURE
    assert receiver.paths == []
    assert "exceeds max_request_size 64 bytes" in caplog.text


def test_a_collector_that_refuses_is_an_export_failure() -> None:
    exporter = DirectOtlpSpanExporter(endpoint="http://127.0.0.1:9/v1/traces", timeout=2)
    assert exporter.export([span("nobody listens")]) is SpanExportResult.FAILURE
