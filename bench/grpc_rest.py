"""The Open Inference Protocol over gRPC against REST (binary tensors, JSON tensors), one
server, one run.

Run by `make bench-grpc` (`--quick` for a smoke run). One `loadonce serve --grpc-port` of the
iris model (batching on, one worker) pinned to core 0; every load generator pinned to core 1.
Per tensor size (1 row, then 64 rows per request) and connection count (1, then 64):

- the Python closed-loop generator (`bench/loadgen.py`) for the three forms: gRPC ModelInfer
  with a raw input tensor (the serialized request tritonclient.grpc builds, sent as is), /v2
  infer with a binary tensor and binary output, /v2 infer with JSON tensors;
- wrk for the two REST forms, as `bench/protocols.py` does: it shows the ceiling of the Python
  generator, which is slower than wrk at sending HTTP.

Each measure is preceded by a warm-up of the same shape; the runs go round all cells once per
run, so drift on this shared machine touches every cell. For each measure: requests per
second, p50, p99, errors, the generator's CPU (Python only) and the server's CPU per request.
Writes bench/results/grpc.json and .md and the chart bench/results/bench-grpc.png (copied to
docs/images by hand); a quick run writes grpc-quick.json and .md only.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx2 as httpx
import numpy as np
import numpy.typing as npt

from bench import wrk
from bench.compare import cpu_name
from bench.models import TRUSTED_TYPES, build
from bench.servers import (
    FILL_WAIT_MS,
    LOAD_CORE,
    MAX_BATCH_SIZE,
    RESULTS,
    ROOT,
    SERVER_CORE,
    Launch,
    free_port,
    serving,
    tree_cpu_seconds,
)
from bench.transformers import _mean_batch as batch_sums

FORMS = {
    "grpc": "gRPC ModelInfer, raw tensors",
    "rest-binary": "REST /v2 infer, binary tensors",
    "rest-json": "REST /v2 infer, JSON tensors",
}
CONNECTIONS = (1, 64)


def _progress(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


def grpc_request(rows: npt.NDArray[np.float64]) -> bytes:
    """The serialized ModelInferRequest tritonclient.grpc's ``infer`` sends for ``rows``: the
    input as raw contents, no outputs named (all of them, raw)."""
    import tritonclient.grpc as grpcclient
    from tritonclient.grpc._utils import _get_inference_request

    tensor = grpcclient.InferInput("input", list(rows.shape), "FP64")
    tensor.set_data_from_numpy(rows)
    request = _get_inference_request(
        model_name="m",
        inputs=[tensor],
        model_version="",
        request_id="",
        outputs=None,
        sequence_id=0,
        sequence_start=False,
        sequence_end=False,
        priority=0,
        timeout=None,
        parameters=None,
    )
    serialized: bytes = request.SerializeToString()
    return serialized


def bodies(rows: npt.NDArray[np.float64], directory: Path) -> dict[str, dict[str, Any]]:
    """{form: {"file": body file, "header_length": ...}} for ``rows`` (written to
    ``directory``)."""
    tensor = {"name": "input", "shape": list(rows.shape), "datatype": "FP64"}
    header = json.dumps(
        {
            "inputs": [{**tensor, "parameters": {"binary_data_size": rows.nbytes}}],
            "parameters": {"binary_data_output": True},
        }
    ).encode()
    n = len(rows)
    contents = {
        "grpc": grpc_request(rows),
        "rest-binary": header + rows.astype("<f8").tobytes(),
        "rest-json": json.dumps({"inputs": [{**tensor, "data": rows.ravel().tolist()}]}).encode(),
    }
    found: dict[str, dict[str, Any]] = {}
    for form, content in contents.items():
        path = directory / f"grpc-bench-{form}-{n}.body"
        path.write_bytes(content)
        found[form] = {"file": path, "header_length": len(header), "bytes": len(content)}
    return found


def answers(form: str, body: dict[str, Any], grpc_target: str, url: str) -> dict[str, list[Any]]:
    """One request of ``form``, its outputs decoded as {name: values}: the forms must agree."""
    content = body["file"].read_bytes()
    if form == "grpc":
        import grpc
        import tritonclient.grpc as grpcclient
        from tritonclient.grpc import service_pb2

        with grpc.insecure_channel(grpc_target) as channel:
            call = channel.unary_unary(
                "/inference.GRPCInferenceService/ModelInfer",
                request_serializer=lambda data: data,
                response_deserializer=service_pb2.ModelInferResponse.FromString,
            )
            result = grpcclient.InferResult(call(content, timeout=10))
        return {o.name: result.as_numpy(o.name).tolist() for o in result.get_response().outputs}
    if form == "rest-binary":
        import tritonclient.http as httpclient

        headers = {
            "content-type": "application/octet-stream",
            "inference-header-content-length": str(body["header_length"]),
        }
        answer = httpx.post(url, content=content, headers=headers)
        answer.raise_for_status()
        length = answer.headers.get("inference-header-content-length")
        parsed = httpclient.InferResult.from_response_body(
            answer.content, header_length=int(length) if length else None
        )
        outputs = parsed.get_response()["outputs"]
        return {o["name"]: parsed.as_numpy(o["name"]).tolist() for o in outputs}
    answer = httpx.post(url, content=content, headers={"content-type": "application/json"})
    answer.raise_for_status()
    return {
        o["name"]: np.asarray(o["data"]).reshape(o["shape"]).tolist()
        for o in answer.json()["outputs"]
    }


def _loadgen(
    form: str,
    body: dict[str, Any],
    target: str,
    connections: int,
    seconds: float,
    warmup: float,
) -> dict[str, Any]:
    command = [
        "taskset", "-c", LOAD_CORE, sys.executable, "-m", "bench.loadgen", form, target,
        str(body["file"]), "--connections", str(connections), "--seconds", f"{seconds:g}",
        "--warmup", f"{warmup:g}", "--header-length", str(body["header_length"]),
    ]  # fmt: skip
    output = subprocess.run(
        command, cwd=ROOT, capture_output=True, text=True, check=True, env=_env()
    ).stdout
    measured: dict[str, Any] = json.loads(output)
    return measured


def _wrk(
    form: str, body: dict[str, Any], url: str, connections: int, seconds: float
) -> dict[str, Any]:
    seconds = max(1, round(seconds))  # wrk takes whole seconds
    env = {"BENCH_BODY_FILE": str(body["file"])}
    if form == "rest-binary":
        env["BENCH_HEADER_LENGTH"] = str(body["header_length"])
        env["BENCH_CONTENT_TYPE"] = "application/octet-stream"
    measured = wrk.run(url, "", connections=connections, seconds=seconds, core=LOAD_CORE, env=env)
    return measured.as_dict()


def measure(
    client: str,
    form: str,
    body: dict[str, Any],
    targets: dict[str, str],
    connections: int,
    args: argparse.Namespace,
    server_pid: int,
) -> dict[str, Any]:
    """A warm-up, then one measured run, with the server's CPU per request and examples per
    model call (mean) over it."""
    target = targets["grpc" if form == "grpc" else "rest"]
    if client == "wrk":
        _wrk(form, body, target, connections, args.warmup)
        batches = batch_sums(targets["metrics"])
        before = tree_cpu_seconds(server_pid)
        measured = _wrk(form, body, target, connections, args.seconds)
        answered = measured["req_per_s"] * max(1, round(args.seconds))
    else:
        _loadgen(form, body, target, connections, args.warmup, 0)
        batches = batch_sums(targets["metrics"])
        before = tree_cpu_seconds(server_pid)
        # A short warm-up inside the measured process: its connections are opened outside the
        # window. The server's CPU covers it too, so it is divided by every request answered.
        measured = _loadgen(form, body, target, connections, args.seconds, 0.5)
        answered = measured["requests_with_warmup"]
    cpu = tree_cpu_seconds(server_pid) - before
    measured["server_cpu_ms_per_request"] = 1000 * cpu / answered if answered else None
    after = batch_sums(targets["metrics"])
    total, calls = after[0] - batches[0], after[1] - batches[1]
    measured["examples_per_call"] = total / calls if calls else None
    return measured


def _env() -> dict[str, str]:
    """This checkout's src and bench first (the venv's editable install may point elsewhere)."""
    path = os.pathsep.join([str(ROOT / "src"), str(ROOT)])
    return {**os.environ, "PYTHONPATH": path}


def _wait_for_grpc(target: str, timeout_s: float = 60) -> None:
    import grpc

    deadline = time.monotonic() + timeout_s
    with grpc.insecure_channel(target) as channel:
        while True:
            try:
                grpc.channel_ready_future(channel).result(timeout=1)
                return
            except grpc.FutureTimeoutError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"gRPC did not answer on {target}") from None


def config_file(artifact: Path, max_queue: int) -> Path:
    """bench.servers.loadonce_config's batching config, with room in the queue for every
    example in flight (64 requests of 64 rows are 4,096 examples; the default max_queue,
    1,024, would answer most of them 503)."""
    lines = [
        '[server]\nlog_level = "warning"\n',
        "[[models]]",
        'name = "m"',
        f'artifact = "{artifact}"',
        f"options = {{ trusted_types = {json.dumps(TRUSTED_TYPES)} }}",
        f"max_queue = {max_queue}",
        'concurrency = "serialized"',
        "[models.batching]",
        f"max_batch_size = {MAX_BATCH_SIZE}",
        f"fill_wait_ms = {FILL_WAIT_MS}",
    ]
    path = RESULTS / f"{artifact.stem}-grpc-bench.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def run_all(args: argparse.Namespace) -> dict[str, Any]:
    artifact, row = build(RESULTS / "models", (args.model,))[args.model]
    max_queue = 2 * max(CONNECTIONS) * max(args.rows)
    config = config_file(artifact, max_queue)
    port, grpc_port = free_port(), free_port()
    while grpc_port == port:
        grpc_port = free_port()
    base = f"http://127.0.0.1:{port}"
    how = Launch(
        [sys.executable, "-m", "loadonce", "serve", str(config), "--port", str(port),
         "--grpc-port", str(grpc_port)],
        f"{base}/models/m/predict",
        json.dumps({"inputs": [row.tolist()]}),
    )  # fmt: skip
    targets = {
        "grpc": f"127.0.0.1:{grpc_port}",
        "rest": f"{base}/v2/models/m/infer",
        "metrics": f"{base}/metrics",
    }
    sizes = {n: bodies(np.tile(row, (n, 1)), RESULTS) for n in args.rows}
    cells: dict[str, Any] = {}
    plan = [
        (n, c, client, form)
        for n in args.rows
        for c in CONNECTIONS
        for client, forms in (("python", list(FORMS)), ("wrk", ["rest-binary", "rest-json"]))
        for form in forms
    ]
    with serving("grpc", how, artifact, env={"PYTHONPATH": str(ROOT / "src")}) as server:
        _wait_for_grpc(targets["grpc"])
        for n, forms in sizes.items():
            decoded = {f: answers(f, b, targets["grpc"], targets["rest"]) for f, b in forms.items()}
            if len({json.dumps(d, sort_keys=True) for d in decoded.values()}) != 1:
                raise RuntimeError(f"the forms' answers differ for {n} rows: {decoded}")
        for run in range(args.runs):
            for step, (n, c, client, form) in enumerate(plan, start=1):
                measured = measure(
                    client, form, sizes[n][form], targets, c, args, server.process.pid
                )
                key = f"{n} rows"
                cell = cells.setdefault(key, {}).setdefault(f"{client}:{form}", {})
                cell.setdefault(f"c{c}", []).append(measured)
                _progress(
                    f"run {run + 1}/{args.runs} [{step}/{len(plan)}] {n} rows c{c} {client} "
                    f"{form}: {measured['req_per_s']:,.0f} req/s, p50 {measured['p50_ms']} ms"
                )
    versions = ["loadonce", "grpcio", "protobuf", "aiohttp", "tritonclient", "uvicorn"]
    return {
        "date": datetime.date.today().isoformat(),
        "cpu": cpu_name(),
        "load_average": os.getloadavg(),
        "model": args.model,
        "max_batch_size": MAX_BATCH_SIZE,
        "max_queue": max_queue,
        "seconds": args.seconds,
        "warmup": args.warmup,
        "runs": args.runs,
        "versions": {name: importlib.metadata.version(name) for name in versions},
        "forms": FORMS,
        "body_bytes": {
            f"{n} rows": {f: b["bytes"] for f, b in s.items()} for n, s in sizes.items()
        },
        "cells": cells,
    }


def _num(value: float | None, digits: int = 1) -> str:
    return "n/a" if value is None else f"{value:,.{digits}f}"


def _cells(runs: list[dict[str, Any]], python: bool) -> list[str]:
    """req/s of each run, then the better run's p50, p99, client CPU and server CPU."""
    rates = " / ".join(f"{r['req_per_s']:,.0f}" for r in runs)
    best = max(runs, key=lambda r: r["req_per_s"])
    errors = sum(r["errors"] for r in runs)
    client = " / ".join(f"{r['client_cpu']:.2f}" for r in runs) if python else "(wrk)"
    waited = " / ".join(f"{r['client_runqueue']:.2f}" for r in runs) if python else ""
    server = _num(best["server_cpu_ms_per_request"], 3)
    batch = _num(best["examples_per_call"], 1)
    return [
        rates, _num(best["p50_ms"], 2), _num(best["p99_ms"], 1), client, waited, server, batch,
        str(errors),
    ]  # fmt: skip


