"""OpenTelemetry tracing, in process: a request's spans form one trace (request, decode, queue
wait, batch, predict, encode), a caller's traceparent is continued, the batch span links to
every request it carried, errors are recorded on their span, loads are traced and log lines
carry the ids. The spans are read from the SDK's in-memory exporter."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.id_generator import IdGenerator
from opentelemetry.trace import StatusCode

import loadonce
from tests.servers import ThreadedServer, free_port, wait_until

CALLER_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN = "00f067aa0ba902b7"


class Doubler:
    """Doubles each number; with a gate, each call waits for the test to open it."""

    def __init__(self, gate: threading.Event | None = None) -> None:
        self.gate = gate
        self.calls: list[list[Any]] = []

    def predict(self, batch: list[Any]) -> list[Any]:
        self.calls.append(list(batch))
        if self.gate is not None:
            assert self.gate.wait(30), "the test never opened the gate"
        if any(x == 13 for x in batch):
            raise RuntimeError("unlucky number")
        return [2 * x for x in batch]


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


def traced_app(
    exporter: InMemorySpanExporter, model: Doubler, *, api_only: bool = False, **spec: Any
) -> Any:
    provider: Any = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    if api_only:
        provider = ApiOnlyProvider(provider)
    specs = [loadonce.ModelSpec(name="m", loader=lambda: model, **spec)]
    return loadonce.create_app(specs, tracing=provider)


class ApiOnlyProvider(trace.TracerProvider):
    """A tracer provider that is not the SDK's (as a vendor's own implementation of the API
    would be): loadonce's spans go through the API's start_span and end."""

    def __init__(self, inner: TracerProvider) -> None:
        self.inner = inner

    def get_tracer(self, *args: Any, **kwargs: Any) -> trace.Tracer:
        return ApiOnlyTracer(self.inner.get_tracer(*args, **kwargs))


class ApiOnlyTracer(trace.Tracer):
    def __init__(self, inner: trace.Tracer) -> None:
        self.inner = inner

    def start_span(self, *args: Any, **kwargs: Any) -> trace.Span:
        return self.inner.start_span(*args, **kwargs)

    def start_as_current_span(self, *args: Any, **kwargs: Any) -> Any:
        return self.inner.start_as_current_span(*args, **kwargs)


def by_name(spans: Any) -> dict[str, list[ReadableSpan]]:
    found: dict[str, list[ReadableSpan]] = {}
    for span in spans:
        found.setdefault(span.name, []).append(span)
    return found


def parent_of(span: ReadableSpan) -> int | None:
    return span.parent.span_id if span.parent is not None else None


@pytest.mark.parametrize("api_only", [False, True], ids=["sdk-provider", "api-only-provider"])
def test_a_requests_spans_form_one_trace(exporter: InMemorySpanExporter, api_only: bool) -> None:
    with TestClient(traced_app(exporter, Doubler(), api_only=api_only)) as client:
        exporter.clear()  # the load's span
        answer = client.post(
            "/models/m/predict", json={"inputs": [1, 2]}, headers={"X-Request-ID": "r-1"}
        )
        assert answer.status_code == 200
    spans = by_name(exporter.get_finished_spans())
    request = spans["POST /models/{name}/predict"][0]
    assert request.attributes is not None
    assert request.attributes["loadonce.request_id"] == "r-1"
    assert request.attributes["http.response.status_code"] == 200
    trace_id = request.context.trace_id
    for name in ("decode", "queue wait", "batch", "predict", "encode"):
        assert spans[name][0].context.trace_id == trace_id, name
    request_id = request.context.span_id
    for name in ("decode", "queue wait", "batch", "encode"):
        assert parent_of(spans[name][0]) == request_id, name
    batch = spans["batch"][0]
    assert parent_of(spans["predict"][0]) == batch.context.span_id
    assert batch.attributes is not None
    assert batch.attributes["loadonce.batch.size"] == 2
    assert [link.context.span_id for link in batch.links] == [request_id]
    queued, predicted = spans["queue wait"][0], spans["predict"][0]
    assert queued.end_time is not None
    assert predicted.start_time is not None
    assert queued.end_time <= predicted.start_time


class CountingIds(IdGenerator):
    """Ids an operator's generator makes (as AWS X-Ray's does, with a time in them)."""

    def __init__(self) -> None:
        self.made = 0

    def generate_span_id(self) -> int:
        self.made += 1
        return 0x5000 + self.made

    def generate_trace_id(self) -> int:
        self.made += 1
        return 0x7000_0000 + self.made


def test_the_providers_id_generator_makes_every_id(exporter: InMemorySpanExporter) -> None:
    provider = TracerProvider(id_generator=CountingIds())
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    specs = [loadonce.ModelSpec(name="m", loader=lambda: Doubler())]
    with TestClient(loadonce.create_app(specs, tracing=provider)) as client:
        exporter.clear()
        assert client.post("/models/m/predict", json={"inputs": [1]}).status_code == 200
    spans = exporter.get_finished_spans()
    assert len(spans) == 6  # the request, decode, queue wait, batch, predict, encode
    (trace_id,) = {s.context.trace_id for s in spans}
    assert 0x7000_0000 < trace_id < 0x7000_1000
    span_ids = {s.context.span_id for s in spans}
    assert len(span_ids) == 6
    assert all(0x5000 < span_id < 0x6000 for span_id in span_ids)


def test_a_traceparent_continues_the_callers_trace(exporter: InMemorySpanExporter) -> None:
    with TestClient(traced_app(exporter, Doubler())) as client:
        exporter.clear()
        traceparent = f"00-{CALLER_TRACE}-{CALLER_SPAN}-01"
        client.post("/v2/models/m/infer", json=_tensor([1.0]), headers={"traceparent": traceparent})
    spans = by_name(exporter.get_finished_spans())
    request = spans["POST /v2/models/{model_name}/infer"][0]
    assert format(request.context.trace_id, "032x") == CALLER_TRACE
    assert request.parent is not None
    assert format(request.parent.span_id, "016x") == CALLER_SPAN
    assert {format(s.context.trace_id, "032x") for s in exporter.get_finished_spans()} == {
        CALLER_TRACE
    }


_PARENT = f"00-{CALLER_TRACE}-{CALLER_SPAN}-01"
_OTHER_PARENT = f"00-{'1' * 32}-{CALLER_SPAN}-01"
# What W3C Trace Context's test suite (w3c/trace-context test/test.py) sends, and whether the
# caller's trace is continued and with which tracestate ("" : none). Header names as sent.
_TRACE_CONTEXT_CASES = [
    ("one traceparent", [("traceparent", _PARENT)], True, ""),
    ("its name in capitals", [("TraceParent", _PARENT)], True, ""),
    (
        "two traceparent headers",
        [("traceparent", _OTHER_PARENT), ("traceparent", _PARENT)],
        False,
        "",
    ),
    ("a future version", [("traceparent", "cc" + _PARENT[2:] + "-later")], True, ""),
    ("version ff", [("traceparent", "ff" + _PARENT[2:])], False, ""),
    ("version 00 with more", [("traceparent", _PARENT + "-more")], False, ""),
    ("an all-zero trace id", [("traceparent", f"00-{'0' * 32}-{CALLER_SPAN}-01")], False, ""),
    ("an all-zero parent id", [("traceparent", f"00-{CALLER_TRACE}-{'0' * 16}-01")], False, ""),
    ("capital hex digits", [("traceparent", _PARENT.upper())], False, ""),
    ("an overlong one", [("traceparent", _PARENT + "-" + "a" * 8000)], False, ""),
    (
        "tracestate in several headers",
        [
            ("traceparent", _PARENT),
            ("tracestate", "foo=1,bar=2"),
            ("tracestate", "rojo=1"),
            ("tracestate", "baz=3"),
        ],
        True,
        "foo=1,bar=2,rojo=1,baz=3",
    ),
    (
        "a key in two tracestate headers",
        [("traceparent", _PARENT), ("tracestate", "foo=1"), ("tracestate", "foo=2")],
        True,
        "",
    ),
    (
        "an empty tracestate after one",
        [("traceparent", _PARENT), ("tracestate", "foo=1"), ("tracestate", "")],
        True,
        "foo=1",
    ),
    ("tracestate without traceparent", [("tracestate", "foo=1")], False, ""),
]


@pytest.mark.parametrize(
    ("headers", "continued", "state"),
    [case[1:] for case in _TRACE_CONTEXT_CASES],
    ids=[case[0] for case in _TRACE_CONTEXT_CASES],
)
def test_trace_headers_are_read_as_w3c_trace_context_says(
    exporter: InMemorySpanExporter, headers: list[tuple[str, str]], continued: bool, state: str
) -> None:
    """Two traceparent headers continued the last one, and of several tracestate headers
    only the last was kept; the spec's test suite expects a new trace, and one list."""
    with TestClient(traced_app(exporter, Doubler())) as client:
        exporter.clear()
        answered = client.post("/models/m/predict", json={"inputs": [1]}, headers=headers)
        assert answered.status_code == 200
    (request,) = by_name(exporter.get_finished_spans())["POST /models/{name}/predict"]
    trace_id = format(request.context.trace_id, "032x")
    if continued:
        assert trace_id == CALLER_TRACE
        assert request.parent is not None
    else:
        assert trace_id not in (CALLER_TRACE, "1" * 32, "0" * 32)
        assert request.parent is None
    assert request.context.trace_state.to_header() == state


