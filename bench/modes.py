"""Library mode against server mode, a revision against the working tree, side by side in one
run: iris and the forest with batching, one worker on core 0, 64 connections (wrk on core 1).

    python -m bench.modes REV [--rounds 2] [--c64-seconds 5]

Server mode is `loadonce serve CONFIG` (`bench/servers.py`); library mode is a user's own
FastAPI app that mounts loadonce's routers (`bench/library_app.py`, under plain uvicorn). REV
(a commit, a tag, ``HEAD~1``) is checked out in a temporary git worktree and its ``src/`` put
first on the servers' PYTHONPATH. Every combination runs once per round, the order the same
in each round, so a shared machine's drift falls on all of them. Writes
bench/results/modes.json and .md.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from bench import side_by_side, wrk
from bench.models import build
from bench.servers import LOAD_CORE, RESULTS, running

MODES = {"server": "a", "library": "library"}  # bench.servers' variant keys


def _c64(key: str, artifact: Path, row: list[float], env: dict[str, str], seconds: float) -> Any:
    with running(key, artifact, row, env=env) as server:
        wrk.run(server.url, server.body, connections=64, seconds=2, core=LOAD_CORE)
        result = wrk.run(server.url, server.body, connections=64, seconds=seconds, core=LOAD_CORE)
    return result.as_dict()


def render(results: dict[str, Any]) -> str:
    lines = [
        f"{results['revision']} ({results['commit'][:10]}) against the working tree; "
        f"{results['date']}, {results['rounds']} rounds; wrk -c64 for {results['seconds']} s, "
        "one worker on one core, batching.",
        "",
        "| model | mode | code | req/s (each round) | p99 ms (each round) |",
        "| --- | --- | --- | ---: | ---: |",
    ]
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for run in results["runs"]:
        groups.setdefault((run["model"], run["mode"], run["code"]), []).append(run["c64"])
    for (model, mode, code), c64s in groups.items():
        rates = " / ".join(f"{c['req_per_s']:,.0f}" for c in c64s)
        p99s = " / ".join(f"{c['p99_ms']}" for c in c64s)
        lines.append(f"| {model} | {mode} | {code} | {rates} | {p99s} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("revision", help="the git revision to run against the working tree")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--c64-seconds", type=float, default=5, help="each c64 run")
    args = parser.parse_args(argv)
    models = build(RESULTS / "models", ("iris", "forest"))
    runs: list[dict[str, Any]] = []
    with side_by_side.revision_checked_out(args.revision) as (commit, worktree):
        codes = {args.revision: {"PYTHONPATH": str(worktree / "src")}, "working tree": {}}
        for round_number in range(1, args.rounds + 1):
            for name, (artifact, row) in models.items():
                for mode, key in MODES.items():
                    for code, env in codes.items():
                        side_by_side.progress(f"round {round_number}: {name} {mode} {code}")
                        c64 = _c64(key, artifact, row.tolist(), env, args.c64_seconds)
                        runs.append(
                            {
                                "round": round_number,
                                "model": name,
                                "mode": mode,
                                "code": code,
                                "c64": c64,
                            }
                        )
    results = {
        "revision": args.revision,
        "commit": commit,
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "rounds": args.rounds,
        "seconds": args.c64_seconds,
        "runs": runs,
    }
    (RESULTS / "modes.json").write_text(json.dumps(results, indent=2) + "\n")
    table = render(results)
    (RESULTS / "modes.md").write_text(table)
    print(table)
    return results


if __name__ == "__main__":
    main()
