"""`make bench`: loadonce against what users would pick instead, same machine, same model,
same load, one run.

Per model (the iris LogisticRegression, overhead-dominated; a RandomForest, batching-friendly),
one example per request: the anti-pattern (model loaded per request), plain FastAPI with the
model loaded once (`def` and `async def` handlers), loadonce without batching, with explicit
batching and with its defaults (no options: batching on for scikit-learn), LitServe and
MLServer without and with batching (max batch size 64 for all; each peer in its own virtual
environment under bench/.venvs), and three bounds: a FastAPI route answering a constant, the
raw-HTTP floor (a raw ASGI app on the same uvicorn: read the body, `json.loads`, constant), and
the model in-process on batches of 32. Each server runs pinned to core 0, wrk to core 1; 64
connections then 1; a warm-up, then two measured runs (the spread is the noise); then the
server's RSS and PSS. Last, an overload run of loadonce on the forest. Writes
bench/results/compare.json and .md (tables, then per model the ratios against their targets),
and PNG charts beside them, from the same results.

    python -m bench.compare [--quick] [--only loadonce,litserve] [--models iris] [--seconds 5]
    python -m bench.compare --quick --only raw,defaults,b --models iris

--only takes families (loadonce, fastapi, litserve, mlserver, bound) and variant keys
(bench/servers.py's VARIANTS: b, a, defaults, d, http, raw, ...); "inprocess" adds the
in-process bound, which runs with the bound family or when --only is not given.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import psutil

from bench import wrk
from bench.models import build
from bench.peers import envs
from bench.report import render
from bench.servers import (
    LOAD_CORE,
    OVERLOAD_MAX_QUEUE,
    OVERLOAD_TIMEOUT_S,
    RESULTS,
    ROOT,
    SERVER_CORE,
    VARIANTS,
    Running,
    running,
    tree_memory_mib,
)

CONNECTIONS = (64, 1)


def _progress(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _inprocess_bound(artifact: Path, row: list[float]) -> float:
    command = ["taskset", "-c", SERVER_CORE, sys.executable, "-m", "bench.inprocess"]
    output = subprocess.run(
        [*command, str(artifact), json.dumps(row)],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rows_per_s: float = json.loads(output)["rows_per_s"]
    return rows_per_s


def _measure(
    key: str, artifact: Path, row: list[float], args: argparse.Namespace, step: str
) -> dict[str, Any]:
    measured: dict[str, Any] = {}
    with running(key, artifact, row) as server:
        for connections in CONNECTIONS:
            if args.warmup > 0:
                _progress(f"{step} c{connections}: warm-up {args.warmup} s")
                wrk.run(
                    server.url,
                    server.body,
                    connections=connections,
                    seconds=args.warmup,
                    core=LOAD_CORE,
                )
            runs = []
            for attempt in range(args.runs):
                result = wrk.run(
                    server.url,
                    server.body,
                    connections=connections,
                    seconds=args.seconds,
                    core=LOAD_CORE,
                )
                _progress(
                    f"{step} c{connections} run {attempt + 1}/{args.runs}: "
                    f"{result.req_per_s:,.0f} req/s, p99 {result.p99_ms} ms, "
                    f"{result.errors} errors"
                )
                runs.append(result.as_dict())
            measured[f"c{connections}"] = runs
        measured["memory"] = tree_memory_mib(server.process.pid)
    return measured


def overload(
    artifact: Path,
    row: list[float],
    rate: float,
    seconds: int,
    *,
    env: Mapping[str, str] | None = None,
    loadonce_module: str = "loadonce",
    when_up: Callable[[Running], None] | None = None,
) -> dict[str, Any]:
    """loadonce with batching on the forest, offered ``rate`` requests/s open-loop for
    ``seconds``; ``when_up`` runs once the server answers, just before the load starts."""
    with running(
        "a", artifact, row, overload=True, env=env, loadonce_module=loadonce_module
    ) as server:
        if when_up is not None:
            when_up(server)
        process = psutil.Process(server.process.pid)
        samples: list[int] = []
        done = threading.Event()

        def sample() -> None:
            while not done.is_set():
                samples.append(process.memory_info().rss)
                time.sleep(0.25)

        sampler = threading.Thread(target=sample)
        sampler.start()
        port = server.url.split(":")[2].split("/")[0]
        command = ["taskset", "-c", LOAD_CORE, sys.executable, "-m", "bench.overload"]
        output = subprocess.run(
            [*command, "127.0.0.1", port, str(rate), str(seconds), server.body],
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        done.set()
        sampler.join()
    summary: dict[str, Any] = json.loads(output)
    summary.update(
        timeout_ms=OVERLOAD_TIMEOUT_S * 1000,
        max_queue=OVERLOAD_MAX_QUEUE,
        rss_start_mib=samples[0] / 2**20,
        rss_peak_mib=max(samples) / 2**20,
        rss_end_mib=samples[-1] / 2**20,
    )
    return summary


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown"


def _versions(families: set[str]) -> dict[str, dict[str, str]]:
    import importlib.metadata as metadata

    ours = ["loadonce", "fastapi", "starlette", "uvicorn", "scikit-learn"]
    found = {"loadonce env": {name: metadata.version(name) for name in ours}}
    for family in ("litserve", "mlserver"):
        if family in families:
            found[family] = envs.versions(family)
    return found


def _charts(results_file: Path) -> None:
    python = envs.python_of("charts")
    script = ROOT / "bench" / "charts.py"
    subprocess.run([str(python), str(script), str(results_file), str(RESULTS)], check=True)


def parse_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, help="each measured wrk run (5; --quick: 2)")
    parser.add_argument(
        "--warmup", type=float, help="the warm-up before each (2; --quick: 1; 0: none)"
    )
    parser.add_argument("--runs", type=int, help="measured runs per connection count (2; 1)")
    parser.add_argument("--overload-seconds", type=int, default=20)
    parser.add_argument(
        "--overload-only", type=float, metavar="RATE", help="only the overload run, at RATE"
    )
    parser.add_argument(
        "--only",
        default="",
        help="comma-separated families (loadonce, fastapi, litserve, mlserver, bound), variant "
        "keys (b, a, defaults, d, http, raw, ...) and 'inprocess' (the in-process bound)",
    )
    parser.add_argument("--models", default="iris,forest", help="comma-separated models")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a smoke run: 2 s runs, 1 s warm-up, one run each, no overload, no charts",
    )
    args = parser.parse_args(argv)
    known = {v.family for v in VARIANTS} | {v.key for v in VARIANTS} | {"inprocess"}
    unknown = set(filter(None, args.only.split(","))) - known
    if unknown:
        listed = ", ".join(sorted(known))
        parser.error(f"--only: unknown {', '.join(sorted(unknown))}; known: {listed}")
    # --quick changes the defaults only: a smoke run can be shorter still (the harness's test).
    for name, full, quick in (("seconds", 5, 2), ("warmup", 2, 1), ("runs", 2, 1)):
        if getattr(args, name) is None:
            setattr(args, name, quick if args.quick else full)
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_arguments(argv)
    if shutil.which("wrk") is None or shutil.which("taskset") is None:
        sys.exit("bench needs wrk and taskset: apt-get install wrk util-linux")
    only = set(filter(None, args.only.split(",")))
    variants = [v for v in VARIANTS if not only or {v.family, v.key} & only]
    families = {v.family for v in variants}
    inprocess = not only or bool({"bound", "inprocess"} & only)
    wanted_models = args.models.split(",")
    RESULTS.mkdir(parents=True, exist_ok=True)
    if args.overload_only:
        artifact, row_array = build(RESULTS / "models", ("forest",))["forest"]
        summary = overload(artifact, row_array.tolist(), args.overload_only, args.overload_seconds)
        print(json.dumps(summary, indent=2))
        return {"overload": summary}
    models = build(RESULTS / "models", tuple(wanted_models))
    results: dict[str, Any] = {
        "date": datetime.date.today().isoformat(),
        "cpu": cpu_name(),
        "seconds": args.seconds,
        "versions": _versions(families),
        "labels": {variant.key: variant.label for variant in variants},
        "models": {},
    }
    steps = len(models) * len(variants)
    step = 0
    for model, (artifact, row_array) in models.items():
        row = row_array.tolist()
        entry: dict[str, Any] = {"variants": {}}
        if inprocess:
            entry["inprocess_rows_per_s"] = _inprocess_bound(artifact, row)
        else:
            entry["inprocess_rows_per_s"] = 0.0
        for variant in variants:
            step += 1
            label = f"[{step}/{steps}] {model} · {variant.label}"
            entry["variants"][variant.key] = _measure(variant.key, artifact, row, args, label)
        results["models"][model] = entry
    if not args.quick and any(v.key == "a" for v in variants) and "forest" in models:
        artifact, row_array = models["forest"]
        sustained = max(r["req_per_s"] for r in results["models"]["forest"]["variants"]["a"]["c64"])
        _progress(f"overload: loadonce, forest, {4 * sustained:,.0f} req/s offered")
        results["overload"] = overload(
            artifact, row_array.tolist(), 4 * sustained, args.overload_seconds
        )
    results_file = RESULTS / "compare.json"
    results_file.write_text(json.dumps(results, indent=2))
    (RESULTS / "compare.md").write_text(render(results))
    if not args.quick:
        _charts(results_file)
    print(render(results))
    return results


if __name__ == "__main__":
    main()