@pytest.mark.parametrize("traceparent", [None, _PARENT], ids=["sampled here", "caller's decision"])
def test_a_long_path_is_cut_in_the_requests_span(
    exporter: InMemorySpanExporter, traceparent: str | None
) -> None:
    """A client's 30 KB path was a 30 KB attribute: 2,048 spans in the export queue, 60 MB."""
    headers = {"traceparent": traceparent} if traceparent else {}
    with TestClient(traced_app(exporter, Doubler())) as client:
        exporter.clear()
        assert client.get("/" + "p" * 30_000, headers=headers).status_code == 404
    (request,) = exporter.get_finished_spans()
    assert request.attributes is not None
    assert request.attributes["url.path"] == "/" + "p" * 1_999


def test_a_refused_clients_traceparent_is_never_read(exporter: InMemorySpanExporter) -> None:
    """A request refused before the routes (no key) builds no span: a flood of 401s marked
    sampled was traced and exported, every one."""
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    specs = [loadonce.ModelSpec(name="m", loader=Doubler)]
    keys = loadonce.AccessKeys(inference=("inference-key-0123456789",))
    app = loadonce.create_app(specs, tracing=provider, access=keys)
    with TestClient(app) as client:
        exporter.clear()
        traceparent = f"00-{CALLER_TRACE}-{CALLER_SPAN}-01"
        refused = client.post(
            "/models/m/predict", json={"inputs": [1]}, headers={"traceparent": traceparent}
        )
        assert refused.status_code == 401
        assert exporter.get_finished_spans() == ()


