"""`make bench-request-log`: what the per-request log line costs under overload, in one run:
the demo (`loadonce serve --demo`, its defaults) at 512 connections with `--log-level info`
(a line per request, plain and JSON) against `--log-level warning` (no line).

The servers run side by side, pinned to core 0 (an idle one costs nothing), wrk on core 1,
each server's log into bench/results/server-*.log (a file, as a collector would read it).
After a warm-up of each, rounds of one run per variant (this machine's speed drifts; a
round's runs share its drift); each round's info run is compared with the same round's
warning run, and the median of those ratios is the figure. ``--before REV`` adds the same
info variant run from the loadonce of git revision REV (a temporary worktree), for a
before/after in the same run. Target (issue 22): info at most 5% fewer req/s than warning.
Writes bench/results/request_log.json and .md.

    python -m bench.request_log [--quick] [--seconds 10] [--rounds 5] [--before REV]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench import wrk
from bench.compare import cpu_name
from bench.servers import (
    LOAD_CORE,
    RESULTS,
    ROOT,
    SERVER_CORE,
    Launch,
    free_port,
    serving,
    tree_cpu_seconds,
)
from bench.side_by_side import in_turn

CONNECTIONS = 512
TARGET_LOSS = 0.05
DEMO_ROW = [5.1, 3.5, 1.4, 0.2]


def demo(level: str, log_format: str) -> Launch:
    port = free_port()
    command = [
        sys.executable, "-m", "loadonce", "serve", "--demo", "--port", str(port),
        "--log-level", level, "--log-format", log_format,
    ]  # fmt: skip
    body = json.dumps({"inputs": [DEMO_ROW]})
    return Launch(command, f"http://127.0.0.1:{port}/models/iris/predict", body)


@contextlib.contextmanager
def checkout(revision: str | None) -> Iterator[Path | None]:
    """The source tree of ``revision`` in a temporary worktree (None: none asked for)."""
    if revision is None:
        yield None
        return
    with tempfile.TemporaryDirectory() as folder:
        tree = Path(folder) / "before"
        subprocess.run(
            ["git", "worktree", "add", "--detach", str(tree), revision],
            cwd=ROOT, check=True, capture_output=True,
        )  # fmt: skip
        try:
            yield tree / "src"
        finally:
            subprocess.run(
                ["git", "worktree", "remove", "--force", str(tree)], cwd=ROOT, check=False
            )


def _progress(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def measure(args: argparse.Namespace) -> dict[str, Any]:
    variants: list[tuple[str, str, str, str | None]] = [
        ("warning", "warning", "plain", None),
        ("info", "info", "plain", None),
        ("info, json", "info", "json", None),
    ]
    if args.before:
        variants.append((f"info, {args.before}", "info", "plain", args.before))
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name, *_ in variants}
    with checkout(args.before) as before_src, contextlib.ExitStack() as stack:
        servers = {}
        for name, level, log_format, revision in variants:
            source = before_src if revision is not None else ROOT / "src"
            key = name.replace(", ", "-").replace(" ", "-")
            how = demo(level, log_format)
            env = {"PYTHONPATH": str(source)}
            servers[name] = stack.enter_context(serving(f"log-{key}", how, ROOT, env=env))
            _progress(f"{name}: warm-up {args.warmup:g} s")
            wrk.run(servers[name].url, servers[name].body, connections=CONNECTIONS,
                    seconds=args.warmup, core=LOAD_CORE)  # fmt: skip
        for round_ in range(1, args.rounds + 1):
            for name, *_ in in_turn(variants, round_):
                cpu_before = tree_cpu_seconds(servers[name].process.pid)
                result = wrk.run(servers[name].url, servers[name].body, connections=CONNECTIONS,
                                 seconds=args.seconds, core=LOAD_CORE)  # fmt: skip
                answered = max(result.req_per_s * args.seconds, 1)
                cpu_us = (tree_cpu_seconds(servers[name].process.pid) - cpu_before) / answered
                _progress(
                    f"round {round_}/{args.rounds}, {name}: {result.req_per_s:,.0f} req/s, "
                    f"p99 {result.p99_ms} ms, {result.errors} errors (not 2xx or socket), "
                    f"{cpu_us * 1e6:.0f} µs of CPU per request"
                )
                runs[name].append({**result.as_dict(), "cpu_us_per_request": cpu_us * 1e6})
    return {"variants": [name for name, *_ in variants], "runs": runs}


def ratio(runs: dict[str, list[dict[str, Any]]], name: str) -> float:
    """The median over rounds of variant ``name``'s req/s against the round's warning run."""
    pairs = zip(runs[name], runs["warning"], strict=True)
    return float(statistics.median(run["req_per_s"] / base["req_per_s"] for run, base in pairs))


def _cpu_per_request(runs: dict[str, list[dict[str, Any]]], name: str) -> float:
    """The median of variant ``name``'s CPU µs per request: steadier here than req/s, which
    the machine's other loads change from one run to the next."""
    return float(statistics.median(run["cpu_us_per_request"] for run in runs[name]))


