"""What tracing costs the event loop, in instructions: the in-process workload of
`bench/tracing_inprocess.py` (the forest's JSON route called as ASGI 64 requests at a time,
as `loadonce serve` hands requests over), one process per variant run under valgrind's
callgrind, which counts the instructions of the event loop's thread while the measured
requests run (instrumentation switched on after the app started and warmed up, off after).

Counts, unlike times, do not drift with what else the machine is doing: a difference of a few
thousand instructions a request is seen on a shared machine where times drift by 5%. They
miss what instructions wait for (memory, the CPU's caches), so a saving they show is one a
time measurement must still confirm. The collector is off while the requests run (spans wait
for the export thread for as long as valgrind's slowness makes the batch processor's 5 s
delay, and its collections would differ between variants for that reason).

Needs valgrind (`apt-get install valgrind`). About 3 minutes a variant at 2,000 requests.

    python -m bench.tracing_instructions [--variants off,0,0.1] [--requests 2000]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from http.server import ThreadingHTTPServer
from pathlib import Path

WARM_UP_REQUESTS = 1000


def child(variant: str, requests: int, markers: Path) -> None:
    """Serve ``requests`` requests with the variant's app once told to (``markers``)."""
    from bench.models import build
    from bench.tracing import CONNECTIONS, _Receiver
    from bench.tracing_inprocess import app_for, one_request

    logging.getLogger("loadonce.access").setLevel(logging.WARNING)
    receiver = ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    endpoint = f"http://127.0.0.1:{receiver.server_address[1]}/v1/traces"
    os.environ["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"] = endpoint
    artifact, row = build(markers.parent / "model", ("forest",))["forest"]
    body = json.dumps({"inputs": [list(row)]}).encode()

    async def serve() -> None:
        app = app_for(artifact, variant)
        async with app.router.lifespan_context(app) as state:
            given = dict(state or {})
            limit = asyncio.Semaphore(CONNECTIONS)

            async def limited() -> int:
                async with limit:
                    return await one_request(app, given, body)

            await asyncio.gather(*(limited() for _ in range(WARM_UP_REQUESTS)))
            gc.disable()
            (markers / "ready").touch()
            while not (markers / "go").exists():
                await asyncio.sleep(0.05)
            statuses = await asyncio.gather(*(limited() for _ in range(requests)))
            assert set(statuses) == {200}, set(statuses)
            (markers / "done").touch()
            while (markers / "done").exists():
                await asyncio.sleep(0.05)
            gc.enable()

    asyncio.run(serve())
    receiver.shutdown()


def measure(variant: str, requests: int, folder: Path) -> int:
    """The event loop thread's instructions while ``requests`` requests ran."""
    markers = folder / f"markers-{variant}"
    markers.mkdir(parents=True)
    out = folder / f"callgrind.{variant}"
    command = [
        "valgrind",
        "--tool=callgrind",
        "--instr-atstart=no",
        "--separate-threads=yes",
        f"--callgrind-out-file={out}",
        sys.executable,
        "-m",
        "bench.tracing_instructions",
        "--child",
        variant,
        "--requests",
        str(requests),
        "--markers",
        str(markers),
    ]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        while not (markers / "ready").exists():
            if process.poll() is not None:
                said = process.stderr.read()[-2000:] if process.stderr else b""
                raise RuntimeError(f"variant {variant} ended before it served: {said!r}")
            time.sleep(0.5)
        _control("-i", "on", process.pid)
        (markers / "go").touch()
        while not (markers / "done").exists():
            time.sleep(0.5)
        _control("-d", None, process.pid)  # the counts, dumped before anything else runs
        _control("-i", "off", process.pid)
        (markers / "done").unlink()
        process.wait(timeout=600)
    finally:
        if process.poll() is None:
            process.kill()
    # The dump's file for the first thread (the event loop's): "<out>.1-01".
    for line in Path(f"{out}.1-01").read_text().splitlines():
        if line.startswith("totals:"):
            return int(line.split()[1])
    raise RuntimeError(f"no totals in {out}.1-01")


def _control(option: str, value: str | None, pid: int) -> None:
    arguments = ["callgrind_control", option] + ([value] if value else []) + [str(pid)]
    subprocess.run(arguments, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variants", default="off,0,0.1", help="off, or shares sampled")
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--markers", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child is not None:
        child(args.child, args.requests, args.markers)
        return {}
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        raise SystemExit("needs valgrind: apt-get install valgrind")
    variants = args.variants.split(",")
    per_request: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as folder:
        for variant in variants:
            per_request[variant] = measure(variant, args.requests, Path(folder)) / args.requests
            print(f"{variant:>5}: {per_request[variant]:,.0f} instructions a request", flush=True)
    base = per_request.get("off")
    unsampled = per_request.get("0")
    for variant, count in per_request.items():
        if variant in ("off", "0") or base is None:
            continue
        line = f"{variant:>5}: {count - base:+,.0f} a request against off"
        if unsampled is not None and float(variant) > 0:
            sampled = (count - unsampled) / float(variant)
            line += f"; a sampled request {sampled:+,.0f} against sampling none"
        print(line)
    if base is not None and unsampled is not None:
        print(f"    0: {unsampled - base:+,.0f} a request against off (tracing on, none sampled)")
    return per_request


if __name__ == "__main__":
    main()