def test_a_malformed_tracestate_writes_no_log_line(
    exporter: InMemorySpanExporter,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """OpenTelemetry warned about each bad member of a client's tracestate: 8 KB of it made
    a warning of 8 KB, one per request. The trace is continued, the tracestate dropped.
    (Records without their thread's id, as server mode makes them.)"""
    monkeypatch.setattr(logging, "logThreads", False)
    caplog.set_level(logging.WARNING)
    with TestClient(traced_app(exporter, Doubler())) as client:
        exporter.clear()
        headers = {
            "traceparent": f"00-{CALLER_TRACE}-{CALLER_SPAN}-01",
            "tracestate": "not valid! " * 800,
        }
        answered = client.post("/models/m/predict", json={"inputs": [1]}, headers=headers)
        assert answered.status_code == 200
    assert not [r for r in caplog.records if r.name.startswith("opentelemetry")], caplog.text
    spans = by_name(exporter.get_finished_spans())
    assert format(spans["POST /models/{name}/predict"][0].context.trace_id, "032x") == CALLER_TRACE


def test_the_batch_span_links_to_every_request_it_carried(exporter: InMemorySpanExporter) -> None:
    gate = threading.Event()
    model = Doubler(gate)
    app = traced_app(exporter, model, batching={"max_batch_size": 8})
    with TestClient(app) as client, ThreadPoolExecutor(4) as pool:
        exporter.clear()
        first = pool.submit(client.post, "/models/m/predict", json={"inputs": [1]})
        wait_until(lambda: model.calls, 10, "the first call to start")
        # While the model is busy, three more requests queue: they share the next call.
        rest = [
            pool.submit(client.post, "/models/m/predict", json={"inputs": [x]}) for x in (2, 3, 4)
        ]
        queue = app.state.loadonce.registry.get("m").batcher
        wait_until(lambda: queue.queued_examples == 3, 10, "three requests to queue")
        gate.set()
        assert all(f.result().status_code == 200 for f in [first, *rest])
    assert [sorted(call) for call in model.calls] == [[1], [2, 3, 4]]
    spans = exporter.get_finished_spans()
    requests = {s.context.span_id: s for s in spans if s.name.startswith("POST")}
    shared = next(s for s in by_name(spans)["batch"] if len(s.links) == 3)
    assert shared.attributes is not None
    assert shared.attributes["loadonce.batch.size"] == 3
    linked = {link.context.span_id for link in shared.links}
    assert linked <= set(requests)
    assert len(linked) == 3
    # Each carried request's wait links back to the batch.
    waits = [s for s in by_name(spans)["queue wait"] if parent_of(s) in linked]
    assert len(waits) == 3
    assert all(w.links[0].context.span_id == shared.context.span_id for w in waits)


@pytest.mark.parametrize("api_only", [False, True], ids=["sdk-provider", "api-only-provider"])
def test_an_error_is_recorded_on_its_span(exporter: InMemorySpanExporter, api_only: bool) -> None:
    with TestClient(traced_app(exporter, Doubler(), api_only=api_only)) as client:
        exporter.clear()
        answer = client.post("/models/m/predict", json={"inputs": [13]})
        assert answer.status_code == 500
        assert "Traceback" not in answer.text
    spans = by_name(exporter.get_finished_spans())
    for name in ("POST /models/{name}/predict", "batch"):
        span = spans[name][0]
        assert span.status.status_code is StatusCode.ERROR, name
        assert any(event.name == "exception" for event in span.events), name
    assert spans["predict"][0].status.status_code is StatusCode.ERROR


def test_loads_and_reloads_are_traced(exporter: InMemorySpanExporter) -> None:
    with TestClient(traced_app(exporter, Doubler())) as client:
        assert [s.name for s in exporter.get_finished_spans()] == ["model load"]
        exporter.clear()
        assert client.post("/admin/models/m/reload").status_code == 200
    spans = by_name(exporter.get_finished_spans())
    reload = spans["model reload"][0]
    assert reload.attributes is not None
    assert reload.attributes["loadonce.model"] == "m"
    # Under the control request's span, in its trace.
    request = next(s for s in exporter.get_finished_spans() if s.name.startswith("POST"))
    assert parent_of(reload) == request.context.span_id


def test_log_lines_carry_the_trace_and_span_ids(
    exporter: InMemorySpanExporter, caplog: pytest.LogCaptureFixture
) -> None:
    with TestClient(traced_app(exporter, Doubler())) as client:
        exporter.clear()
        with caplog.at_level(logging.INFO, logger="loadonce.access"):
            client.post("/models/m/predict", json={"inputs": [1]})
    request = next(s for s in exporter.get_finished_spans() if s.name.startswith("POST"))
    line = next(r for r in caplog.records if r.name == "loadonce.access")
    assert getattr(line, "trace_id", None) == format(request.context.trace_id, "032x")
    assert getattr(line, "span_id", None) == format(request.context.span_id, "016x")


def test_a_handlers_own_attributes_and_events_on_the_request_span_are_exported(
    exporter: InMemorySpanExporter,
) -> None:
    # The request's span is the current span in a route of the user's own: what the route
    # sets on it goes through OpenTelemetry's attribute checks, as on the SDK's own span (a
    # list is kept as the tuple it copies it to).
    app: FastAPI = traced_app(exporter, Doubler())

    @app.get("/whoami")
    def whoami() -> dict[str, str]:
        span = trace.get_current_span()
        span.set_attribute("shop.user", "u-7")
        span.set_attribute("shop.tags", ["new", "eu"])
        span.add_event("cache miss", {"shop.key": "k-1"})
        return {"user": "u-7"}

    with TestClient(app) as client:
        exporter.clear()
        assert client.get("/whoami").status_code == 200
    (request,) = [s for s in exporter.get_finished_spans() if s.name.startswith("GET")]
    assert request.attributes is not None
    assert request.attributes["shop.user"] == "u-7"
    assert request.attributes["shop.tags"] == ("new", "eu")
    assert request.attributes["http.response.status_code"] == 200
    assert [(e.name, dict(e.attributes or {})) for e in request.events] == [
        ("cache miss", {"shop.key": "k-1"})
    ]


def test_a_handler_past_the_limits_is_counted_as_the_sdks_own_span_counts_it(
    exporter: InMemorySpanExporter,
) -> None:
    # What is left out over the limits (128 attributes, events, links) is said on the span,
    # with the same counts the SDK's own span reports for the same calls.
    def overflow(span: trace.Span) -> None:
        for n in range(130):
            span.set_attribute(f"shop.a{n}", n)
        for n in range(131):
            span.add_event(f"e{n}")
        for n in range(132):
            span.add_link(trace.SpanContext(7, n + 1, is_remote=False))

    app: FastAPI = traced_app(exporter, Doubler())

    @app.get("/busy")
    def busy() -> dict[str, str]:
        overflow(trace.get_current_span())
        return {}

    with TestClient(app) as client:
        exporter.clear()
        assert client.get("/busy").status_code == 200
    (request,) = [s for s in exporter.get_finished_spans() if s.name.startswith("GET")]
    with trace.get_tracer("t", tracer_provider=TracerProvider()).start_span("sdk") as own:
        overflow(own)
    assert isinstance(own, ReadableSpan)
    counts = (own.dropped_attributes, own.dropped_events, own.dropped_links)
    assert counts == (2, 3, 4)
    assert (request.dropped_attributes, request.dropped_events, request.dropped_links) == counts
    assert len(request.events) == len(request.links) == 128


def test_the_operators_span_limits_hold_on_the_request_span_as_on_the_sdks(
    exporter: InMemorySpanExporter, monkeypatch: pytest.MonkeyPatch
) -> None:
    # OpenTelemetry's limit variables (read by the provider) bound what a handler adds to
    # the request's span: the count and the length of its values.
    monkeypatch.setenv("OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT", "3")
    monkeypatch.setenv("OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT", "4")
    monkeypatch.setenv("OTEL_SPAN_EVENT_COUNT_LIMIT", "2")

    def add(span: trace.Span) -> None:
        for n in range(5):
            span.set_attribute(f"shop.a{n}", "long value")
        span.record_exception(ValueError("long message"), {"k": "long value"})
        for n in range(4):
            span.add_event(f"e{n}", {"k": "long value"})

    app: FastAPI = traced_app(exporter, Doubler())

    @app.get("/add")
    def added() -> dict[str, str]:
        add(trace.get_current_span())
        return {}

    with TestClient(app) as client:
        exporter.clear()
        assert client.get("/add").status_code == 200
    (request,) = [s for s in exporter.get_finished_spans() if s.name.startswith("GET")]
    attributes = {k: v for k, v in (request.attributes or {}).items() if k.startswith("shop.")}
    assert attributes == {"shop.a2": "long", "shop.a3": "long", "shop.a4": "long"}
    assert (request.dropped_attributes, request.dropped_events) == (2, 3)
    # The newest events are kept (e2, e3), each value cut to 4 characters, as the SDK's own
    # span does with the same calls under the same variables.
    assert [(e.name, dict(e.attributes or {})) for e in request.events] == [
        ("e2", {"k": "long"}),
        ("e3", {"k": "long"}),
    ]
    with trace.get_tracer("t", tracer_provider=TracerProvider()).start_span("sdk") as own:
        add(own)
    assert isinstance(own, ReadableSpan)
    assert (own.dropped_attributes, own.dropped_events) == (2, 3)
    assert [(e.name, dict(e.attributes or {})) for e in own.events] == [
        (e.name, dict(e.attributes or {})) for e in request.events
    ]


class TenantOnStart(SimpleSpanProcessor):
    """A processor that stamps every span as it starts (as a baggage processor does)."""

    def on_start(self, span: Any, parent_context: Any = None) -> None:
        span.set_attribute("shop.tenant", "t-3")


def test_a_processor_sees_the_request_span_start(exporter: InMemorySpanExporter) -> None:
    provider = TracerProvider()
    provider.add_span_processor(TenantOnStart(exporter))
    app = loadonce.create_app([loadonce.ModelSpec(name="m", loader=Doubler)], tracing=provider)
    with TestClient(app) as client:
        exporter.clear()
        assert client.post("/models/m/predict", json={"inputs": [1]}).status_code == 200
    (request,) = [s for s in exporter.get_finished_spans() if s.name.startswith("POST")]
    assert request.attributes is not None
    assert request.attributes["shop.tenant"] == "t-3"
    assert request.attributes["http.response.status_code"] == 200


def test_sampled_out_requests_build_no_spans(exporter: InMemorySpanExporter) -> None:
    provider = TracerProvider(sampler=_never())
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    app = loadonce.create_app([loadonce.ModelSpec(name="m", loader=Doubler)], tracing=provider)
    with TestClient(app) as client:
        assert client.post("/models/m/predict", json={"inputs": [1]}).status_code == 200
    assert exporter.get_finished_spans() == ()


def _never() -> Any:
    from opentelemetry.sdk.trace.sampling import ALWAYS_OFF

    return ALWAYS_OFF


def _tensor(values: list[float]) -> dict[str, Any]:
    return {"inputs": [{"name": "x", "shape": [len(values)], "datatype": "FP64", "data": values}]}


@pytest.fixture(autouse=True)
def _no_leftover_factory() -> Iterator[None]:
    before = logging.getLogRecordFactory()
    yield
    assert logging.getLogRecordFactory() is before


def test_a_grpc_call_is_traced_and_continues_the_callers_trace(
    exporter: InMemorySpanExporter,
) -> None:
    import numpy as np
    import tritonclient.grpc as triton
    from tritonclient.utils import InferenceServerException

    from loadonce.protocols.grpc import grpc_lifespan

    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    port = free_port()
    specs = [loadonce.ModelSpec(name="m", loader=Doubler)]
    app = loadonce.create_app(specs, wrap=grpc_lifespan(port=port), tracing=provider)
    with ThreadedServer(app):
        exporter.clear()
        client = triton.InferenceServerClient(f"127.0.0.1:{port}")
        tensor = triton.InferInput("x", [2], "FP64")
        tensor.set_data_from_numpy(np.array([1.0, 2.0]))
        traceparent = f"00-{CALLER_TRACE}-{CALLER_SPAN}-01"
        client.infer("m", [tensor], headers={"traceparent": traceparent})
        tensor.set_data_from_numpy(np.array([13.0, 2.0]))
        with pytest.raises(InferenceServerException):
            client.infer("m", [tensor])
        client.close()
    calls = [s for s in exporter.get_finished_spans() if s.name.endswith("/ModelInfer")]
    assert len(calls) == 2
    continued, failed = sorted(calls, key=lambda s: s.start_time or 0)
    assert format(continued.context.trace_id, "032x") == CALLER_TRACE
    in_trace = {
        s.name
        for s in exporter.get_finished_spans()
        if s.context.trace_id == continued.context.trace_id
    }
    assert {"decode tensors", "queue wait", "batch", "predict", "encode"} <= in_trace
    assert failed.status.status_code is StatusCode.ERROR
    assert any(event.name == "exception" for event in failed.events)


def test_a_grpc_caller_refused_for_its_key_is_not_traced(exporter: InMemorySpanExporter) -> None:
    import numpy as np
    import tritonclient.grpc as triton
    from tritonclient.utils import InferenceServerException

    from loadonce.protocols.grpc import grpc_lifespan

    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    port = free_port()
    specs = [loadonce.ModelSpec(name="m", loader=Doubler)]
    keys = loadonce.AccessKeys(inference=("inference-key-0123456789",))
    app = loadonce.create_app(specs, wrap=grpc_lifespan(port=port), tracing=provider, access=keys)
    with ThreadedServer(app):
        exporter.clear()
        client = triton.InferenceServerClient(f"127.0.0.1:{port}")
        tensor = triton.InferInput("x", [1], "FP64")
        tensor.set_data_from_numpy(np.array([1.0]))
        traceparent = f"00-{CALLER_TRACE}-{CALLER_SPAN}-01"
        with pytest.raises(InferenceServerException, match="API key"):
            client.infer("m", [tensor], headers={"traceparent": traceparent})
        client.close()
    assert exporter.get_finished_spans() == ()


def _without_opentelemetry(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name.startswith("opentelemetry") else real(name, *a),
    )


def test_tracing_asked_for_without_the_extra_fails_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    _without_opentelemetry(monkeypatch)
    specs = [loadonce.ModelSpec(name="m", loader=Doubler)]
    with pytest.raises(loadonce.ConfigError, match=r"pip install 'loadonce\[otel\]'"):
        loadonce.lifespan(specs, tracing=loadonce.TracingOptions(enabled=True))


def test_an_otel_exporter_variable_without_the_extra_only_warns(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    _without_opentelemetry(monkeypatch)
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "otlp")
    options = loadonce.TracingOptions()
    assert options.active
    app = loadonce.create_app([loadonce.ModelSpec(name="m", loader=Doubler)], tracing=options)
    with caplog.at_level(logging.WARNING, logger="loadonce"), TestClient(app) as client:
        assert client.post("/models/m/predict", json={"inputs": [1]}).status_code == 200
        assert app.state.loadonce.tracing is None
    assert "OpenTelemetry is not installed" in caplog.text


def test_an_otlp_protocol_loadonce_does_not_export_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
    with pytest.raises(loadonce.ConfigError, match="OTLP over HTTP"):
        loadonce.lifespan(
            [loadonce.ModelSpec(name="m", loader=Doubler)],
            tracing=loadonce.TracingOptions(enabled=True),
        )


def test_the_tracing_table_under_its_variables_and_flag(monkeypatch: pytest.MonkeyPatch) -> None:
    from loadonce.server.settings import resolve_tracing_options

    monkeypatch.setenv("LOADONCE_TRACING_SAMPLE_RATIO", "0.1")
    monkeypatch.setenv("LOADONCE_TRACING_SERVICE_NAME", "from-env")
    table = {"enabled": True, "sample_ratio": 0.5, "endpoint": "http://collector:4318"}
    options = resolve_tracing_options(table, enabled=None)
    assert options == loadonce.TracingOptions(
        enabled=True, sample_ratio=0.1, endpoint="http://collector:4318", service_name="from-env"
    )
    assert not resolve_tracing_options(table, enabled=False).active
    monkeypatch.setenv("LOADONCE_TRACING_SAMPLE_RATIO", "2")
    with pytest.raises(loadonce.ConfigError, match="sample_ratio"):
        resolve_tracing_options({}, enabled=True)


def test_a_global_tracer_provider_does_not_trace_requests_twice(
    exporter: InMemorySpanExporter, monkeypatch: pytest.MonkeyPatch
) -> None:
    # FastAPI (0.165+) traces requests itself once a global provider is set (as
    # opentelemetry-instrument does): in loadonce's app, loadonce's span is the only one.
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    monkeypatch.setattr(trace, "get_tracer_provider", lambda: provider)
    app = loadonce.create_app([loadonce.ModelSpec(name="m", loader=Doubler)], tracing=provider)
    with TestClient(app) as client:
        exporter.clear()
        assert client.post("/models/m/predict", json={"inputs": [1]}).status_code == 200
    servers = [s for s in exporter.get_finished_spans() if s.kind is trace.SpanKind.SERVER]
    assert [s.name for s in servers] == ["POST /models/{name}/predict"]


@pytest.mark.parametrize(
    ("variables", "expected"),
    [
        ({}, "loadonce"),
        ({"OTEL_SERVICE_NAME": "ranker"}, "ranker"),
        # Kubernetes setups often give only this: its service.name was replaced by "loadonce".
        (
            {"OTEL_RESOURCE_ATTRIBUTES": "service.name=checkout,deployment.environment=prod"},
            "checkout",
        ),
    ],
)
def test_the_service_name_is_the_environments_when_it_gives_one(
    monkeypatch: pytest.MonkeyPatch, variables: dict[str, str], expected: str
) -> None:
    from loadonce.tracing.otel import provider_for

    for name in ("OTEL_SERVICE_NAME", "OTEL_RESOURCE_ATTRIBUTES"):
        monkeypatch.delenv(name, raising=False)
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    provider, _ = provider_for(loadonce.TracingOptions(enabled=True))
    try:
        assert provider.resource.attributes["service.name"] == expected
    finally:
        provider.shutdown()
