"""The servers the benchmark runs, one at a time, pinned to one core: how to start each, the
URL and body it takes, and its memory once measured.

loadonce's variants differ only in their config (`loadonce_config`): "defaults" declares the
model and nothing else (loadonce batches a scikit-learn model by default: max batch size 64, no
waits); "b" turns batching off (`batching = false`); "a" sets it explicitly (serialized, max
batch size 64, a fill wait). Two bounds: "http", a FastAPI route that parses the body and
answers a constant, and "raw", the floor under any Python server here: a raw ASGI app under the
same uvicorn that reads the body, `json.loads` it and answers a constant."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import httpx2 as httpx
import psutil

from bench.models import TRUSTED_TYPES
from bench.peers import envs, mlserver_settings

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
SERVER_CORE, LOAD_CORE = "0", "1"
MAX_BATCH_SIZE = 64
# loadonce only: under load, a call may wait this long for a fuller batch (an idle model never
# does); the peers' batching windows are 5 ms.
FILL_WAIT_MS = 2
OVERLOAD_TIMEOUT_S = 0.5
OVERLOAD_MAX_QUEUE = 256


@dataclass(frozen=True)
class Variant:
    key: str
    label: str
    family: str  # "loadonce", "fastapi", "litserve", "mlserver" or "bound"


VARIANTS = [
    Variant("anti", "FastAPI, model loaded per request (anti-pattern)", "fastapi"),
    Variant("c", "FastAPI, lifespan + def handler", "fastapi"),
    Variant("d", "FastAPI, lifespan + async def handler", "fastapi"),
    Variant("b", "loadonce, no batching", "loadonce"),
    Variant("a", "loadonce, batching", "loadonce"),
    Variant("defaults", "loadonce, defaults (no options)", "loadonce"),
    Variant("litserve", "LitServe, no batching", "litserve"),
    Variant("litserve_batch", "LitServe, batching", "litserve"),
    Variant("mlserver", "MLServer, no batching", "mlserver"),
    Variant("mlserver_batch", "MLServer, adaptive batching", "mlserver"),
    Variant("http", "bound: FastAPI route, constant answer", "bound"),
    Variant("raw", "bound: raw ASGI app (read, json.loads, constant)", "bound"),
]
# loadonce's variants and the batching each declares (None: the config leaves it unset).
LOADONCE_BATCHING: dict[str, bool | None] = {"a": True, "b": False, "defaults": None}


@dataclass(frozen=True)
class Launch:
    command: list[str]
    url: str
    body: str


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def loadonce_config(artifact: Path, *, batching: bool | None, overload: bool = False) -> Path:
    """A loadonce config serving ``artifact`` as model "m". ``batching``: True, explicit
    batching (serialized, max batch size 64, fill wait); False, ``batching = false``; None,
    nothing said, so loadonce's defaults apply (for scikit-learn: batching, max batch size 64,
    no waits). ``overload``: a short queue and timeout (the overload run)."""
    lines = [
        '[server]\nlog_level = "warning"\n',
        "[[models]]",
        'name = "m"',
        f'artifact = "{artifact}"',
        f"options = {{ trusted_types = {json.dumps(TRUSTED_TYPES)} }}",
    ]
    if overload:
        lines += [f"max_queue = {OVERLOAD_MAX_QUEUE}", f"timeout_s = {OVERLOAD_TIMEOUT_S}"]
    if batching is False:
        lines.append("batching = false")
    elif batching:
        lines += ['concurrency = "serialized"', "[models.batching]"]
        lines += [f"max_batch_size = {MAX_BATCH_SIZE}", f"fill_wait_ms = {FILL_WAIT_MS}"]
    kind = {True: "batching", False: "plain", None: "defaults"}[batching]
    name = f"{artifact.stem}-{kind}{'-overload' if overload else ''}"
    path = RESULTS / f"{name}.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def launch(
    key: str,
    artifact: Path,
    row: list[float],
    port: int,
    overload: bool = False,
    loadonce_module: str = "loadonce",
) -> Launch:
    """How to start variant ``key`` on ``port`` for the model in ``artifact`` (a .skops file,
    with its .joblib twin beside it for the peers). ``loadonce_module``: what runs loadonce's
    command line (``bench.gc_pauses`` times the collector's pauses)."""
    base = f"http://127.0.0.1:{port}"
    body = json.dumps({"inputs": [row]})
    if key in LOADONCE_BATCHING:
        config = loadonce_config(artifact, batching=LOADONCE_BATCHING[key], overload=overload)
        command = [sys.executable, "-m", loadonce_module, "serve", str(config), "--port", str(port)]
        return Launch(command, f"{base}/models/m/predict", body)
    if key == "library":
        command = [
            sys.executable, "-m", "uvicorn", "bench.library_app:app", "--port", str(port),
            "--log-level", "warning", "--no-access-log",
        ]  # fmt: skip
        return Launch(command, f"{base}/models/m/predict", body)
    plain = {
        "anti": "per_request_app",
        "c": "sync_app",
        "d": "async_app",
        "http": "http_bound",
        "raw": "raw_floor",
    }
    if key in plain:
        command = [
            sys.executable, "-m", "uvicorn", f"bench.plain_apps:{plain[key]}", "--port", str(port),
            "--log-level", "warning", "--no-access-log",
        ]  # fmt: skip
        return Launch(command, f"{base}/models/m/predict", body)
    joblib_file = str(artifact.with_suffix(".joblib"))
    batch = MAX_BATCH_SIZE if key.endswith("_batch") else 0
    if key.startswith("litserve"):
        script = str(ROOT / "bench" / "peers" / "litserve_app.py")
        command = [str(envs.python_of("litserve")), script, joblib_file, str(port), str(batch)]
        return Launch(command, f"{base}/predict", body)
    if key.startswith("mlserver"):
        folder = mlserver_settings.write(
            RESULTS / "mlserver" / f"{artifact.stem}-{batch}",
            artifact.with_suffix(".joblib"),
            port=port,
            batch=batch,
        )
        mlserver = envs.python_of("mlserver").parent / "mlserver"
        return Launch(
            [str(mlserver), "start", str(folder)],
            f"{base}/v2/models/m/infer",
            mlserver_settings.request_body(row),
        )
    raise ValueError(f"unknown variant {key!r}")


@dataclass
class Running:
    process: subprocess.Popen[bytes]
    url: str
    body: str


@contextmanager
def running(
    key: str,
    artifact: Path,
    row: list[float],
    overload: bool = False,
    timeout_s: float = 120,
    *,
    env: Mapping[str, str] | None = None,
    loadonce_module: str = "loadonce",
) -> Iterator[Running]:
    """Start the server on the server core; yield once it answers the body with 200.
    ``env``: variables added to the server's environment (a PYTHONPATH in it goes first)."""
    # MLServer takes the two ports after its HTTP port too.
    port = free_port() if not key.startswith("mlserver") else _three_free_ports()
    how = launch(key, artifact, row, port, overload, loadonce_module)
    with serving(key, how, artifact, timeout_s, env=env) as server:
        yield server


@contextmanager
def serving(
    name: str,
    how: Launch,
    artifact: Path,
    timeout_s: float = 120,
    *,
    env: Mapping[str, str] | None = None,
) -> Iterator[Running]:
    """Start ``how.command`` on the server core (BENCH_ARTIFACT naming ``artifact``, its log in
    bench/results/server-NAME.log); yield once it answers ``how.body`` with 200; stop it and
    what it started. For servers ``launch`` does not know (`bench.transformers`)."""
    env = dict(env or {})
    path = os.pathsep.join(filter(None, [env.pop("PYTHONPATH", ""), str(ROOT)]))
    env = {**os.environ, **env, "BENCH_ARTIFACT": str(artifact), "PYTHONPATH": path}
    log = (RESULTS / f"server-{name}.log").open("wb")
    process = subprocess.Popen(
        ["taskset", "-c", SERVER_CORE, *how.command],
        env=env,
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                answer = httpx.post(
                    how.url, content=how.body, headers={"content-type": "application/json"}
                )
                if answer.status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{name} did not start; see {log.name}")
            time.sleep(0.2)
        yield Running(process, how.url, how.body)
    finally:
        _stop(process)
        log.close()


def _three_free_ports() -> int:
    while True:
        port = free_port()
        if port + 2 < 65536 and all(_is_free(port + i) for i in (1, 2)):
            return port


def _is_free(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM the server and what it started (LitServe and MLServer start worker processes)."""
    try:
        tree = [psutil.Process(process.pid), *psutil.Process(process.pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        tree = []
    for member in tree:
        with suppress(psutil.NoSuchProcess):
            member.terminate()
    _, alive = psutil.wait_procs(tree, timeout=30)
    for member in alive:
        member.kill()
    process.wait(30)


def tree_memory_mib(pid: int) -> dict[str, float]:
    """RSS and PSS summed over a server's processes (workers and helpers included)."""
    rss = pss = 0
    root = psutil.Process(pid)
    for member in [root, *root.children(recursive=True)]:
        try:
            info = member.memory_full_info()
        except psutil.NoSuchProcess:
            continue
        rss += info.rss
        pss += getattr(info, "pss", 0)
    return {"rss_mib": rss / 2**20, "pss_mib": pss / 2**20}


def tree_cpu_seconds(pid: int) -> float:
    """User and system CPU seconds used so far by a server's processes. On a shared machine the
    CPU a request costs is steadier than requests per second, which other processes change."""
    root = psutil.Process(pid)
    total = 0.0
    for member in [root, *root.children(recursive=True)]:
        try:
            times = member.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += times.user + times.system
    return total
