"""`make bench-tracing`: what OpenTelemetry tracing costs, in one run: loadonce serving the
random forest with batching at 64 connections, tracing off, then on with 10% and with 100% of
requests sampled, spans exported over OTLP/HTTP to a receiver this script runs (it answers
every export at once, counting the spans' bytes: the cost measured is loadonce's, not a
collector's). A fourth server samples every request and exports nothing
(``OTEL_TRACES_EXPORTER=none``): the spans are built on the serving thread and dropped, so its
row against the 100% row splits what building spans costs from what exporting them costs.

The servers run side by side, pinned to core 0 (an idle one costs nothing), wrk and the
receiver on core 1. Tracing off and 10% get ``--instances`` servers each (two by default):
two processes of the same code differ here by a few percent for as long as they run, as much
as the target, so the pair is compared as means over processes. After a warm-up of each, the
measured runs go round by round, each round one run of every server in turn: this machine's
speed drifts by more than the 5% measured here over a few minutes, and a round's runs share
its drift. Each round's 10% figure (its servers' mean) is compared with its own "off" figure;
the median of those ratios is the figure. Target (issue 21): at 10% sampling at most 5% fewer
requests per second than tracing off. Writes bench/results/tracing.json and .md.

    python -m bench.tracing [--quick] [--seconds 10] [--rounds 5] [--instances 2]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import functools
import importlib.metadata
import json
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import psutil

from bench import wrk
from bench.compare import cpu_name
from bench.models import build
from bench.servers import LOAD_CORE, RESULTS, ROOT, SERVER_CORE, free_port, launch, serving
from bench.side_by_side import in_turn

CONNECTIONS = 64
TARGET_LOSS_AT_10_PERCENT = 0.05
# (name, share of requests sampled, OTEL_TRACES_EXPORTER); None: tracing off.
VARIANTS = [
    ("off", None, "otlp"),
    ("10%", 0.1, "otlp"),
    ("100%", 1.0, "otlp"),
    ("100%, not exported", 1.0, "none"),
]


class _Receiver(BaseHTTPRequestHandler):
    """An OTLP/HTTP endpoint that takes every export and answers 200 at once, keeping the
    connection open as a collector does (HTTP/1.0, the handler's default, made the exporter
    resolve and connect again for every export)."""

    protocol_version = "HTTP/1.1"
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


def tracing_env(ratio: float | None, endpoint: str, exporter: str = "otlp") -> dict[str, str]:
    """The server's environment for one variant: the standard OpenTelemetry variables."""
    if ratio is None:
        return {"OTEL_SDK_DISABLED": "true"}
    return {
        "LOADONCE_TRACING": "true",
        "OTEL_SERVICE_NAME": "loadonce-bench",
        "OTEL_TRACES_EXPORTER": exporter,
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/protobuf",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": endpoint,
        "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
        "OTEL_TRACES_SAMPLER_ARG": f"{ratio:g}",
    }


