"""A closed-loop load generator in Python for the Open Inference Protocol over gRPC and REST,
so that both protocols are measured by the same harness (wrk speaks no gRPC).

`python -m bench.loadgen KIND TARGET BODY_FILE --connections N --seconds S` keeps N requests
in flight for S seconds (after a warm-up of the same shape), each sent again as soon as its
answer is read, and prints one JSON object: requests per second, p50 and p99 latency, errors,
and the generator's own CPU use (``client_cpu``: CPU seconds per wall second; near 1.0 the
generator's core, not the server, is the limit; ``client_runqueue``: seconds per wall second
its threads were runnable but waited for the CPU, which other processes on a shared machine
cause). KIND:

- ``grpc``: TARGET ``host:port``; BODY_FILE a serialized ``inference.ModelInferRequest`` (sent
  as is, the bytes a tritonclient.grpc client sends); N concurrent RPCs on one ``grpc.aio``
  channel (HTTP/2 multiplexes them over one connection, as one tritonclient client does);
- ``rest-binary``: TARGET the /v2 infer URL; BODY_FILE a JSON header then the binary tensor;
  ``--header-length`` the header's length (Inference-Header-Content-Length);
- ``rest-json``: TARGET the URL; BODY_FILE a JSON body.

REST runs on aiohttp, N keep-alive connections. Answers are read whole but not decoded (the
harness checks one answer of each kind before measuring); a non-OK status counts as an error.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import numpy as np

MODEL_INFER = "/inference.GRPCInferenceService/ModelInfer"

Send = Callable[[], Awaitable[bool]]  # one request; True when answered OK


def _runqueue() -> float:
    """Seconds this process's threads have waited, runnable, for a CPU (Linux schedstat):
    on a shared machine, the generator's core was busy with something else that long."""
    total = 0
    for stat in Path("/proc/self/task").glob("*/schedstat"):
        try:
            total += int(stat.read_text().split()[1])
        except (OSError, IndexError, ValueError):
            continue  # a thread that ended meanwhile
    return total / 1e9


def _identity(data: bytes) -> bytes:
    return data


async def _drive(send: Send, connections: int, warmup_s: float, seconds: float) -> dict[str, Any]:
    """N loops, each sending as soon as its last answer came; the answers (OK ones: errors are
    only counted) to the requests that started inside the measured window (after the
    warm-up)."""
    loop = asyncio.get_running_loop()
    start = loop.time() + warmup_s
    end = start + seconds
    latencies: list[float] = []
    errors = total = 0

    async def one_loop() -> None:
        nonlocal errors, total
        while True:
            sent = time.perf_counter()
            now = loop.time()
            if now >= end:
                return
            try:
                ok = await send()
            except Exception:
                ok = False
            total += 1
            if now >= start:
                if ok:
                    latencies.append(time.perf_counter() - sent)
                else:
                    errors += 1

    await asyncio.sleep(0)
    tasks = [asyncio.create_task(one_loop()) for _ in range(connections)]
    await asyncio.sleep(max(0.0, start - loop.time()))
    cpu_start, wall_start, queue_start = time.process_time(), time.perf_counter(), _runqueue()
    await asyncio.gather(*tasks)
    cpu = time.process_time() - cpu_start
    queued = _runqueue() - queue_start
    wall = time.perf_counter() - wall_start
    answered = np.asarray(latencies) * 1000
    return {
        "requests": len(latencies),
        "requests_with_warmup": total,
        "req_per_s": len(latencies) / wall,
        "p50_ms": float(np.percentile(answered, 50)) if len(answered) else None,
        "p99_ms": float(np.percentile(answered, 99)) if len(answered) else None,
        "errors": errors,
        "client_cpu": cpu / wall,
        "client_runqueue": queued / wall,
    }


async def run_grpc(
    target: str, body: bytes, connections: int, warmup_s: float, seconds: float
) -> dict[str, Any]:
    import grpc

    async with grpc.aio.insecure_channel(target) as channel:
        call = channel.unary_unary(
            MODEL_INFER, request_serializer=_identity, response_deserializer=_identity
        )

        async def send() -> bool:
            await call(body)  # raises grpc.aio.AioRpcError on any status but OK
            return True

        return await _drive(send, connections, warmup_s, seconds)


async def run_rest(
    url: str,
    body: bytes,
    headers: dict[str, str],
    connections: int,
    warmup_s: float,
    seconds: float,
) -> dict[str, Any]:
    import aiohttp

    connector = aiohttp.TCPConnector(limit=connections, force_close=False)
    async with aiohttp.ClientSession(connector=connector, skip_auto_headers=["User-Agent"]) as s:

        async def send() -> bool:
            async with s.post(url, data=body, headers=headers) as answer:
                await answer.read()
                return answer.status == 200

        return await _drive(send, connections, warmup_s, seconds)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("kind", choices=["grpc", "rest-binary", "rest-json"])
    parser.add_argument("target", help="host:port (grpc) or the URL (rest-*)")
    parser.add_argument("body_file", type=Path)
    parser.add_argument("--connections", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=5)
    parser.add_argument("--warmup", type=float, default=1)
    parser.add_argument("--header-length", type=int, help="rest-binary: the JSON header's length")
    args = parser.parse_args(argv)
    body = args.body_file.read_bytes()
    if args.kind == "grpc":
        coroutine = run_grpc(args.target, body, args.connections, args.warmup, args.seconds)
    else:
        headers = {"Content-Type": "application/json"}
        if args.kind == "rest-binary":
            headers = {
                "Content-Type": "application/octet-stream",
                "Inference-Header-Content-Length": str(args.header_length),
            }
        coroutine = run_rest(
            args.target, body, headers, args.connections, args.warmup, args.seconds
        )
    print(json.dumps(asyncio.run(coroutine)))


if __name__ == "__main__":
    main()
