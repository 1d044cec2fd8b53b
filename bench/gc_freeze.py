"""`gc_freeze` off against on, side by side in one run: the forest with batching (one worker,
pinned to core 0), at 64 connections (wrk) and overloaded (open loop), with the collector's
pauses timed inside the server (``bench.gc_pauses``). A third variant freezes but keeps the
youngest generation's threshold near Python's 700 (701: a threshold the process chose, which
loadonce keeps), to show what raising it to 10,000 (``core/collector.py``) does.

    python -m bench.gc_freeze [--rounds 2] [--rate REQ_PER_S] [--seconds 20]

The settings alternate, round after round, so drift on a shared machine falls on both. The
overload rate defaults to 4x the best 64-connection rate of the run (as `make bench` does).
Writes bench/results/gc_freeze.json and .md.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import tempfile
from pathlib import Path
from typing import Any

from bench import side_by_side, wrk
from bench.compare import overload
from bench.models import build
from bench.servers import LOAD_CORE, RESULTS, Running, running

# Each variant's label and its environment: gc_freeze, and the young threshold held.
SETTINGS: dict[str, dict[str, str]] = {
    "false": {"LOADONCE_GC_FREEZE": "false"},
    "true, young 701": {"LOADONCE_GC_FREEZE": "true", "BENCH_GC_YOUNG_THRESHOLD": "701"},
    "true": {"LOADONCE_GC_FREEZE": "true"},
}


def _start_counting(server: Running) -> None:
    os.kill(server.process.pid, signal.SIGUSR1)


def _environment(setting: str, stats: Path) -> dict[str, str]:
    return {**SETTINGS[setting], "BENCH_GC_STATS": str(stats)}


def _c64(artifact: Path, row: list[float], setting: str, seconds: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as folder:
        stats = Path(folder) / "gc.json"
        env = _environment(setting, stats)
        with running("a", artifact, row, env=env, loadonce_module="bench.gc_pauses") as server:
            wrk.run(server.url, server.body, connections=64, seconds=2, core=LOAD_CORE)
            _start_counting(server)
            result = wrk.run(
                server.url, server.body, connections=64, seconds=seconds, core=LOAD_CORE
            )
        return {"wrk": result.as_dict(), "gc": json.loads(stats.read_text())}


def _overloaded(
    artifact: Path, row: list[float], setting: str, rate: float, seconds: int
) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as folder:
        stats = Path(folder) / "gc.json"
        summary = overload(
            artifact,
            row,
            rate,
            seconds,
            env=_environment(setting, stats),
            loadonce_module="bench.gc_pauses",
            when_up=_start_counting,
        )
        summary["gc"] = json.loads(stats.read_text())
        return summary


def render(results: dict[str, Any]) -> str:
    lines = [
        f"gc_freeze off and on, forest with batching, one worker; {results['date']}, "
        f"{results['rounds']} rounds alternating; overload offered {results['rate']:,.0f} req/s "
        f"for {results['overload_seconds']} s.",
        "",
        f"| gc_freeze {side_by_side.COMMON_HEADER} young collections (0 / 1): count, seconds "
        "| full collections: count, seconds, longest ms |",
        f"| --- {side_by_side.COMMON_ALIGNMENT} --- | --- |",
    ]
    for run in results["runs"]:
        collections = run["overload"]["gc"]
        young = [collections["0"], collections["1"]]
        full = collections["2"]
        common = side_by_side.row_cells(run["round"], run["c64"]["wrk"], run["overload"])
        lines.append(
            f"| {run['gc_freeze']} {common} "
            f"{' / '.join(str(g['collections']) for g in young)}, "
            f"{sum(g['seconds'] for g in young):.2f} | "
            f"{full['collections']}, {full['seconds']:.2f}, {full['longest_ms']:.0f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    side_by_side.add_options(parser)
    args = parser.parse_args(argv)
    artifact, row_array = build(RESULTS / "models", ("forest",))["forest"]
    row = row_array.tolist()
    runs: list[dict[str, Any]] = []
    for round_number in range(1, args.rounds + 1):
        for setting in SETTINGS:
            side_by_side.progress(f"round {round_number}, gc_freeze {setting}: c64")
            c64 = _c64(artifact, row, setting, args.c64_seconds)
            runs.append({"gc_freeze": setting, "round": round_number, "c64": c64})
    rate = side_by_side.overload_rate(args, [run["c64"]["wrk"]["req_per_s"] for run in runs])
    for run in runs:
        side_by_side.progress(
            f"round {run['round']}, gc_freeze {run['gc_freeze']}: {rate:,.0f} req/s"
        )
        run["overload"] = _overloaded(artifact, row, run["gc_freeze"], rate, args.seconds)
    return side_by_side.save("gc_freeze", args, rate, runs, render)


if __name__ == "__main__":
    main()