def _progress(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def copies(name: str, instances: int) -> int:
    """How many servers run variant ``name``: ``instances`` for the pair the target compares
    (off and 10%), one for the others. Two processes of the same code differ here by a few
    percent for as long as they run (how their memory happens to be laid out), as much as the
    target: the pair's figures are means over processes."""
    return instances if name in ("off", "10%") else 1


def _measure_all(artifact: Path, row: list[float], endpoint: str,
                 args: argparse.Namespace) -> dict[str, Any]:  # fmt: skip
    """Every variant's servers started, warmed up, then measured round by round: in each
    round every server runs once, and a variant's figures are its servers' means."""
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name, _, _ in VARIANTS}
    with contextlib.ExitStack() as stack:
        servers = {}
        for number, (name, ratio, exporter) in enumerate(VARIANTS):
            for copy in range(copies(name, args.instances)):
                how = launch("a", artifact, row, free_port())
                env = {"PYTHONPATH": str(ROOT / "src"), **tracing_env(ratio, endpoint, exporter)}
                started = serving(f"tracing-{number}-{copy}", how, artifact, env=env)
                servers[name, copy] = stack.enter_context(started)
                _progress(f"tracing {name} #{copy + 1}: warm-up {args.warmup:g} s")
                wrk.run(servers[name, copy].url, servers[name, copy].body,
                        connections=CONNECTIONS, seconds=args.warmup, core=LOAD_CORE)  # fmt: skip
        time.sleep(6)  # the warm-up's spans exported (the batch exporter's schedule: 5 s)
        exports_before = _Receiver.exports
        for round_ in range(1, args.rounds + 1):
            measured: dict[str, list[dict[str, Any]]] = {name: [] for name in runs}
            for name, copy in in_turn(list(servers), round_):
                running = servers[name, copy]
                server = psutil.Process(running.process.pid)
                cpu_before, loop_before = _cpu_seconds(server), _loop_thread_seconds(server)
                result = wrk.run(running.url, running.body, connections=CONNECTIONS,
                                 seconds=args.seconds, core=LOAD_CORE)  # fmt: skip
                answered = result.req_per_s * args.seconds
                cpu_us = (_cpu_seconds(server) - cpu_before) / max(answered, 1) * 1e6
                loop_us = (_loop_thread_seconds(server) - loop_before) / max(answered, 1) * 1e6
                _progress(
                    f"round {round_}/{args.rounds}, tracing {name} #{copy + 1}: "
                    f"{result.req_per_s:,.0f} req/s, p50 {result.p50_ms} ms, p99 "
                    f"{result.p99_ms} ms, {result.errors} errors, {cpu_us:.0f} µs of CPU per "
                    f"request ({loop_us:.0f} on the event loop's thread)"
                )
                measured[name].append(
                    {**result.as_dict(), "cpu_us_per_request": cpu_us, "loop_us": loop_us}
                )
            for name, of_servers in measured.items():
                runs[name].append(_mean_of(of_servers))
        time.sleep(6)  # what was sampled arrives
    return {"runs": runs, "exports": _Receiver.exports - exports_before}


