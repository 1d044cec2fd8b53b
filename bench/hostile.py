"""What hostile and maximal requests cost a running `loadonce serve --demo` (one worker):

- ``/livez`` latency while 4 clients send valid 60 MB JSON bodies to the predict route, and
  while they send /v2 bodies that declare huge BYTES shapes;
- the worker's RSS over 1,000 hostile /v2 requests;
- the worker's RSS while 30 clients each hold 60 MiB of a 64 MiB body (they send it, then
  stall), and how many of them the worker refused (``max_body_bytes_in_flight``).

    python -m bench.hostile [--src PATH]

``--src``: run another checkout's ``src`` (a git worktree of an older revision), to compare.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx2 as httpx
import psutil

HUGE_BYTES = json.dumps(
    {
        "inputs": [
            {
                "name": "input",
                "shape": [2 * 10**8],
                "datatype": "BYTES",
                "parameters": {"binary_data_size": 8},
            }
        ]
    }
).encode()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _livez_latencies(url: str, seconds: float) -> list[float]:
    found: list[float] = []
    deadline = time.monotonic() + seconds
    with httpx.Client(timeout=60) as client:
        while time.monotonic() < deadline:
            started = time.perf_counter()
            client.get(f"{url}/livez")
            found.append((time.perf_counter() - started) * 1000)
            time.sleep(0.01)
    return found


def _under(url: str, send: object, seconds: float) -> list[float]:
    assert callable(send)
    done = threading.Event()

    def loop() -> None:
        with httpx.Client(timeout=120) as client:
            while not done.is_set():
                send(client)

    senders = [threading.Thread(target=loop) for _ in range(4)]
    for sender in senders:
        sender.start()
    try:
        return _livez_latencies(url, seconds)
    finally:
        done.set()
        for sender in senders:
            sender.join()


def _summary(latencies: list[float]) -> dict[str, float]:
    ordered = sorted(latencies)
    return {
        "p50_ms": round(statistics.median(ordered), 2),
        "p99_ms": round(ordered[int(len(ordered) * 0.99) - 1], 2),
        "max_ms": round(ordered[-1], 2),
        "probes": len(ordered),
    }


def _within_limits(env: dict[str, str], cache: str, body: bytes, seconds: float) -> object:
    """The same bodies to a model that takes them all (max_queue above their examples): each
    is parsed, predicted and answered."""
    [artifact] = Path(cache).glob("demo-iris-*.skops")
    config = Path(cache) / "within.toml"
    config.write_text(f'[[models]]\nname = "iris"\nartifact = "{artifact}"\nmax_queue = 2000000\n')
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(
        [sys.executable, "-m", "loadonce", "serve", str(config), "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_ready(url)
        statuses: dict[int, int] = {}

        def send(client: httpx.Client) -> None:
            status = client.post(f"{url}/models/iris/predict", content=body).status_code
            statuses[status] = statuses.get(status, 0) + 1

        summary: dict[str, object] = dict(_summary(_under(url, send, seconds)))
        summary["statuses"] = statuses
        return summary
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(60)


HELD_CLIENTS = 30
HELD_MIB = 60


def _bodies_held(port: int, worker: psutil.Process) -> dict[str, object]:
    """HELD_CLIENTS clients send HELD_MIB MiB of a 64 MiB body each, then stall: the worker's
    RSS once they all sent, and how many were answered (a 503) before their body ended."""
    before = worker.memory_info().rss
    chunk = b"1," * (1 << 19)  # 1 MiB
    held: list[socket.socket] = []

    def client() -> None:
        connection = socket.create_connection(("127.0.0.1", port))
        connection.sendall(
            b"POST /models/iris/predict HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n[" % (64 << 20)
        )
        try:
            for _ in range(HELD_MIB):
                connection.sendall(chunk)
        except OSError:
            pass  # refused and closed while sending
        held.append(connection)

    clients = [threading.Thread(target=client) for _ in range(HELD_CLIENTS)]
    for started in clients:
        started.start()
    for finished in clients:
        finished.join()
    time.sleep(2)
    peak = worker.memory_info().rss
    refused = 0
    for connection in held:
        connection.setblocking(False)
        with contextlib.suppress(OSError):
            refused += connection.recv(64).startswith(b"HTTP/1.1 503")
        connection.close()
    return {
        "rss_mib": [round(before / 2**20), round(peak / 2**20)],
        "refused": refused,
        "clients": HELD_CLIENTS,
    }


def _wait_ready(url: str) -> None:
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(f"{url}/readyz").status_code == 200:
                return
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, "the server did not start"
        time.sleep(0.1)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--src", type=Path, default=Path(__file__).resolve().parent.parent / "src")
    parser.add_argument("--seconds", type=float, default=15)
    args = parser.parse_args()
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "PYTHONPATH": str(args.src.resolve()), "LOADONCE_LOG_LEVEL": "warning"}
    with tempfile.TemporaryDirectory() as cache:
        env["LOADONCE_CACHE_DIR"] = cache
        server = subprocess.Popen(
            [sys.executable, "-m", "loadonce", "serve", "--demo", "--port", str(port)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            _wait_ready(url)
            body = json.dumps({"inputs": [[5.1, 3.5, 1.4, 0.2]] * 1_400_000}).encode()
            results: dict[str, object] = {"body_mb": round(len(body) / 1e6, 1)}
            results["idle"] = _summary(_livez_latencies(url, 3))
            headers = {"Inference-Header-Content-Length": str(len(HUGE_BYTES))}
            hostile = HUGE_BYTES + b"\x04\0\0\0abcd"
            worker = psutil.Process(server.pid)
            rss = [worker.memory_info().rss]
            with httpx.Client(timeout=120) as client:
                statuses: dict[int, int] = {}
                for index in range(1000):
                    status = client.post(
                        f"{url}/v2/models/iris/infer", content=hostile, headers=headers
                    ).status_code
                    statuses[status] = statuses.get(status, 0) + 1
                    if index % 250 == 249:
                        rss.append(worker.memory_info().rss)
            results["hostile_rss_mib"] = [round(r / 2**20) for r in rss]
            results["hostile_statuses"] = statuses
            results["bodies_held"] = _bodies_held(port, worker)
            results["large_json"] = _summary(
                _under(
                    url, lambda c: c.post(f"{url}/models/iris/predict", content=body), args.seconds
                )
            )
            results["large_json_within_limits"] = _within_limits(env, cache, body, args.seconds)
            print(json.dumps(results, indent=2))
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(60)


if __name__ == "__main__":
    main()
