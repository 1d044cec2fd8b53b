"""A revision of loadonce against the working tree, side by side in one run: the forest with
batching (one worker on core 0), at 64 connections (wrk) and overloaded (open loop).

    python -m bench.versus REV [--rounds 2] [--rate REQ_PER_S] [--seconds 20]

REV (a commit, a tag, ``HEAD~1``) is checked out in a temporary git worktree, and its
``src/`` is put first on the server's PYTHONPATH; the working tree's code runs otherwise. The
two alternate round after round, so a shared machine's drift falls on both. The overload rate
defaults to 4x the best 64-connection rate of the run. Writes bench/results/versus.json and
.md.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import wrk
from bench.compare import overload
from bench.models import build
from bench.servers import LOAD_CORE, RESULTS, ROOT, running


def _progress(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _c64(artifact: Path, row: list[float], env: dict[str, str], seconds: float) -> dict[str, Any]:
    with running("a", artifact, row, env=env) as server:
        wrk.run(server.url, server.body, connections=64, seconds=2, core=LOAD_CORE)
        result = wrk.run(server.url, server.body, connections=64, seconds=seconds, core=LOAD_CORE)
    return result.as_dict()


def render(results: dict[str, Any]) -> str:
    lines = [
        f"{results['revision']} ({results['commit'][:10]}) against the working tree, forest "
        f"with batching, one worker; {results['date']}, {results['rounds']} rounds alternating; "
        f"overload offered {results['rate']:,.0f} req/s for {results['overload_seconds']} s.",
        "",
        "| code | round | c64 req/s | c64 p99 ms | overload: 200 / 503 / 504 | "
        "200s p50 / p99 from send, ms | requests the server took, /s |",
        "| --- | ---: | ---: | ---: | --- | --- | ---: |",
    ]
    for run in results["runs"]:
        c64, over = run["c64"], run["overload"]
        statuses = over["statuses"]
        lines.append(
            f"| {run['code']} | {run['round']} | {c64['req_per_s']:,.0f} | {c64['p99_ms']} | "
            f"{statuses.get('200', 0):,} / {statuses.get('503', 0):,} / "
            f"{statuses.get('504', 0):,} | {over['ok_p50_from_send_ms']:.0f} / "
            f"{over['ok_p99_from_send_ms']:.0f} | {over['achieved_offered_rate']:,.0f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("revision", help="the git revision to run against the working tree")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--rate", type=float, help="overload rate (default: 4x best c64)")
    parser.add_argument("--seconds", type=int, default=20, help="each overload run")
    parser.add_argument("--c64-seconds", type=float, default=5)
    args = parser.parse_args(argv)
    commit = subprocess.run(
        ["git", "rev-parse", "--verify", f"{args.revision}^{{commit}}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    artifact, row_array = build(RESULTS / "models", ("forest",))["forest"]
    row = row_array.tolist()
    with tempfile.TemporaryDirectory() as folder:
        worktree = Path(folder) / "revision"
        subprocess.run(
            ["git", "worktree", "add", "--detach", str(worktree), commit],
            cwd=ROOT,
            capture_output=True,
            check=True,
        )
        try:
            codes = {args.revision: {"PYTHONPATH": str(worktree / "src")}, "working tree": {}}
            runs: list[dict[str, Any]] = []
            for round_number in range(1, args.rounds + 1):
                for code, env in codes.items():
                    _progress(f"round {round_number}, {code}: c64")
                    c64 = _c64(artifact, row, env, args.c64_seconds)
                    runs.append({"code": code, "round": round_number, "c64": c64})
            rate = args.rate or 4 * max(run["c64"]["req_per_s"] for run in runs)
            for run in runs:
                _progress(f"round {run['round']}, {run['code']}: {rate:,.0f} req/s")
                run["overload"] = overload(
                    artifact, row, rate, args.seconds, env=codes[run["code"]]
                )
        finally:
            subprocess.run(
                ["git", "worktree", "remove", "--force", str(worktree)], cwd=ROOT, check=False
            )
    results = {
        "revision": args.revision,
        "commit": commit,
        "date": time.strftime("%Y-%m-%d"),
        "rounds": args.rounds,
        "rate": rate,
        "overload_seconds": args.seconds,
        "runs": runs,
    }
    (RESULTS / "versus.json").write_text(json.dumps(results, indent=2))
    (RESULTS / "versus.md").write_text(render(results))
    print(render(results))
    return results


if __name__ == "__main__":
    main()