def render(results: dict[str, Any]) -> str:
    runs = results["runs"]
    lines = [
        f"Run of {results['date']} on {results['cpu']}; the servers side by side on core "
        f"{SERVER_CORE}, wrk on core {LOAD_CORE}; {CONNECTIONS} connections; a "
        f"{results['warmup']:g} s warm-up each, then {results['rounds']} rounds of one "
        f"{results['seconds']:g} s run per variant.",
        "",
        "| log level | req/s per round | median req/s | median p99 ms | errors | "
        "req/s against warning (median of rounds) | server CPU µs per request (median) | "
        "CPU per request against warning |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name in results["variants"]:
        measured = runs[name]
        per_round = " / ".join(f"{run['req_per_s']:,.0f}" for run in measured)
        median = statistics.median(run["req_per_s"] for run in measured)
        p99 = statistics.median(run["p99_ms"] for run in measured)
        not_ok = sum(run["errors"] for run in measured)
        lines.append(
            f"| {name} | {per_round} | {median:,.0f} | {p99:.2f} | {not_ok} | "
            f"{ratio(runs, name):.3f} | {_cpu_per_request(runs, name):.0f} | "
            f"{_cpu_per_request(runs, name) / _cpu_per_request(runs, 'warning'):.3f} |"
        )
    loss = 1 - ratio(runs, "info")
    verdict = "met" if loss <= TARGET_LOSS else "missed"
    lines += [
        "",
        f"- info (plain): {100 * loss:.1f}% fewer req/s than warning, median of the rounds "
        f"(target at most {100 * TARGET_LOSS:.0f}%: {verdict})",
    ]
    return "\n".join(lines) + "\n"


def parse_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10, help="each measured wrk run")
    parser.add_argument("--warmup", type=float, default=3, help="each server's warm-up")
    parser.add_argument("--rounds", type=int, default=5, help="rounds of one run per variant")
    parser.add_argument("--before", metavar="REV", help="also the info variant of git REV")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 2 s runs, 1 round")
    args = parser.parse_args(argv)
    if args.quick:
        args.seconds, args.warmup, args.rounds = 2, 1, 1
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_arguments(argv)
    if shutil.which("wrk") is None or shutil.which("taskset") is None:
        sys.exit("bench needs wrk and taskset: apt-get install wrk util-linux")
    RESULTS.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {
        "date": datetime.date.today().isoformat(),
        "cpu": cpu_name(),
        "seconds": args.seconds,
        "warmup": args.warmup,
        "rounds": args.rounds,
        **measure(args),
    }
    results["info_loss"] = 1 - ratio(results["runs"], "info")
    (RESULTS / "request_log.json").write_text(json.dumps(results, indent=2))
    (RESULTS / "request_log.md").write_text(render(results))
    print(render(results))
    return results


if __name__ == "__main__":
    main()
