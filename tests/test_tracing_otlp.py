"""Tracing end to end: ``loadonce serve`` with a [tracing] table exports its spans over
OTLP/HTTP to a receiver this test runs, which decodes them with OpenTelemetry's protobuf
messages. A request's spans arrive as one trace, and the batch span links to every request
it carried."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx2 as httpx
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from tests.servers import cli_env, run_cli, serving

CALLER_TRACE = "0af7651916cd43dd8448eb211c80319c"


class Receiver(ThreadingHTTPServer):
    """An OTLP/HTTP receiver: keeps every span POSTed to /v1/traces, with its service name."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.spans: list[tuple[str, Any]] = []
        self.paths: list[str] = []
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(BaseHTTPRequestHandler):
    server: Receiver

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        message = ExportTraceServiceRequest()
        message.ParseFromString(body)
        with self.server.lock:
            self.server.paths.append(self.path)
            for resource_spans in message.resource_spans:
                service = next(
                    a.value.string_value
                    for a in resource_spans.resource.attributes
                    if a.key == "service.name"
                )
                for scope_spans in resource_spans.scope_spans:
                    self.server.spans.extend((service, span) for span in scope_spans.spans)
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


async def _three_at_once(url: str) -> list[httpx.Response]:
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        return await asyncio.gather(
            *(client.post("/models/echo/predict", json={"inputs": [x]}) for x in (1, 2, 3))
        )


def test_a_served_requests_spans_reach_the_collector_as_one_trace(
    tmp_path: Path, receiver: Receiver
) -> None:
    config = tmp_path / "serve.toml"
    config.write_text(
        f"""
[server]
log_format = "json"

[tracing]
enabled = true
endpoint = "{receiver.url}"
service_name = "otlp-test"
sample_ratio = 1.0

[[models]]
name = "echo"
loader = "tests.loaders:echo"
# A batch starts when three examples wait: the three requests below share one call.
batching = {{ max_batch_size = 3, max_wait_ms = 10000 }}
"""
    )
    with serving([str(config)], tmp_path, env=cli_env(tmp_path)) as server:
        answers = asyncio.run(_three_at_once(server.url))
        assert [a.status_code for a in answers] == [200, 200, 200]
    # Stopped: the worker's provider flushed what it held.
    assert set(receiver.paths) == {"/v1/traces"}
    assert {service for service, _ in receiver.spans} == {"otlp-test"}
    spans = [span for _, span in receiver.spans]
    requests = {s.span_id: s for s in spans if s.name == "POST /models/{name}/predict"}
    assert len(requests) == 3
    batch = next(s for s in spans if s.name == "batch" and len(s.links) == 3)
    assert {link.span_id for link in batch.links} == set(requests)
    sizes = {a.key: a.value.int_value for a in batch.attributes}
    assert sizes["loadonce.batch.size"] == 3
    # The batch is in the trace of the request it is a child of, with the phases of that one.
    parent = requests[batch.parent_span_id]
    in_trace = {s.name for s in spans if s.trace_id == parent.trace_id}
    assert {"decode", "queue wait", "batch", "predict", "encode"} <= in_trace
    (predict,) = [s for s in spans if s.name == "predict"]
    assert (predict.trace_id, predict.parent_span_id) == (batch.trace_id, batch.span_id)
    # Every request has its own phases below it, in its trace and its time, the wait linked
    # to the batch that carried it; no two spans share an id.
    assert len({s.span_id for s in spans}) == len(spans)
    for request in requests.values():
        below = {s.name: s for s in spans if s.parent_span_id == request.span_id}
        below.pop("batch", None)  # the batch is the child of the first request it carried
        assert set(below) == {"decode", "queue wait", "encode"}
        for child in below.values():
            assert child.trace_id == request.trace_id
            assert child.kind == child.SPAN_KIND_INTERNAL
            assert request.start_time_unix_nano <= child.start_time_unix_nano
            assert child.start_time_unix_nano <= child.end_time_unix_nano
            assert child.end_time_unix_nano <= request.end_time_unix_nano
        assert [link.span_id for link in below["queue wait"].links] == [batch.span_id]
        model = {a.key: a.value.string_value for a in below["queue wait"].attributes}
        assert model == {"loadonce.model": "echo"}
    # Each JSON log line of a request carries its trace and span ids.
    lines = [json.loads(line) for line in server.log().splitlines() if line.startswith("{")]
    access = [
        line
        for line in lines
        if line["logger"] == "loadonce.access" and line["path"] == "/models/echo/predict"
    ]
    assert {line["trace_id"] for line in access} == {r.trace_id.hex() for r in requests.values()}
    assert {line["span_id"] for line in access} == {r.span_id.hex() for r in requests.values()}


