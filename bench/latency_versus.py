"""A revision of loadonce against the working tree, side by side in one run: a model served
with no options (`loadonce serve model.skops`: batching by default), one worker on core 0,
wrk on core 1, at one connection (latency: p50) and at 64 (throughput).

    python -m bench.latency_versus REV [--model iris] [--rounds 10] [--seconds 4]

Both servers run at once (an idle one costs nothing); their runs alternate, round after
round, each round's order reversed from the last, so a shared machine's drift falls on both.
REV is checked out in a temporary git worktree and its ``src/`` put first on its server's
PYTHONPATH. Writes bench/results/latency_versus.json and .md.
"""

from __future__ import annotations

import argparse
import json
import statistics
from contextlib import ExitStack
from typing import Any

from bench import side_by_side, wrk
from bench.models import build
from bench.servers import LOAD_CORE, RESULTS, ROOT, free_port, launch, serving

CONNECTIONS = (1, 64)


def _measure(args: argparse.Namespace, codes: dict[str, str]) -> dict[str, Any]:
    artifact, row = build(RESULTS / "models", (args.model,))[args.model]
    runs: dict[str, dict[int, list[dict[str, Any]]]] = {
        code: {connections: [] for connections in CONNECTIONS} for code in codes
    }
    with ExitStack() as stack:
        servers = {}
        for index, (code, source) in enumerate(codes.items()):
            how = launch("defaults", artifact, row.tolist(), free_port())
            server = stack.enter_context(
                serving(f"latency-versus-{index}", how, artifact, env={"PYTHONPATH": source})
            )
            wrk.run(server.url, server.body, connections=64, seconds=2, core=LOAD_CORE)
            servers[code] = server
        order = list(codes)
        for round_ in range(args.rounds):
            for code in order if round_ % 2 == 0 else list(reversed(order)):
                for connections in CONNECTIONS:
                    server = servers[code]
                    result = wrk.run(server.url, server.body, connections=connections,
                                     seconds=args.seconds, core=LOAD_CORE)  # fmt: skip
                    runs[code][connections].append(result.as_dict())
                    side_by_side.progress(
                        f"round {round_ + 1}, {code}, c{connections}: "
                        f"{result.req_per_s:,.0f} req/s, p50 {result.p50_ms} ms"
                    )
    return runs


def render(results: dict[str, Any]) -> str:
    lines = [
        f"{results['revision']} ({results['commit'][:10]}) against the working tree, "
        f"{results['model']} served with no options, one worker; {results['rounds']} rounds "
        f"of {results['seconds']:g} s alternating.",
        "",
        "| code | c1 p50 ms (median) | c1 p50 ms, each round | c64 req/s (median) | "
        "c64 req/s, each round |",
        "| --- | ---: | --- | ---: | --- |",
    ]
    for code, by_connections in results["runs"].items():
        one, many = by_connections["1"], by_connections["64"]
        rates = " / ".join(f"{r['req_per_s']:,.0f}" for r in many)
        p50s = " / ".join(f"{r['p50_ms']:.2f}" for r in one)
        lines.append(
            f"| {code} | {statistics.median(r['p50_ms'] for r in one):.3f} | "
            f"{p50s} | "
            f"{statistics.median(r['req_per_s'] for r in many):,.0f} | "
            f"{rates} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("revision", help="the git revision to run against the working tree")
    parser.add_argument("--model", choices=("iris", "forest"), default="iris")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--seconds", type=float, default=4)
    args = parser.parse_args(argv)
    with side_by_side.revision_checked_out(args.revision) as (commit, worktree):
        codes = {args.revision: str(worktree / "src"), "working tree": str(ROOT / "src")}
        runs = _measure(args, codes)
    results = {
        "revision": args.revision,
        "commit": commit,
        "model": args.model,
        "rounds": args.rounds,
        "seconds": args.seconds,
        # JSON keys are strings: the connection counts as they are read back.
        "runs": {code: {str(c): r for c, r in by.items()} for code, by in runs.items()},
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "latency_versus.json").write_text(json.dumps(results, indent=2))
    report = render(results)
    (RESULTS / "latency_versus.md").write_text(report)
    print(report)
    return results


if __name__ == "__main__":
    main()
