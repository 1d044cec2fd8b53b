"""What tracing costs the event loop, in one process: the forest of `bench/tracing.py`, batched
the same way, its JSON route called as ASGI 64 requests at a time, by apps that differ only in
tracing (off, or a share of requests sampled), all in ONE process, their rounds alternating.

Two server processes of the same code differ here by a few percent (how their memory happens
to be laid out), as much as what is measured; apps in one process, taking turns, share their
process's luck and the machine's drift, so a microsecond per request shows. The figure is the
median, over the rounds, of the event loop's CPU time per request (``time.thread_time``: the
model's thread and the span exporter's are not in it). Spans go to an OTLP/HTTP receiver run
here, as in `bench/tracing.py`.

    python -m bench.tracing_inprocess [--variants off,0,0.1,1] [--rounds 11] [--requests 10000]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import statistics
import tempfile
import threading
import time
from collections.abc import MutableMapping
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

from fastapi import FastAPI

import loadonce
from bench.models import TRUSTED_TYPES, build
from bench.servers import FILL_WAIT_MS, MAX_BATCH_SIZE
from bench.tracing import CONNECTIONS, _Receiver
from loadonce.http.disconnect import CONNECTION_LOSS_SCOPE_KEY, ConnectionLoss


def app_for(artifact: Path, variant: str) -> FastAPI:
    """The forest served as `bench/tracing.py` serves it; ``variant``: "off", or the share
    of requests sampled."""
    tracing = None
    if variant != "off":
        tracing = loadonce.TracingOptions(enabled=True, sample_ratio=float(variant))
    spec = loadonce.ModelSpec(
        name="m",
        artifact=artifact,
        concurrency="serialized",
        batching={"max_batch_size": MAX_BATCH_SIZE, "fill_wait_ms": FILL_WAIT_MS},
        options={"trusted_types": TRUSTED_TYPES},
    )
    return loadonce.create_app([spec], tracing=tracing)


async def one_request(app: FastAPI, state: dict[str, Any], body: bytes) -> int:
    """One POST /models/m/predict through the app, as `loadonce serve`'s uvicorn would hand
    it over."""
    sent: list[dict[str, Any]] = []
    given = False

    async def receive() -> dict[str, Any]:
        nonlocal given
        if not given:
            given = True
            return {"type": "http.request", "body": body, "more_body": False}
        await asyncio.sleep(3600)  # the client stays
        return {"type": "http.disconnect"}

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(dict(message))

    scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "server": ("127.0.0.1", 8000),
        "client": ("127.0.0.1", 5555),
        "scheme": "http",
        "method": "POST",
        "root_path": "",
        "path": "/models/m/predict",
        "raw_path": b"/models/m/predict",
        "query_string": b"",
        "headers": [
            (b"host", b"127.0.0.1:8000"),
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
        ],
        "state": dict(state),
        # As `loadonce serve`'s HTTP protocol stamps it (the route learns a client left).
        CONNECTION_LOSS_SCOPE_KEY: ConnectionLoss(),
    }
    await app(scope, receive, send)
    status: int = sent[0]["status"]
    return status


async def measure(args: argparse.Namespace) -> dict[str, list[float]]:
    """Each variant's loop CPU µs per request, one figure per round."""
    folder = Path(tempfile.mkdtemp())
    artifact, row = build(folder, ("forest",))["forest"]
    body = json.dumps({"inputs": [list(row)]}).encode()
    runs: dict[str, list[float]] = {variant: [] for variant in args.variants}
    async with contextlib.AsyncExitStack() as stack:
        apps = []
        for variant in args.variants:
            app = app_for(artifact, variant)
            state = await stack.enter_async_context(app.router.lifespan_context(app))
            apps.append((variant, app, dict(state or {})))
        for _, app, state in apps:  # warm up
            for _ in range(1000):
                await one_request(app, state, body)
        for round_ in range(args.rounds):
            for variant, app, state in apps if round_ % 2 == 0 else apps[::-1]:
                limit = asyncio.Semaphore(CONNECTIONS)

                async def limited(
                    app: FastAPI = app,
                    state: dict[str, Any] = state,
                    limit: asyncio.Semaphore = limit,
                ) -> int:
                    async with limit:
                        return await one_request(app, state, body)

                started = time.thread_time()
                statuses = await asyncio.gather(*(limited() for _ in range(args.requests)))
                spent = time.thread_time() - started
                assert set(statuses) == {200}, set(statuses)
                runs[variant].append(spent / args.requests * 1e6)
    return runs


def main(argv: list[str] | None = None) -> dict[str, list[float]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variants", default="off,0,0.1,1", help="off, or shares sampled")
    parser.add_argument("--rounds", type=int, default=11)
    parser.add_argument("--requests", type=int, default=10_000, help="per round and variant")
    args = parser.parse_args(argv)
    args.variants = args.variants.split(",")
    logging.getLogger("loadonce.access").setLevel(logging.WARNING)  # as the benchmark's servers
    receiver = ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    port = receiver.server_address[1]
    os.environ["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"] = f"http://127.0.0.1:{port}/v1/traces"
    runs = asyncio.run(measure(args))
    receiver.shutdown()
    base = statistics.median(runs[args.variants[0]])
    for variant, figures in runs.items():
        median = statistics.median(figures)
        print(
            f"{variant:>5}: {median:6.1f} µs of the loop per request ({median - base:+.1f}); "
            f"rounds {' '.join(f'{figure:.1f}' for figure in figures)}"
        )
    return runs


if __name__ == "__main__":
    main()
