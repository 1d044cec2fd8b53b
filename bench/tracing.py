"""`make bench-tracing`: what OpenTelemetry tracing costs, in one run: loadonce serving the
random forest with batching at 64 connections, tracing off, then on with 10% and with 100% of
requests sampled, spans exported over OTLP/HTTP to a receiver this script runs (it answers
every export at once, counting the spans' bytes: the cost measured is loadonce's, not a
collector's).

The server runs pinned to core 0, wrk and the receiver to core 1; per variant a warm-up, then
two measured runs. Target (issue 21): at 10% sampling at most 5% fewer requests per second
than tracing off. Writes bench/results/tracing.json and .md.

    python -m bench.tracing [--quick] [--seconds 15]
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import json
import shutil
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from bench import wrk
from bench.compare import cpu_name
from bench.models import build
from bench.servers import LOAD_CORE, RESULTS, ROOT, SERVER_CORE, free_port, launch, serving

CONNECTIONS = 64
TARGET_LOSS_AT_10_PERCENT = 0.05
VARIANTS = [("off", None), ("10%", 0.1), ("100%", 1.0)]


class _Receiver(BaseHTTPRequestHandler):
    """An OTLP/HTTP endpoint that takes every export and answers 200 at once."""

    exports = 0
    received_bytes = 0

    def do_POST(self) -> None:
        length = int(self.headers.get("content-length", 0))
        self.rfile.read(length)
        type(self).exports += 1
        type(self).received_bytes += length
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


def tracing_env(ratio: float | None, endpoint: str) -> dict[str, str]:
    """The server's environment for one variant: the standard OpenTelemetry variables."""
    if ratio is None:
        return {"OTEL_SDK_DISABLED": "true"}
    return {
        "LOADONCE_TRACING": "true",
        "OTEL_SERVICE_NAME": "loadonce-bench",
        "OTEL_TRACES_EXPORTER": "otlp",
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/protobuf",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": endpoint,
        "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
        "OTEL_TRACES_SAMPLER_ARG": f"{ratio:g}",
    }


def _progress(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _measure(artifact: Path, row: list[float], ratio: float | None, endpoint: str,
             args: argparse.Namespace, step: str) -> dict[str, Any]:  # fmt: skip
    how = launch("a", artifact, row, free_port())
    env = {"PYTHONPATH": str(ROOT / "src"), **tracing_env(ratio, endpoint)}
    exports_before = _Receiver.exports
    with serving(f"tracing-{ratio}", how, artifact, env=env) as server:
        _progress(f"{step}: warm-up {args.warmup:g} s")
        wrk.run(server.url, server.body, connections=CONNECTIONS, seconds=args.warmup,
                core=LOAD_CORE)  # fmt: skip
        runs = []
        for attempt in range(args.runs):
            result = wrk.run(server.url, server.body, connections=CONNECTIONS,
                             seconds=args.seconds, core=LOAD_CORE)  # fmt: skip
            _progress(
                f"{step} run {attempt + 1}/{args.runs}: {result.req_per_s:,.0f} req/s, "
                f"p50 {result.p50_ms} ms, p99 {result.p99_ms} ms, {result.errors} errors"
            )
            runs.append(result.as_dict())
        time.sleep(6)  # the batch exporter's schedule (5 s): what was sampled arrives
    return {"runs": runs, "exports": _Receiver.exports - exports_before}


def render(results: dict[str, Any]) -> str:
    versions = ", ".join(f"{name} {version}" for name, version in results["versions"].items())
    lines = [
        f"Run of {results['date']} on {results['cpu']}; the server on core {SERVER_CORE}, wrk "
        f"and the OTLP receiver on core {LOAD_CORE}; {CONNECTIONS} connections; per variant a "
        f"{results['warmup']:g} s warm-up, then {results['runs']} measured run(s) of "
        f"{results['seconds']:g} s. Versions: {versions}.",
        "",
        "| tracing | req/s (runs) | best req/s | p50 ms | p99 ms | errors | OTLP exports | "
        "req/s against off |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    off = results["best"]["off"]
    for name, _ in VARIANTS:
        measured = results["variants"][name]
        best = max(measured["runs"], key=lambda run: run["req_per_s"])
        runs = " / ".join(f"{run['req_per_s']:,.0f}" for run in measured["runs"])
        lines.append(
            f"| {name} | {runs} | {best['req_per_s']:,.0f} | {best['p50_ms']} | "
            f"{best['p99_ms']} | {sum(run['errors'] for run in measured['runs'])} | "
            f"{measured['exports']} | {best['req_per_s'] / off:.3f} |"
        )
    loss = 1 - results["best"]["10%"] / off
    verdict = "met" if loss <= TARGET_LOSS_AT_10_PERCENT else "missed"
    lines += ["", f"- 10% sampling: {100 * loss:.1f}% fewer req/s than off (target at most "
              f"{100 * TARGET_LOSS_AT_10_PERCENT:.0f}%: {verdict})"]  # fmt: skip
    return "\n".join(lines) + "\n"


def parse_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=15, help="each measured wrk run")
    parser.add_argument("--warmup", type=float, default=3, help="the warm-up before each")
    parser.add_argument("--runs", type=int, default=2, help="measured runs per variant")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 2 s runs, 1 run")
    args = parser.parse_args(argv)
    if args.quick:
        args.seconds, args.warmup, args.runs = 2, 1, 1
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_arguments(argv)
    if shutil.which("wrk") is None or shutil.which("taskset") is None:
        sys.exit("bench needs wrk and taskset: apt-get install wrk util-linux")
    RESULTS.mkdir(parents=True, exist_ok=True)
    receiver = ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    endpoint = f"http://127.0.0.1:{receiver.server_address[1]}/v1/traces"
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    variants: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as folder:
        artifact, row = build(Path(folder), ("forest",))["forest"]
        for step, (name, ratio) in enumerate(VARIANTS, start=1):
            label = f"[{step}/{len(VARIANTS)}] tracing {name}"
            variants[name] = _measure(artifact, list(row), ratio, endpoint, args, label)
    receiver.shutdown()
    best = {
        name: max(run["req_per_s"] for run in measured["runs"])
        for name, measured in variants.items()
    }
    versions = ["loadonce", "opentelemetry-sdk", "opentelemetry-exporter-otlp-proto-http"]
    results: dict[str, Any] = {
        "date": datetime.date.today().isoformat(),
        "cpu": cpu_name(),
        "seconds": args.seconds,
        "warmup": args.warmup,
        "runs": args.runs,
        "versions": {name: importlib.metadata.version(name) for name in versions},
        "variants": variants,
        "best": best,
    }
    (RESULTS / "tracing.json").write_text(json.dumps(results, indent=2))
    (RESULTS / "tracing.md").write_text(render(results))
    print(render(results))
    return results


if __name__ == "__main__":
    main()
