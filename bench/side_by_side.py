"""What the side-by-side benchmarks (`bench.gc_freeze`, `bench.versus`) share: their options,
progress lines, the overload rate, and how results are saved."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from bench.servers import RESULTS, ROOT

_Variant = TypeVar("_Variant")


def add_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rounds", type=int, default=2, help="rounds of each side, alternating")
    parser.add_argument("--rate", type=float, help="overload rate (default: 4x best c64)")
    parser.add_argument("--seconds", type=int, default=20, help="each overload run")
    parser.add_argument("--c64-seconds", type=float, default=5, help="each c64 run")


def in_turn(variants: list[_Variant], round_number: int) -> list[_Variant]:
    """The variants in the order round ``round_number`` runs them: each round starts one
    further along, so no variant always runs first, or always right after the same one (on
    this machine, a run's speed depends on what ran just before it)."""
    start = round_number % len(variants)
    return variants[start:] + variants[:start]


def progress(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def overload_rate(args: argparse.Namespace, c64_rates: list[float]) -> float:
    """The rate given, or 4x the best 64-connection rate of the run (as `make bench` does)."""
    rate: float = args.rate or 4 * max(c64_rates)
    return rate


# The columns both tables start with; ``row_cells`` fills them.
COMMON_HEADER = (
    "| round | c64 req/s | c64 p99 ms | overload: 200 / 503 / 504 | "
    "200s p50 / p99 from send, ms | requests the server took, /s |"
)
COMMON_ALIGNMENT = "| ---: | ---: | ---: | --- | --- | ---: |"


def row_cells(round_number: int, c64: dict[str, Any], overload: dict[str, Any]) -> str:
    """The common columns of one run: ``c64`` a wrk result, ``overload`` bench.overload's."""
    statuses = overload["statuses"]
    return (
        f"| {round_number} | {c64['req_per_s']:,.0f} | {c64['p99_ms']} | "
        f"{statuses.get('200', 0):,} / {statuses.get('503', 0):,} / "
        f"{statuses.get('504', 0):,} | {overload['ok_p50_from_send_ms']:.0f} / "
        f"{overload['ok_p99_from_send_ms']:.0f} | {overload['achieved_offered_rate']:,.0f} |"
    )


def save(
    name: str,
    args: argparse.Namespace,
    rate: float,
    runs: list[dict[str, Any]],
    render: Callable[[dict[str, Any]], str],
    **facts: Any,
) -> dict[str, Any]:
    """Write bench/results/NAME.json and .md, print the table, return the results."""
    results = {
        **facts,
        "date": time.strftime("%Y-%m-%d"),
        "rounds": args.rounds,
        "rate": rate,
        "overload_seconds": args.seconds,
        "runs": runs,
    }
    (RESULTS / f"{name}.json").write_text(json.dumps(results, indent=2))
    (RESULTS / f"{name}.md").write_text(render(results))
    print(render(results))
    return results


@contextmanager
def revision_checked_out(revision: str) -> Iterator[tuple[str, Path]]:
    """(commit, worktree): ``revision`` checked out in a temporary git worktree, whose
    ``src/`` a server's PYTHONPATH can put first; removed afterwards."""
    commit = subprocess.run(
        ["git", "rev-parse", "--verify", f"{revision}^{{commit}}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    with tempfile.TemporaryDirectory() as folder:
        worktree = Path(folder) / "revision"
        subprocess.run(
            ["git", "worktree", "add", "--detach", str(worktree), commit],
            cwd=ROOT,
            capture_output=True,
            check=True,
        )
        try:
            yield commit, worktree
        finally:
            subprocess.run(
                ["git", "worktree", "remove", "--force", str(worktree)], cwd=ROOT, check=False
            )
