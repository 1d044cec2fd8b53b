"""What encoding a span for OTLP costs, in-process: the SDK exporter's encoder against
loadonce's (``tracing/otlp_encoding.py``, protobuf's wire format written directly), on the
spans of served requests (the forest-free ``Doubler`` of ``tests/test_tracing.py``, every
request sampled, batches of up to 64), in batches of 512 as the batch span processor hands
them over, rounds alternating. Each figure is a batch's encoding to bytes, per span (the
median of the rounds).

Then the CPU time per request of the same app driven by raw ASGI calls, 64 at a time, every
request sampled, its spans handed to OpenTelemetry's batch span processor and from it to: an
exporter that drops them, the SDK's OTLP/HTTP exporter, loadonce's; the two send to an
OTLP/HTTP receiver in this process's thread that answers at once. Rounds alternate; the
process's CPU time (all its threads, the receiver's too) per request, median of the rounds.

    python -m bench.otlp_encoding [--rounds 15]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import threading
import time
from collections.abc import Callable, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx2 as httpx
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans as sdk_encode
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    SimpleSpanProcessor,
    SpanExporter,
    SpanExportResult,
)
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import loadonce
from loadonce.tracing.otlp_encoding import encode_spans
from loadonce.tracing.otlp_exporter import DirectOtlpSpanExporter

BATCH = 512


class Doubler:
    def predict(self, batch: list[Any]) -> list[Any]:
        return [2 * x for x in batch]


async def _served_spans(requests: int) -> list[ReadableSpan]:
    memory = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    spec = loadonce.ModelSpec(name="m", loader=Doubler, batching={"max_batch_size": 64})
    app = loadonce.create_app([spec], tracing=provider)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client,
    ):
        for start in range(0, requests, 64):
            await asyncio.gather(
                *(client.post("/models/m/predict", json={"inputs": [x]}) for x in range(64))
            )
            del start
    return [s for s in memory.get_finished_spans() if s.name != "model load"]


def _sdk_bytes(spans: Sequence[ReadableSpan]) -> bytes:
    data: bytes = sdk_encode(spans).SerializePartialToString()
    return data


def _per_span(
    encode: Callable[[Sequence[ReadableSpan]], bytes], batch: list[ReadableSpan]
) -> float:
    started = time.perf_counter()
    for _ in range(10):
        encode(batch)
    return (time.perf_counter() - started) / (10 * len(batch)) * 1e6


class _Receiver(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("content-length", 0)))
        self.send_response(200)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _Switch(SpanExporter):
    """Hands each batch to the exporter of the round."""

    def __init__(self, exporters: dict[str, SpanExporter | None]) -> None:
        self.exporters = exporters
        self.now = next(iter(exporters))

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        exporter = self.exporters[self.now]
        return SpanExportResult.SUCCESS if exporter is None else exporter.export(spans)


async def _cpu_per_request(rounds: int, requests: int) -> dict[str, list[float]]:
    receiver = ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{receiver.server_address[1]}/v1/traces"
    switch = _Switch(
        {
            "dropped": None,
            "SDK exporter": OTLPSpanExporter(endpoint=url),
            "direct (loadonce)": DirectOtlpSpanExporter(endpoint=url),
        }
    )
    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(switch))
    spec = loadonce.ModelSpec(name="m", loader=Doubler, batching={"max_batch_size": 64})
    app = loadonce.create_app([spec], tracing=provider)
    names = list(switch.exporters)
    figures: dict[str, list[float]] = {name: [] for name in names}
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client,
    ):

        async def serve(count: int) -> None:
            for _ in range(count // 64):
                await asyncio.gather(
                    *(client.post("/models/m/predict", json={"inputs": [x]}) for x in range(64))
                )

        await serve(2048)
        provider.force_flush()
        for round_ in range(rounds):
            for name in names[round_ % 3 :] + names[: round_ % 3]:
                switch.now = name
                started = time.process_time()
                await serve(requests)
                provider.force_flush()
                figures[name].append((time.process_time() - started) / requests * 1e6)
    provider.shutdown()
    receiver.shutdown()
    return figures


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args(argv)
    spans = asyncio.run(_served_spans(2048))
    batch = spans[:BATCH]
    assert encode_spans(batch) == _sdk_bytes(batch)
    encoders = {"SDK encoder": _sdk_bytes, "direct (loadonce)": encode_spans}
    figures: dict[str, list[float]] = {name: [] for name in encoders}
    for round_ in range(args.rounds):
        for name in list(encoders)[round_ % 2 :] + list(encoders)[: round_ % 2]:
            figures[name].append(_per_span(encoders[name], batch))
    names = sorted({s.name for s in batch})
    print(f"{len(batch)} spans of served requests ({', '.join(names)}), {args.rounds} rounds")
    for name, values in figures.items():
        print(f"{name}: {statistics.median(values):.1f} µs a span (median)")
    served = asyncio.run(_cpu_per_request(args.rounds, 1536))
    print(f"CPU per request, every request sampled, {args.rounds} rounds of 1,536 requests:")
    for name, values in served.items():
        print(f"spans {name}: {statistics.median(values):.0f} µs (median)")


if __name__ == "__main__":
    main()