def _mean_of(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One round of a variant: its servers' runs, averaged (errors summed); each server's
    req/s kept."""
    mean = {
        key: statistics.fmean(run[key] or 0.0 for run in runs)
        for key in ("req_per_s", "p50_ms", "p99_ms", "cpu_us_per_request", "loop_us")
    }
    return {
        **mean,
        "errors": sum(run["errors"] for run in runs),
        "servers_req_per_s": [run["req_per_s"] for run in runs],
    }


def _loop_thread_seconds(server: psutil.Process) -> float:
    """The CPU time of the server's main thread, its event loop's (its id is the process's);
    the rest is the model's thread's and the span exporter's."""
    for thread in server.threads():
        if thread.id == server.pid:
            return thread.user_time + thread.system_time
    return 0.0


def _cpu_seconds(server: psutil.Process) -> float:
    """The server's CPU time so far, its threads' and its children's."""
    times = server.cpu_times()
    return times.user + times.system + times.children_user + times.children_system


def ratios(runs: dict[str, list[dict[str, Any]]], name: str) -> list[float]:
    """Each round's req/s of variant ``name`` against the same round's tracing off."""
    return [
        run["req_per_s"] / off["req_per_s"]
        for run, off in zip(runs[name], runs["off"], strict=True)
    ]


def render(results: dict[str, Any]) -> str:
    versions = ", ".join(f"{name} {version}" for name, version in results["versions"].items())
    runs = results["runs"]
    instances = results.get("instances", 1)
    lines = [
        f"Run of {results['date']} on {results['cpu']}; the servers side by side on core "
        f"{SERVER_CORE} ({instances} each for off and 10%, one for the others), wrk and the "
        f"OTLP receiver on core {LOAD_CORE}; {CONNECTIONS} connections; a "
        f"{results['warmup']:g} s warm-up each, then {results['rounds']} rounds of one "
        f"{results['seconds']:g} s run per server; a variant's figure in a round is its "
        f"servers' mean. {results['exports']} OTLP exports received. Versions: {versions}.",
        "",
        "| tracing | req/s per round (servers' mean) | median req/s | median p50 ms | "
        "median p99 ms | errors | "
        "server CPU µs per request (median) | of which the event loop's thread | "
        "req/s against off (median of rounds) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, _, _ in VARIANTS:
        measured = runs[name]
        per_round = " / ".join(f"{run['req_per_s']:,.0f}" for run in measured)
        median = statistics.median(run["req_per_s"] for run in measured)
        p50 = statistics.median(run["p50_ms"] for run in measured)
        p99 = statistics.median(run["p99_ms"] for run in measured)
        errors = sum(run["errors"] for run in measured)
        against = statistics.median(ratios(runs, name))
        cpu = statistics.median(run["cpu_us_per_request"] for run in measured)
        loop = statistics.median(run["loop_us"] for run in measured)
        lines.append(
            f"| {name} | {per_round} | {median:,.0f} | {p50:.2f} | {p99:.2f} | {errors} | "
            f"{cpu:.0f} | {loop:.0f} | {against:.3f} |"
        )
    loss = 1 - statistics.median(ratios(runs, "10%"))
    verdict = "met" if loss <= TARGET_LOSS_AT_10_PERCENT else "missed"
    target = f"{100 * TARGET_LOSS_AT_10_PERCENT:.0f}%"
    lines += [
        "",
        f"- 10% sampling: {100 * loss:.1f}% fewer req/s than off, median of the rounds "
        f"(target at most {target}: {verdict})",
    ]
    return "\n".join(lines) + "\n"


def on_the_forest(measure: Callable[[Path, list[float], str], dict[str, Any]]) -> dict[str, Any]:
    """``measure(artifact, row, endpoint)`` on the random forest, built in a temporary folder,
    with this script's OTLP receiver listening at ``endpoint``."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    receiver = ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    endpoint = f"http://127.0.0.1:{receiver.server_address[1]}/v1/traces"
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    try:
        with tempfile.TemporaryDirectory() as folder:
            artifact, row = build(Path(folder), ("forest",))["forest"]
            return measure(artifact, list(row), endpoint)
    finally:
        receiver.shutdown()


def versions() -> dict[str, str]:
    """The versions a run's figures depend on."""
    names = ["loadonce", "opentelemetry-sdk", "opentelemetry-exporter-otlp-proto-http"]
    return {name: importlib.metadata.version(name) for name in names}


def parse_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10, help="each measured wrk run")
    parser.add_argument("--warmup", type=float, default=3, help="each server's warm-up")
    parser.add_argument("--rounds", type=int, default=5, help="rounds of one run per variant")
    parser.add_argument(
        "--instances", type=int, default=2, help="servers each for tracing off and 10%%"
    )
    parser.add_argument("--quick", action="store_true", help="a smoke run: 2 s runs, 1 round")
    args = parser.parse_args(argv)
    if args.quick:
        args.seconds, args.warmup, args.rounds, args.instances = 2, 1, 1, 1
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_arguments(argv)
    if shutil.which("wrk") is None or shutil.which("taskset") is None:
        sys.exit("bench needs wrk and taskset: apt-get install wrk util-linux")
    measured = on_the_forest(functools.partial(_measure_all, args=args))
    results: dict[str, Any] = {
        "date": datetime.date.today().isoformat(),
        "cpu": cpu_name(),
        "seconds": args.seconds,
        "warmup": args.warmup,
        "rounds": args.rounds,
        "instances": args.instances,
        "versions": versions(),
        **measured,
        "loss_at_10_percent": 1 - statistics.median(ratios(measured["runs"], "10%")),
    }
    (RESULTS / "tracing.json").write_text(json.dumps(results, indent=2))
    (RESULTS / "tracing.md").write_text(render(results))
    print(render(results))
    return results


if __name__ == "__main__":
    main()
