"""Throughput benchmark: loadonce with and without batching against plain FastAPI, in one run.

Run by `make bench`. The server is pinned to core 0 and the load generator (wrk) to core 1;
each measured run follows a warm-up. Writes bench/results/throughput.json and .md.

Variants, per model, one example per request:
  (a) loadonce with batching   (b) loadonce without batching
  (c) FastAPI, `def` handler    (d) FastAPI, `async def` handler calling predict directly
  bounds: the HTTP stack alone (same body parsed, constant answer); the model in-process on
  batches of 32 rows.
Then an overload run of (a) on the forest: an open-loop offered load at 4x what (a) sustained,
for 20 s, with the server's RSS sampled throughout.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2 as httpx
import psutil

from bench.models import TRUSTED_TYPES, build

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
SERVER_CORE, LOAD_CORE = "0", "1"
OVERLOAD_TIMEOUT_S = 0.5
OVERLOAD_MAX_QUEUE = 256


@dataclass
class Variant:
    key: str
    label: str


VARIANTS = [
    Variant("a", "(a) loadonce, batching"),
    Variant("b", "(b) loadonce, no batching"),
    Variant("c", "(c) FastAPI, def handler"),
    Variant("d", "(d) FastAPI, async def handler"),
    Variant("http", "bound: HTTP stack alone"),
]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _loadonce_config(artifact: Path, *, batching: bool, overload: bool = False) -> Path:
    lines = [
        '[server]\nlog_level = "warning"\n',
        "[[models]]",
        'name = "m"',
        f'artifact = "{artifact}"',
        f"options = {{ trusted_types = {json.dumps(TRUSTED_TYPES)} }}",
    ]
    if overload:
        lines += [f"max_queue = {OVERLOAD_MAX_QUEUE}", f"timeout_s = {OVERLOAD_TIMEOUT_S}"]
    if batching:
        lines += ['concurrency = "serialized"', "[models.batching]", "max_batch_size = 64"]
    name = f"{artifact.stem}-{'batching' if batching else 'plain'}{'-overload' if overload else ''}"
    path = RESULTS / f"{name}.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def _server_command(variant: str, artifact: Path, port: int, overload: bool) -> list[str]:
    python = sys.executable
    if variant in ("a", "b"):
        config = _loadonce_config(artifact, batching=variant == "a", overload=overload)
        return [python, "-m", "loadonce", "serve", str(config), "--port", str(port)]
    app = {"c": "sync_app", "d": "async_app", "http": "http_bound"}[variant]
    return [
        python,
        "-m",
        "uvicorn",
        f"bench.plain_apps:{app}",
        "--port",
        str(port),
        "--log-level",
        "warning",
        "--no-access-log",
    ]


@contextmanager
def _server(variant: str, artifact: Path, body: str, overload: bool = False) -> Iterator[Any]:
    port = _free_port()
    command = ["taskset", "-c", SERVER_CORE, *_server_command(variant, artifact, port, overload)]
    env = {**os.environ, "BENCH_ARTIFACT": str(artifact), "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen(command, env=env, cwd=ROOT, stdout=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/models/m/predict"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                response = httpx.post(
                    url, content=body, headers={"content-type": "application/json"}
                )
                if response.status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{variant} server did not start")
            time.sleep(0.1)
        yield process, port, url
    finally:
        process.terminate()
        process.wait(60)


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0, "m": 60_000.0}


def _ms(text: str | None) -> float | None:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text or "")
    return float(match.group(1)) * _UNITS[match.group(2)] if match else None


def _wrk(
    url: str, body: str, connections: int, seconds: int, env: dict[str, str] | None = None
) -> dict[str, Any]:
    """wrk's req/s, p50, p99 and errors; ``env`` sets post.lua's other BENCH_ variables."""
    command = [
        "taskset", "-c", LOAD_CORE, "wrk", "-t1", f"-c{connections}", f"-d{seconds}s",
        "--latency", "--timeout", "10s", "-s", str(ROOT / "bench" / "post.lua"), url,
    ]  # fmt: skip
    output = subprocess.run(
        command,
        env={**os.environ, "BENCH_BODY": body, **(env or {})},
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    percentiles = dict(re.findall(r"^\s+(50|99)%\s+(\S+)$", output, re.MULTILINE))
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    socket_errors = re.search(r"Socket errors: (.*)$", output, re.MULTILINE)
    requests_per_s = re.search(r"Requests/sec:\s+([\d.]+)", output)
    if requests_per_s is None:
        raise RuntimeError(f"cannot read wrk's output:\n{output}")
    return {
        "req_per_s": float(requests_per_s.group(1)),
        "p50_ms": _ms(percentiles.get("50")),
        "p99_ms": _ms(percentiles.get("99")),
        "errors": (int(non_2xx.group(1)) if non_2xx else 0),
        "socket_errors": socket_errors.group(1) if socket_errors else "none",
    }


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


def _overload(artifact: Path, body: str, rate: float, seconds: int) -> dict[str, Any]:
    with _server("a", artifact, body, overload=True) as (process, port, _):
        server = psutil.Process(process.pid)
        samples: list[int] = []
        done = threading.Event()

        def sample() -> None:
            while not done.is_set():
                samples.append(server.memory_info().rss)
                time.sleep(0.25)

        sampler = threading.Thread(target=sample)
        sampler.start()
        command = ["taskset", "-c", LOAD_CORE, sys.executable, "-m", "bench.overload"]
        output = subprocess.run(
            [*command, "127.0.0.1", str(port), str(rate), str(seconds), body],
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        done.set()
        sampler.join()
    summary: dict[str, Any] = json.loads(output)
    mib = 1 << 20
    summary.update(
        timeout_ms=OVERLOAD_TIMEOUT_S * 1000,
        max_queue=OVERLOAD_MAX_QUEUE,
        rss_start_mib=samples[0] / mib,
        rss_peak_mib=max(samples) / mib,
        rss_end_mib=samples[-1] / mib,
    )
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=int, default=10, help="each measured wrk run")
    parser.add_argument("--warmup", type=int, default=3, help="each warm-up wrk run")
    parser.add_argument("--overload-seconds", type=int, default=20)
    parser.add_argument(
        "--overload-only", type=float, metavar="RATE", help="only the overload run, at RATE"
    )
    args = parser.parse_args()
    if shutil.which("wrk") is None or shutil.which("taskset") is None:
        sys.exit("bench needs wrk and taskset: apt-get install wrk util-linux")
    RESULTS.mkdir(parents=True, exist_ok=True)
    models = build(RESULTS / "models")
    if args.overload_only:
        artifact, row = models["forest"]
        body = json.dumps({"inputs": [row.tolist()]})
        print(_overload(artifact, body, args.overload_only, args.overload_seconds))
        return
    results: dict[str, Any] = {"cpu": _cpu_name(), "models": {}}
    for model, (artifact, row) in models.items():
        body = json.dumps({"inputs": [row.tolist()]})
        entry: dict[str, Any] = {"inprocess_rows_per_s": _inprocess_bound(artifact, row.tolist())}
        for variant in VARIANTS:
            with _server(variant.key, artifact, body) as (_, _, url):
                for connections in (64, 1):
                    _wrk(url, body, connections, args.warmup)
                    measured = _wrk(url, body, connections, args.seconds)
                    entry[f"{variant.key}_c{connections}"] = measured
                    print(model, variant.label, f"c{connections}", measured, flush=True)
        results["models"][model] = entry
    forest_artifact, forest_row = models["forest"]
    sustained = results["models"]["forest"]["a_c64"]["req_per_s"]
    body = json.dumps({"inputs": [forest_row.tolist()]})
    results["overload"] = _overload(forest_artifact, body, 4 * sustained, args.overload_seconds)
    print("overload", results["overload"], flush=True)
    (RESULTS / "throughput.json").write_text(json.dumps(results, indent=2))
    (RESULTS / "throughput.md").write_text(render(results))
    print(render(results))


def _cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown"


def _num(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def render(results: dict[str, Any]) -> str:
    lines = [f"CPU: {results['cpu']}; server on core {SERVER_CORE}, wrk on core {LOAD_CORE}.", ""]
    for model, entry in results["models"].items():
        lines += [
            f"**{model}** (in-process bound: {entry['inprocess_rows_per_s']:,.0f} rows/s "
            "on batches of 32)",
            "",
            "| variant | c64 req/s | c64 p50 ms | c64 p99 ms | c64 errors "
            "| c1 req/s | c1 p50 ms | c1 p99 ms | c1 errors |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for variant in VARIANTS:
            many, one = entry[f"{variant.key}_c64"], entry[f"{variant.key}_c1"]
            cells = [variant.label]
            for run in (many, one):
                cells += [f"{run['req_per_s']:,.0f}", _num(run["p50_ms"]), _num(run["p99_ms"])]
                cells.append(str(run["errors"]))
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    overload = results["overload"]
    lines += [
        f"**overload** (forest, (a), max_queue {overload['max_queue']}, timeout_s "
        f"{overload['timeout_ms'] / 1000:g}): offered {overload['offered_rate']:,.0f} req/s "
        f"open-loop ({overload['achieved_offered_rate']:,.0f} req/s left the generator); "
        f"statuses {overload['statuses']}; 200s: {overload['ok_per_s']:,.0f}/s, latency "
        f"from send p50 {overload['ok_p50_from_send_ms']:.1f} ms, p99 "
        f"{overload['ok_p99_from_send_ms']:.1f} ms; from when due p50 "
        f"{overload['ok_p50_ms']:.1f} ms, p99 {overload['ok_p99_ms']:.1f} ms; server RSS "
        f"start {overload['rss_start_mib']:.0f} MiB, peak {overload['rss_peak_mib']:.0f} MiB, "
        f"end {overload['rss_end_mib']:.0f} MiB.",
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
