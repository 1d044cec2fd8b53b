"""What `malloc_mmap_threshold` costs a model's calls: glibc's default against the threshold a
worker sets (16 MiB) and a lower one (4 MiB), side by side in one run.

Each variant is a fresh process (glibc reads its variables at start; ``MALLOC_*`` variables
set the same two parameters the worker sets with ``mallopt``) that builds the same models and
times their calls in a thread, as a worker's model thread makes them: a brute-force
neighbours search (one and eight rows: 6 and 49 MiB of distances a call), a random forest on
56 rows (small temporaries: no change expected) and a PyTorch MLP whose activations are 8 MiB.
The variants take turns, round after round, so drift on a shared machine falls on both; each
process also reports its resident memory at the end. Then the forest served with batching
(`loadonce serve`, one worker on core 0, wrk at 64 connections on core 1) with glibc's default
(``malloc_mmap_threshold = 0``) against the default threshold, runs alternating.

    python -m bench.allocator [--rounds 3] [--served-rounds 6]

Writes bench/results/allocator.json and .md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from bench import wrk
from bench.models import build
from bench.servers import LOAD_CORE, RESULTS, ROOT, free_port, launch, serving

MIB = 1 << 20
VARIANTS = {
    "glibc's default": {},
    "threshold 4 MiB": {
        "MALLOC_MMAP_THRESHOLD_": str(4 * MIB),
        "MALLOC_TRIM_THRESHOLD_": str(8 * MIB),
    },
    "threshold 16 MiB": {
        "MALLOC_MMAP_THRESHOLD_": str(16 * MIB),
        "MALLOC_TRIM_THRESHOLD_": str(32 * MIB),
    },
}

# Run in each child: the calls' median times (ms) and the process's resident memory (MiB).
_CHILD = """
import json, statistics, threading, time
import numpy as np, psutil, torch
from sklearn.datasets import make_classification
from sklearn.ensemble import RandomForestClassifier
from sklearn.neighbors import KNeighborsClassifier

torch.set_num_threads(1)
rng = np.random.default_rng(0)
points = rng.random((800_000, 40))
neighbours = KNeighborsClassifier(n_neighbors=1, algorithm="brute")
neighbours.fit(points, np.arange(len(points)) % 3)
X, y = make_classification(n_samples=5000, n_features=32, random_state=0)
forest = RandomForestClassifier(n_estimators=100, max_depth=12, random_state=0, n_jobs=1)
forest.fit(X, y)
mlp = torch.nn.Sequential(
    torch.nn.Linear(1024, 4096), torch.nn.ReLU(), torch.nn.Linear(4096, 1024)
)
batch = torch.randn(512, 1024)
times = {}

def timed(name, call, calls):
    call()
    spent = []
    for _ in range(calls):
        began = time.perf_counter()
        call()
        spent.append(time.perf_counter() - began)
    times[name] = statistics.median(spent) * 1e3

def calls():
    timed("neighbours, 1 row", lambda: neighbours.predict(points[:1]), 30)
    timed("neighbours, 8 rows", lambda: neighbours.predict(points[:8]), 10)
    timed("forest, 56 rows", lambda: forest.predict_proba(X[:56]), 100)
    with torch.no_grad():
        timed("MLP, 512 rows", lambda: mlp(batch), 30)

thread = threading.Thread(target=calls)
thread.start()
thread.join()
print(json.dumps({"ms": times, "rss_mib": psutil.Process().memory_info().rss / 2**20}))
"""


def _run_child(variables: dict[str, str]) -> dict[str, Any]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    done = subprocess.run(
        [sys.executable, "-c", _CHILD],
        env={**environment, **variables},
        capture_output=True,
        text=True,
        check=True,
    )
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


# The forest served: its server's environment per variant.
SERVED = {"glibc's default": {"LOADONCE_MALLOC_MMAP_THRESHOLD": "0"}, "threshold 16 MiB": {}}


def _served(rounds: int) -> dict[str, list[float]]:
    """Requests per second of the forest served with batching, each variant's runs in turn."""
    served: dict[str, list[float]] = {name: [] for name in SERVED}
    with tempfile.TemporaryDirectory() as folder, ExitStack() as stack:
        artifact, row = build(Path(folder), ("forest",))["forest"]
        servers = {}
        for index, (name, variables) in enumerate(SERVED.items()):
            how = launch("a", artifact, list(row), free_port())
            env = {"PYTHONPATH": str(ROOT / "src"), **variables}
            server = stack.enter_context(serving(f"allocator-{index}", how, artifact, env=env))
            wrk.run(server.url, server.body, connections=64, seconds=3, core=LOAD_CORE)
            servers[name] = server
        names = list(SERVED)
        for round_ in range(rounds):
            for name in names[round_ % 2 :] + names[: round_ % 2]:
                server = servers[name]
                result = wrk.run(server.url, server.body, connections=64, seconds=5, core=LOAD_CORE)
                served[name].append(result.req_per_s)
                print(f"served, {name}: {result.req_per_s:,.0f} req/s", file=sys.stderr, flush=True)
    return served


def render_served(served: dict[str, list[float]]) -> str:
    lines = [
        "| forest served, batching, c64 | req/s, each round | median |",
        "| --- | --- | ---: |",
    ]
    for name, rates in served.items():
        each = " / ".join(f"{rate:,.0f}" for rate in rates)
        lines.append(f"| {name} | {each} | {statistics.median(rates):,.0f} |")
    (default, default_rates), (threshold, threshold_rates) = served.items()
    ratio = statistics.median(t / d for d, t in zip(default_rates, threshold_rates, strict=True))
    lines += ["", f"Median of the rounds' ratios, {threshold} / {default}: {ratio:.3f}."]
    return "\n".join(lines) + "\n"


def render(runs: dict[str, list[dict[str, Any]]]) -> str:
    names = list(runs)
    calls = list(runs[names[0]][0]["ms"])
    lines = [
        "| call | " + " | ".join(f"{name}: ms per call, each round" for name in names) + " |",
        "| --- | " + " | ".join("---" for _ in names) + " |",
    ]
    for call in calls:
        cells = [" / ".join(f"{run['ms'][call]:.1f}" for run in runs[name]) for name in names]
        lines.append(f"| {call} | " + " | ".join(cells) + " |")
    rss = [
        f"{name} {statistics.median(run['rss_mib'] for run in runs[name]):,.0f} MiB"
        for name in names
    ]
    lines += ["", "Resident at the end (median of the rounds): " + ", ".join(rss) + "."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict[str, list[dict[str, Any]]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="rounds of one run per variant")
    parser.add_argument("--served-rounds", type=int, default=6, help="0: no served forest")
    args = parser.parse_args(argv)
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in VARIANTS}
    for round_ in range(args.rounds):
        names = list(VARIANTS)
        order = names[round_ % len(names) :] + names[: round_ % len(names)]
        for name in order:
            runs[name].append(_run_child(VARIANTS[name]))
            print(f"round {round_ + 1}, {name}: {runs[name][-1]}", file=sys.stderr, flush=True)
    served = _served(args.served_rounds) if args.served_rounds else {}
    report = render(runs) + ("\n" + render_served(served) if served else "")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "allocator.json").write_text(json.dumps({"calls": runs, "served": served}, indent=2))
    (RESULTS / "allocator.md").write_text(report)
    print(report)
    return runs


if __name__ == "__main__":
    main()