def render(results: dict[str, Any]) -> str:
    versions = ", ".join(f"{k} {v}" for k, v in results["versions"].items())
    load = ", ".join(f"{x:.1f}" for x in results["load_average"])
    lines = [
        f"Run of {results['date']} on {results['cpu']} (load average at the end {load}); "
        f"{results['model']}, batching on (max_batch_size {results['max_batch_size']}, "
        f"fill_wait_ms {FILL_WAIT_MS}, max_queue {results['max_queue']}), one "
        f"worker on core {SERVER_CORE}, clients on core {LOAD_CORE}; "
        f"{results['runs']} run(s) of {results['seconds']:g} s per cell, each after a "
        f"{results['warmup']:g} s warm-up. Versions: {versions}.",
        "",
    ]
    for size, entries in results["cells"].items():
        sizes = ", ".join(f"{f} {b:,} B" for f, b in results["body_bytes"][size].items())
        lines += [
            f"**{size} per request** (request bodies: {sizes})",
            "",
            "| client | request form | conns | req/s (run 1 / 2) | p50 ms | p99 ms "
            "| client CPU (run 1 / 2) | client waiting for a CPU | server CPU ms/req "
            "| examples per model call | errors |",
            "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for c in CONNECTIONS:
            for key, runs in entries.items():
                client, form = key.split(":")
                cells = _cells(runs[f"c{c}"], client == "python")
                label = "Python (aiohttp / grpc.aio)" if client == "python" else "wrk"
                lines.append(f"| {label} | {FORMS[form]} | {c} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def chart(results: dict[str, Any], out: Path) -> None:
    """Requests per second per form at 64 connections and p50 at 1, per tensor size (the
    better run; the other as a tick)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours = {"grpc": "#1b7837", "rest-binary": "#2166ac", "rest-json": "#999999"}
    sizes = list(results["cells"])
    figure, axes = plt.subplots(len(sizes), 2, figsize=(13, 2.4 * len(sizes) + 0.8))
    axes = np.atleast_2d(axes)
    for row, size in enumerate(sizes):
        entries = results["cells"][size]
        keys = list(entries)
        names = [
            ("Python: " if k.startswith("python") else "wrk: ") + FORMS[k.split(":")[1]]
            for k in keys
        ]
        colour = [colours[k.split(":")[1]] for k in keys]
        hatch = ["" if k.startswith("python") else "//" for k in keys]
        for column, (c, field, pick) in enumerate(((64, "req_per_s", max), (1, "p50_ms", min))):
            axis = axes[row][column]
            values = [[r[field] or 0.0 for r in entries[k][f"c{c}"]] for k in keys]
            bars = axis.barh(names, [pick(v) for v in values], color=colour)
            for bar, pattern in zip(bars, hatch, strict=True):
                bar.set_hatch(pattern)
            axis.plot([min(v) if pick is max else max(v) for v in values], names, "k|", ms=12)
            axis.invert_yaxis()
            if column:
                axis.set_yticks([])
                axis.set_xlabel(f"p50 ms, 1 connection, {size} per request (bar: better run)")
            else:
                axis.set_xlabel(f"requests/s, 64 in flight, {size} per request (bar: better run)")
    figure.suptitle(f"{results['model']}: gRPC against REST, one loadonce worker on one core")
    figure.tight_layout()
    figure.savefig(out / "bench-grpc.png", dpi=110)
    plt.close(figure)


def parse_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=5, help="each measured run")
    parser.add_argument("--warmup", type=float, default=1.5, help="the warm-up before each")
    parser.add_argument("--runs", type=int, default=2, help="measured runs per cell")
    parser.add_argument("--model", choices=["iris", "forest"], default="iris")
    parser.add_argument(
        "--rows", default="1,64", help="examples per request, comma-separated (1,64)"
    )
    parser.add_argument(
        "--quick", action="store_true", help="a smoke run: 1 s runs, 0.5 s warm-up, one run"
    )
    args = parser.parse_args(argv)
    args.rows = [int(n) for n in args.rows.split(",")]
    if args.quick:
        args.seconds, args.warmup, args.runs = 1, 0.5, 1
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_arguments(argv)
    if shutil.which("wrk") is None or shutil.which("taskset") is None:
        sys.exit("bench needs wrk and taskset: apt-get install wrk util-linux")
    RESULTS.mkdir(parents=True, exist_ok=True)
    results = run_all(args)
    name = "grpc-quick" if args.quick else "grpc"
    (RESULTS / f"{name}.json").write_text(json.dumps(results, indent=2))
    (RESULTS / f"{name}.md").write_text(render(results))
    if not args.quick:
        chart(results, RESULTS)
    print(render(results))
    return results


if __name__ == "__main__":
    main()
