"""The gRPC stack alone: a bare ``grpc.aio`` server whose ModelInfer answers every call with
the same prebuilt response (no decoding, no model), on asyncio's own loop and on uvloop
(loadonce's: uvicorn picks uvloop when it is installed, and loadonce's gRPC server runs on
uvicorn's loop). Driven by `bench/loadgen.py` with the same request as `bench/grpc_rest.py`.

`python -m bench.grpc_bound` (about a minute): server on core 0, generator on core 1, 1 and
64 calls in flight, a warm-up then one measured run each; prints a table and writes
bench/results/grpc-bound.json. `python -m bench.grpc_bound --serve LOOP PORT` is the server.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np

from bench.grpc_rest import _wait_for_grpc, grpc_request
from bench.servers import LOAD_CORE, RESULTS, ROOT, SERVER_CORE, free_port, tree_cpu_seconds


def _identity(data: bytes) -> bytes:
    return data


async def serve(port: int) -> None:
    import grpc
    from tritonclient.grpc import service_pb2

    response = service_pb2.ModelInferResponse(model_name="m", model_version="1")
    response.outputs.add(name="label", datatype="INT64", shape=[1])
    response.raw_output_contents.append(np.zeros(1, dtype="<i8").tobytes())
    answer: bytes = response.SerializeToString()

    async def model_infer(request: bytes, context: Any) -> bytes:
        return answer

    server = grpc.aio.server()
    handler = grpc.unary_unary_rpc_method_handler(
        model_infer, request_deserializer=_identity, response_serializer=_identity
    )
    server.add_generic_rpc_handlers(
        [grpc.method_handlers_generic_handler("inference.GRPCInferenceService",
                                              {"ModelInfer": handler})]
    )  # fmt: skip
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await server.wait_for_termination()


def _run_server(loop: str, port: int) -> None:
    if loop == "uvloop":
        import uvloop

        uvloop.run(serve(port))
    else:
        asyncio.run(serve(port))


def measure(loop: str, body_file: Path, seconds: float, warmup: float) -> dict[str, Any]:
    port = free_port()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)])}
    server = subprocess.Popen(
        ["taskset", "-c", SERVER_CORE, sys.executable, "-m", "bench.grpc_bound", "--serve",
         loop, str(port)],
        cwd=ROOT, env=env,
    )  # fmt: skip
    results: dict[str, Any] = {}
    try:
        _wait_for_grpc(f"127.0.0.1:{port}")
        for connections in (1, 64):
            generator = [
                "taskset", "-c", LOAD_CORE, sys.executable, "-m", "bench.loadgen", "grpc",
                f"127.0.0.1:{port}", str(body_file), "--connections", str(connections),
            ]  # fmt: skip
            subprocess.run(
                [*generator, "--seconds", f"{warmup:g}", "--warmup", "0"],
                check=True, capture_output=True, cwd=ROOT, env=env,
            )  # fmt: skip
            before = tree_cpu_seconds(server.pid)
            output = subprocess.run(
                [*generator, "--seconds", f"{seconds:g}", "--warmup", "0.5"],
                check=True, capture_output=True, text=True, cwd=ROOT, env=env,
            ).stdout  # fmt: skip
            measured = json.loads(output)
            cpu = tree_cpu_seconds(server.pid) - before
            measured["server_cpu_ms_per_request"] = 1000 * cpu / measured["requests_with_warmup"]
            results[f"c{connections}"] = measured
            print(
                f"{loop} c{connections}: {measured['req_per_s']:,.0f} req/s, p50 "
                f"{measured['p50_ms']:.2f} ms, p99 {measured['p99_ms']:.2f} ms, client CPU "
                f"{measured['client_cpu']:.2f}, server CPU "
                f"{measured['server_cpu_ms_per_request']:.3f} ms/req, {measured['errors']} errors",
                flush=True,
            )
    finally:
        server.terminate()
        server.wait(10)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--serve", nargs=2, metavar=("LOOP", "PORT"), help=argparse.SUPPRESS)
    parser.add_argument("--seconds", type=float, default=5)
    parser.add_argument("--warmup", type=float, default=1.5)
    args = parser.parse_args()
    if args.serve:
        _run_server(args.serve[0], int(args.serve[1]))
        return
    RESULTS.mkdir(parents=True, exist_ok=True)
    body_file = RESULTS / "grpc-bound.body"
    body_file.write_bytes(grpc_request(np.zeros((1, 4))))
    results: dict[str, Any] = {loop: measure(loop, body_file, args.seconds, args.warmup) for loop in
               ("asyncio", "uvloop")}  # fmt: skip
    results["load_average"] = list(os.getloadavg())
    (RESULTS / "grpc-bound.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
