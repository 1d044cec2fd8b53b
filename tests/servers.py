"""Real servers for tests: uvicorn in a thread, or the `loadonce` CLI in a subprocess.

Both use a port chosen by the kernel and poll until the server answers: no fixed ports and no
sleeping in the hope that it started.
"""

from __future__ import annotations

import asyncio
import atexit
import functools
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

import httpx2 as httpx
import uvicorn
from starlette.types import ASGIApp

REPO_ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def wait_until(condition: object, timeout: float, what: str) -> None:
    assert callable(condition)
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)


class ThreadedServer:
    """uvicorn serving ``app`` in a thread of the test process, on a socket bound up front.

    The socket is bound but only listens once the app's lifespan has finished, exactly as in
    `loadonce serve`, so the port is known before startup and can be probed during it.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        root_path: str = "",
        host: str = "127.0.0.1",
        http: type[asyncio.Protocol] | str = "auto",
    ) -> None:
        """``root_path``: as uvicorn's ``--root-path`` behind a proxy that strips the prefix.
        ``host``: the address bound (``url`` reaches it through 127.0.0.1 whatever it is).
        ``http``: uvicorn's HTTP protocol (``loadonce serve``'s: ``guarded_protocol``)."""
        self._socket = socket.socket()
        self._socket.bind((host, 0))
        self.port: int = self._socket.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(
            app, log_level="warning", lifespan="on", root_path=root_path, http=http
        )
        self.server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self._socket]}, daemon=True
        )

    def start(self, *, wait: bool = True, timeout: float = 30) -> None:
        self._thread.start()
        if wait:
            self.wait_started(timeout)

    def wait_started(self, timeout: float = 30) -> None:
        wait_until(lambda: self.server.started, timeout, "the threaded server to start")

    def stop(self) -> None:
        self.server.should_exit = True
        self._thread.join(timeout=30)
        self._socket.close()

    def __enter__(self) -> ThreadedServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@dataclass
class CliServer:
    process: subprocess.Popen[bytes]
    port: int
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@functools.cache
def _trained_demo() -> Path:
    """The demo model, trained once per test session (training imports scikit-learn, seconds
    of CPU) in a directory removed when the session ends."""
    from loadonce.server.demo import demo_artifact

    directory = tempfile.mkdtemp(prefix="loadonce-test-demo-")
    atexit.register(shutil.rmtree, directory, ignore_errors=True)
    with mock.patch.dict(os.environ, {"LOADONCE_CACHE_DIR": directory}):
        return demo_artifact()


def demo_cache(tmp_path: Path) -> Path:
    """``tmp_path/cache``, a private demo cache holding a copy of the session's trained demo,
    so that `--demo` starts without training (tests/test_demo.py covers the training)."""
    cache = tmp_path / "cache"
    trained = _trained_demo()
    if not (cache / trained.name).exists():
        cache.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(trained, cache / trained.name)
    return cache


def cli_env(
    tmp_path: Path, extra: dict[str, str] | None = None, *, trained_demo: bool = True
) -> dict[str, str]:
    """The environment of a `loadonce` subprocess: tests importable, a private demo cache
    (holding the demo already trained, unless ``trained_demo`` is False)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOADONCE_")}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), env.get("PYTHONPATH", "")])
    cache = demo_cache(tmp_path) if trained_demo else tmp_path / "cache"
    env["LOADONCE_CACHE_DIR"] = str(cache)
    # Tests stop their servers with SIGTERM and need not wait out the readiness window;
    # tests/hostile/test_draining.py covers it.
    env["LOADONCE_STOP_DELAY_S"] = "0"
    env.update(extra or {})
    return env


def run_cli(
    tmp_path: Path,
    *args: str,
    timeout: float = 180,
    cwd: Path = REPO_ROOT,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run `python -m loadonce ARGS` to completion (from the repository unless ``cwd`` says
    where), output captured; ``env``: variables added to ``cli_env``'s."""
    return subprocess.run(
        [sys.executable, "-m", "loadonce", *args],
        env=cli_env(tmp_path, env),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def run_python(
    tmp_path: Path, script: str, *args: str, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """Run ``script`` (``python -c``) to completion in a new interpreter with ``cli_env``'s
    environment, from the repository, output captured."""
    return subprocess.run(
        [sys.executable, "-c", script, *args],
        env=cli_env(tmp_path),
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def start_cli(
    args: Sequence[str],
    tmp_path: Path,
    *,
    env: dict[str, str] | None = None,
    port: int | None = None,
) -> CliServer:
    """Start `python -m loadonce serve ARGS` with its output in a file (a pipe could fill up).

    Unless ``port`` is given (the test sets the port its own way), a free one is passed.
    """
    args = list(args)
    if port is None:
        port = free_port()
        args += ["--port", str(port)]
    log_path = tmp_path / f"server-{port}.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "loadonce", "serve", *args],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env if env is not None else cli_env(tmp_path),
            cwd=tmp_path,
        )
    return CliServer(process=process, port=port, log_path=log_path)


def wait_ready(server: CliServer, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    # One client for every probe: each of httpx's own get() builds a TLS context (about 20 ms
    # of CPU), taken from the server starting up beside it.
    with httpx.Client(timeout=1) as client:
        while time.monotonic() < deadline:
            if server.process.poll() is not None:
                code = server.process.returncode
                raise AssertionError(f"server exited with {code}:\n{server.log()}")
            try:
                if client.get(f"{server.url}/readyz").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.05)
    raise TimeoutError(f"server not ready after {timeout} s:\n{server.log()}")


def stop(server: CliServer, timeout: float = 30) -> int:
    if server.process.poll() is None:
        server.process.send_signal(signal.SIGTERM)
    try:
        return server.process.wait(timeout)
    except subprocess.TimeoutExpired:
        server.process.kill()
        server.process.wait()
        raise AssertionError(f"server did not stop on SIGTERM:\n{server.log()}") from None


@contextmanager
def serving(
    args: Sequence[str],
    tmp_path: Path,
    *,
    env: dict[str, str] | None = None,
    port: int | None = None,
) -> Iterator[CliServer]:
    server = start_cli(args, tmp_path, env=env, port=port)
    try:
        wait_ready(server)
        yield server
    finally:
        stop(server)


class ConnectionProbe:
    """Tries to connect to a port over and over, in a thread, and remembers any success."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.attempts = 0
        self.accepted = 0
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._done.is_set():
            self.attempts += 1
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    self.accepted += 1
            except OSError:
                pass
            time.sleep(0.01)

    def __enter__(self) -> ConnectionProbe:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join()