def test_tracing_asked_for_with_a_bad_option_is_one_line(tmp_path: Path) -> None:
    config = tmp_path / "serve.toml"
    config.write_text(
        '[tracing]\nsample_ratio = 2\n[[models]]\nname = "echo"\nloader = "tests.loaders:echo"\n'
    )
    result = run_cli(tmp_path, "serve", str(config))
    assert result.returncode == 2, result.stderr
    assert "[tracing]: sample_ratio" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_malformed_opentelemetry_span_limit_is_one_line(tmp_path: Path) -> None:
    # The request's span follows OpenTelemetry's limit variables: a malformed one stops the
    # server before any worker starts, with one line, as loadonce's own options do.
    config = tmp_path / "serve.toml"
    config.write_text(
        '[tracing]\nenabled = true\n[[models]]\nname = "echo"\nloader = "tests.loaders:echo"\n'
    )
    bad = {"OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT": "abc"}
    result = run_cli(tmp_path, "serve", str(config), env=bad)
    assert result.returncode == 2, result.stderr
    assert "OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT must be a non-negative integer" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_sample_ratio_traces_that_share_of_requests_and_follows_callers(
    tmp_path: Path, receiver: Receiver
) -> None:
    """sample_ratio 0.25: about a quarter of the requests without a traceparent are traced
    (60 requests: between 3 and 30, a bound a fair draw leaves less than once in 3,000 runs);
    a caller's decision is followed either way."""
    config = tmp_path / "serve.toml"
    config.write_text(
        f'[tracing]\nenabled = true\nendpoint = "{receiver.url}"\nsample_ratio = 0.25\n'
        '[[models]]\nname = "echo"\nloader = "tests.loaders:echo"\n'
    )
    caller = "00-" + CALLER_TRACE + "-b7ad6b7169203331-0{}"
    with (
        serving([str(config)], tmp_path, env=cli_env(tmp_path)) as server,
        httpx.Client(base_url=server.url) as client,
    ):
        for _ in range(60):
            assert client.post("/models/echo/predict", json={"inputs": [1]}).status_code == 200
        for flag in (1, 0):
            for _ in range(3):
                headers = {"traceparent": caller.format(flag)}
                answer = client.post("/models/echo/predict", json={"inputs": [1]}, headers=headers)
                assert answer.status_code == 200
        # A malformed traceparent is no caller's decision: the ratio applies, as without one.
        for i in range(60):
            headers = {"traceparent": "00-not-a-trace-01", "X-Request-ID": f"malformed-{i}"}
            answer = client.post("/models/echo/predict", json={"inputs": [1]}, headers=headers)
            assert answer.status_code == 200
    requests = [s for _, s in receiver.spans if s.name == "POST /models/{name}/predict"]
    followed = [s for s in requests if s.trace_id.hex() == CALLER_TRACE]
    assert len(followed) == 3
    malformed = [s for s in requests if _request_id(s).startswith("malformed-")]
    assert 3 <= len(malformed) <= 30
    assert 3 <= len(requests) - len(followed) - len(malformed) <= 30


def _request_id(span: Any) -> str:
    for attribute in span.attributes:
        if attribute.key == "loadonce.request_id":
            return str(attribute.value.string_value)
    return ""
