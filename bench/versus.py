"""A revision of loadonce against the working tree, side by side in one run: the forest with
batching (one worker on core 0), at 64 connections (wrk) and overloaded (open loop); then two
workers' memory after 200 requests (each worker's USS, the server's summed PSS).

    python -m bench.versus REV [--rounds 2] [--rate REQ_PER_S] [--seconds 20]

REV (a commit, a tag, ``HEAD~1``) is checked out in a temporary git worktree, and its
``src/`` is put first on the server's PYTHONPATH; the working tree's code runs otherwise. The
two alternate round after round, so a shared machine's drift falls on both. The config both
run is the working tree's (`bench/servers.py`): a revision that lacks an option it sets
(`fill_wait_ms` before it existed) refuses it. The overload rate
defaults to 4x the best 64-connection rate of the run. Writes bench/results/versus.json and
.md.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import httpx2 as httpx
import psutil

from bench import side_by_side, wrk
from bench.compare import overload
from bench.models import build
from bench.servers import LOAD_CORE, RESULTS, running, tree_memory_mib

JSON = {"content-type": "application/json"}


def _c64(artifact: Path, row: list[float], env: dict[str, str], seconds: float) -> dict[str, Any]:
    with running("a", artifact, row, env=env) as server:
        wrk.run(server.url, server.body, connections=64, seconds=2, core=LOAD_CORE)
        result = wrk.run(server.url, server.body, connections=64, seconds=seconds, core=LOAD_CORE)
    return result.as_dict()


def _two_workers(artifact: Path, row: list[float], env: dict[str, str]) -> dict[str, Any]:
    with running("a", artifact, row, env={**env, "LOADONCE_WORKERS": "2"}) as server:
        with httpx.Client() as client:
            for _ in range(200):
                client.post(server.url, content=server.body, headers=JSON).raise_for_status()
        supervisor = psutil.Process(server.process.pid)
        tree = [supervisor, *supervisor.children(recursive=True)]
        # The workers are the fork server's children: the processes whose parent has children.
        parents = {process.pid for process in tree if process.children()}
        workers = [p for p in tree if p.ppid() in parents - {supervisor.pid} and not p.children()]
        return {
            "worker_uss_mib": sorted(p.memory_full_info().uss / 2**20 for p in workers),
            "pss_mib": tree_memory_mib(supervisor.pid)["pss_mib"],
        }


def render(results: dict[str, Any]) -> str:
    lines = [
        f"{results['revision']} ({results['commit'][:10]}) against the working tree, forest "
        f"with batching, one worker; {results['date']}, {results['rounds']} rounds alternating; "
        f"overload offered {results['rate']:,.0f} req/s for {results['overload_seconds']} s.",
        "",
        f"| code {side_by_side.COMMON_HEADER} 2 workers: USS each, PSS in all, MiB |",
        f"| --- {side_by_side.COMMON_ALIGNMENT} --- |",
    ]
    for run in results["runs"]:
        memory = run["memory"]
        common = side_by_side.row_cells(run["round"], run["c64"], run["overload"])
        lines.append(
            f"| {run['code']} {common} "
            f"{' / '.join(f'{uss:.0f}' for uss in memory['worker_uss_mib'])}, "
            f"{memory['pss_mib']:,.0f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("revision", help="the git revision to run against the working tree")
    side_by_side.add_options(parser)
    args = parser.parse_args(argv)
    artifact, row_array = build(RESULTS / "models", ("forest",))["forest"]
    row = row_array.tolist()
    with side_by_side.revision_checked_out(args.revision) as (commit, worktree):
        codes = {args.revision: {"PYTHONPATH": str(worktree / "src")}, "working tree": {}}
        runs: list[dict[str, Any]] = []
        for round_number in range(1, args.rounds + 1):
            for code, env in codes.items():
                side_by_side.progress(f"round {round_number}, {code}: c64")
                c64 = _c64(artifact, row, env, args.c64_seconds)
                side_by_side.progress(f"round {round_number}, {code}: two workers' memory")
                memory = _two_workers(artifact, row, env)
                runs.append({"code": code, "round": round_number, "c64": c64, "memory": memory})
        rate = side_by_side.overload_rate(args, [run["c64"]["req_per_s"] for run in runs])
        for run in runs:
            side_by_side.progress(f"round {run['round']}, {run['code']}: {rate:,.0f} req/s")
            run["overload"] = overload(artifact, row, rate, args.seconds, env=codes[run["code"]])
    return side_by_side.save(
        "versus", args, rate, runs, render, revision=args.revision, commit=commit
    )


if __name__ == "__main__":
    main()
