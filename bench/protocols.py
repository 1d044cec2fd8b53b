"""The same model through the JSON route and the Open Inference Protocol, in one run.

Run by `make bench-protocols`. One `loadonce serve` (iris, batching on) pinned to core 0, wrk
pinned to core 1; one example per request, 64 connections then 1, each measured run after a
warm-up. Three request forms: the JSON route (`/models/m/predict`), /v2 infer with JSON
tensors, and /v2 infer with a binary tensor and a binary output (tritonclient's default).
Writes bench/results/protocols.json and .md.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np

from bench import wrk
from bench.compare import cpu_name
from bench.models import build
from bench.servers import LOAD_CORE, RESULTS, running


def _bodies(row: list[float], directory: Path) -> dict[str, tuple[str, str, dict[str, str]]]:
    """{form: (path, body, post.lua's environment)}."""
    tensor = {"name": "input", "shape": [1, len(row)], "datatype": "FP64"}
    v2_json = json.dumps({"inputs": [{**tensor, "data": row}]})
    header = json.dumps(
        {
            "inputs": [{**tensor, "parameters": {"binary_data_size": 8 * len(row)}}],
            "parameters": {"binary_data_output": True},
        }
    ).encode()
    binary_file = directory / "v2-binary.body"
    binary_file.write_bytes(header + np.asarray(row, dtype="<f8").tobytes())
    return {
        "JSON route": ("/models/m/predict", json.dumps({"inputs": [row]}), {}),
        "/v2 infer, JSON tensors": ("/v2/models/m/infer", v2_json, {}),
        "/v2 infer, binary tensors": (
            "/v2/models/m/infer",
            "",
            {
                "BENCH_BODY_FILE": str(binary_file),
                "BENCH_HEADER_LENGTH": str(len(header)),
                "BENCH_CONTENT_TYPE": "application/octet-stream",
            },
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=int, default=10, help="each measured wrk run")
    parser.add_argument("--warmup", type=int, default=3, help="each warm-up wrk run")
    args = parser.parse_args()
    if shutil.which("wrk") is None or shutil.which("taskset") is None:
        sys.exit("bench needs wrk and taskset: apt-get install wrk util-linux")
    RESULTS.mkdir(parents=True, exist_ok=True)
    artifact, row = build(RESULTS / "models", ("iris",))["iris"]
    bodies = _bodies(row.tolist(), RESULTS)
    results: dict[str, Any] = {"cpu": cpu_name(), "forms": {}}
    with running("a", artifact, row.tolist()) as server:
        base = server.url.removesuffix("/models/m/predict")
        for form, (path, body, env) in bodies.items():
            for connections in (64, 1):
                for seconds in (args.warmup, args.seconds):  # a warm-up, then the measure
                    measured = wrk.run(
                        base + path,
                        body,
                        connections=connections,
                        seconds=seconds,
                        core=LOAD_CORE,
                        env=env,
                    )
                results["forms"].setdefault(form, {})[f"c{connections}"] = measured.as_dict()
                print(form, f"c{connections}", measured, flush=True)
    (RESULTS / "protocols.json").write_text(json.dumps(results, indent=2))
    (RESULTS / "protocols.md").write_text(render(results))
    print(render(results))


def _num(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def render(results: dict[str, Any]) -> str:
    lines = [
        f"CPU: {results['cpu']}; iris, one example per request, batching on, one worker.",
        "",
        "| request form | c64 req/s | c64 p50 ms | c64 p99 ms | c1 req/s | c1 p50 ms | errors |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for form, runs in results["forms"].items():
        many, one = runs["c64"], runs["c1"]
        errors = many["errors"] + one["errors"]
        lines.append(
            f"| {form} | {_num(many['req_per_s'])} | {_num(many['p50_ms'])} | "
            f"{_num(many['p99_ms'])} | {_num(one['req_per_s'])} | {_num(one['p50_ms'])} | "
            f"{errors} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
