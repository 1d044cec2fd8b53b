"""The supervisor survives its fork server's death, replaces a worker that is killed, stopped
or silent, and no worker outlives the supervisor."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager
from pathlib import Path

import httpx2 as httpx
import psutil
import pytest

from tests.servers import CliServer, cli_env, serving, start_cli, wait_until


def _forked(supervisor: psutil.Process) -> list[psutil.Process]:
    """Live processes under the supervisor that came from a fork server's command line."""
    found = []
    for process in supervisor.children(recursive=True):
        try:
            if "forkserver import main" in " ".join(process.cmdline()) and (
                process.status() != psutil.STATUS_ZOMBIE
            ):
                found.append(process)
        except psutil.NoSuchProcess:
            continue
    return found


def _fork_server(supervisor: psutil.Process) -> psutil.Process | None:
    """The supervisor's child that the workers are children of (None once it is gone)."""
    forked = _forked(supervisor)
    parents = {p.ppid() for p in forked}
    servers = [p for p in forked if p.pid in parents and p.ppid() == supervisor.pid]
    return servers[0] if servers else None


def _workers(supervisor: psutil.Process) -> set[int]:
    """The workers, whoever their parent is now."""
    server = _fork_server(supervisor)
    return {p.pid for p in _forked(supervisor) if server is None or p.pid != server.pid}


def _running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _zombie(process: psutil.Process) -> bool:
    """Whether it has ended and waits to be reaped: one reaped between the listing of the
    children and this look is gone, which is not a zombie (the race failed CI once)."""
    try:
        return bool(process.status() == psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False


def _answering_pids(server: CliServer, tries: int = 20) -> set[int]:
    return {
        httpx.get(f"{server.url}/readyz", headers={"Connection": "close"}).json()["worker_pid"]
        for _ in range(tries)
    }


def _serving_two(tmp_path: Path, **extra: str) -> AbstractContextManager[CliServer]:
    # A model that needs no library: each fork server (a replacement starts a new one) then
    # imports loadonce alone, not scikit-learn (seconds each).
    args = ["tests.loaders:echo", "--workers", "2"]
    return serving(args, tmp_path, env=cli_env(tmp_path, extra))


def test_the_fork_servers_death_leaves_the_workers_serving_and_supervised(tmp_path: Path) -> None:
    with _serving_two(tmp_path) as server:
        supervisor = psutil.Process(server.process.pid)
        before = _workers(supervisor)
        assert len(before) == 2
        fork_server = _fork_server(supervisor)
        assert fork_server is not None
        fork_server.kill()
        # The workers serve on, now the supervisor's children (it is their subreaper).
        wait_until(
            lambda: {psutil.Process(pid).ppid() for pid in before} == {supervisor.pid},
            10,
            "the workers reparented to the supervisor",
        )
        time.sleep(1)  # a few rounds of the supervisor's watch
        assert _workers(supervisor) == before, "no extra workers beside the live ones"
        assert _answering_pids(server) <= before
        # A worker that dies now is still noticed and replaced (through a new fork server).
        victim = min(before)
        os.kill(victim, signal.SIGKILL)
        wait_until(
            lambda: len(_workers(supervisor)) == 2 and victim not in _workers(supervisor),
            60,
            "a replacement worker",
        )
        wait_until(lambda: httpx.get(f"{server.url}/readyz").status_code == 200, 30, "ready")
        workers = _workers(supervisor)
    assert server.process.returncode == 0
    wait_until(lambda: not [p for p in workers if _running(p)], 10, "every worker gone")
    assert "starting a replacement" in server.log()


def test_a_stopped_worker_is_replaced_and_no_worker_outlives_a_killed_supervisor(
    tmp_path: Path,
) -> None:
    """One server for both (each start of two workers costs seconds): a stopped worker is
    killed and replaced; then the supervisor is killed, and every worker, the replacement
    included, goes with it."""
    with _serving_two(tmp_path, LOADONCE_HEARTBEAT_TIMEOUT_S="2") as server:
        supervisor = psutil.Process(server.process.pid)
        stopped = min(_workers(supervisor))
        os.kill(stopped, signal.SIGSTOP)
        wait_until(lambda: not _running(stopped), 30, "the stopped worker killed")
        wait_until(lambda: len(_workers(supervisor)) == 2, 60, "a replacement worker")
        assert "sent no heartbeat" in server.log()

        workers = _workers(supervisor)
        assert stopped not in workers
        supervisor.kill()
        wait_until(lambda: not [pid for pid in workers if _running(pid)], 30, "workers gone")


def test_what_a_dead_worker_left_running_is_reaped_when_it_ends(tmp_path: Path) -> None:
    config = tmp_path / "loadonce.toml"
    config.write_text(
        """
[server]
workers = 2

[[models]]
name = "m"
loader = "tests.loaders:echo_with_a_child_process"
"""
    )
    with serving([str(config)], tmp_path, env=cli_env(tmp_path)) as server:
        supervisor = psutil.Process(server.process.pid)
        victim = min(_workers(supervisor))
        left_running = psutil.Process(victim).children()  # its `sleep 2`
        os.kill(victim, signal.SIGKILL)  # its `sleep 2` child becomes the supervisor's
        wait_until(lambda: len(_workers(supervisor)) == 2, 60, "a replacement worker")

        def zombies() -> list[int]:
            return [child.pid for child in supervisor.children() if _zombie(child)]

        wait_until(lambda: not [p for p in left_running if _running(p.pid)], 15, "the orphan ended")
        wait_until(lambda: not zombies(), 15, "the orphan reaped")


def _stopped_in_time(server: CliServer, seconds: float) -> int:
    """Its exit status after SIGTERM, which must come within ``seconds``."""
    server.process.send_signal(signal.SIGTERM)
    try:
        return server.process.wait(seconds)
    finally:
        if server.process.poll() is None:
            server.process.kill()
            server.process.wait()


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_stop_while_models_load_ends_the_server_at_once(tmp_path: Path, workers: str) -> None:
    """With two workers the memory plan loads first: a SIGTERM then ended the supervisor by
    the signal's default action (status -15, its planning process loading on, orphaned, its
    temporary directories left); with one, the stop waited for the load to end."""
    # Short: the fork server's socket lives there, and a socket's path is limited in length.
    temporary = Path(tempfile.mkdtemp(prefix="lo-"))
    env = cli_env(tmp_path, {"TMPDIR": str(temporary)})
    server = start_cli(["tests.loaders:hangs_at_load", "--workers", workers], tmp_path, env=env)
    # The load has begun (the plan's is silent): the model's line, or the server's start.
    wait_until(
        lambda: (
            psutil.Process(server.process.pid).children(recursive=True)
            or ("loading in" in server.log())
        ),
        30,
        "the load",
    )
    time.sleep(2)
    assert _stopped_in_time(server, 10) == 0, server.log()
    assert "stopped while" in server.log()
    left = list(temporary.iterdir())
    shutil.rmtree(temporary)
    assert not left, "temporary directories left behind"


_SLOW_TO_IMPORT = """
import pathlib, time
pathlib.Path(__file__).with_name("importing").write_text("")
time.sleep(60)
"""


@pytest.mark.parametrize("workers", ["1", "2"])
@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_stop_before_the_servers_handlers_is_a_clean_stop(
    tmp_path: Path, workers: str, stop: signal.Signals
) -> None:
    """A stop signal while the command starts (its imports, the config, the user's app
    imported): SIGTERM ended it with status 143 and no word, SIGINT with a KeyboardInterrupt
    traceback. A supervisor sends SIGTERM whenever it likes: now one line, status 0."""
    (tmp_path / "slow_app.py").write_text(_SLOW_TO_IMPORT)
    server = start_cli(["slow_app:app", "--workers", workers], tmp_path)
    wait_until(lambda: (tmp_path / "importing").exists(), 30, "the app's import")
    server.process.send_signal(stop)
    try:
        status = server.process.wait(10)
    finally:
        if server.process.poll() is None:
            server.process.kill()
            server.process.wait()
    log = server.log()
    assert status == 0, log
    assert log.strip() == f"loadonce: stopped by {stop.name} while starting; nothing was served"


def test_a_stop_sent_to_every_process_while_workers_load_is_a_clean_stop(tmp_path: Path) -> None:
    """systemd sends SIGTERM to every process of the service (a terminal's Ctrl-C reaches the
    whole process group): the workers left as the supervisor asked them to, and the
    supervisor took that for a failed startup (status 3, "worker ... exited before it
    finished loading")."""
    temporary = Path(tempfile.mkdtemp(prefix="lo-"))
    # No plan: its load would be the one that hangs.
    env = cli_env(tmp_path, {"TMPDIR": str(temporary), "LOADONCE_MEMORY_PLAN": "false"})
    server = start_cli(["tests.loaders:hangs_at_load", "--workers", "2"], tmp_path, env=env)
    wait_until(lambda: "loading in" in server.log(), 60, "the workers' loads")
    supervisor = psutil.Process(server.process.pid)
    for process in [supervisor, *supervisor.children(recursive=True)]:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.send_signal(signal.SIGTERM)
    try:
        status = server.process.wait(15)
    finally:
        if server.process.poll() is None:
            server.process.kill()
            server.process.wait()
    log = server.log()
    shutil.rmtree(temporary)
    assert status == 0, log
    assert "startup failed" not in log
    assert "Traceback" not in log
    said = [line for line in log.splitlines() if "nothing was served" in line]
    assert len(said) == 1, log
    assert "stopped by SIGTERM while the workers loaded their models" in said[0]


@pytest.mark.parametrize("workers", ["1", "2"])
@pytest.mark.parametrize("loader", ["leaves_a_thread_running", "never_closes"])
def test_a_thread_a_model_leaves_running_neither_blocks_nor_outlives_the_server(
    tmp_path: Path, workers: str, loader: str
) -> None:
    """A client library's thread that is not a daemon, or a predictor's close that never
    returns: with two workers the memory plan's process waited for it at its exit, and the
    server never started; with one, the server never exited after its SIGTERM."""
    env = cli_env(tmp_path, {"LOADONCE_DRAIN_TIMEOUT_S": "2"})
    server = start_cli([f"tests.loaders:{loader}", "--workers", workers], tmp_path, env=env)
    try:
        wait_until(lambda: _ready(server), 60, "the server ready")
    finally:
        assert _stopped_in_time(server, 15) == 0, server.log()


def _ready(server: CliServer) -> bool:
    try:
        return httpx.get(f"{server.url}/readyz").status_code == 200
    except httpx.HTTPError:
        return False


@pytest.mark.parametrize(
    ("poison", "said"),
    [(-1, "exited with code 7 while serving"), (-2, "was killed by SIGSEGV while serving")],
    ids=["os._exit", "SIGSEGV"],
)
def test_a_model_that_ends_its_worker_mid_batch_is_contained_and_said(
    tmp_path: Path, poison: int, said: str
) -> None:
    """The requests in flight on the worker end at once (a closed connection or a 5xx, never
    a hang), the other worker serves on, a replacement starts, and the log says how the
    worker ended: it said "exited" (no status) or "exited with code -11" of a crash."""
    config = tmp_path / "loadonce.toml"
    config.write_text(
        """
[server]
workers = 2

[[models]]
name = "m"
loader = "tests.loaders:ends_its_process"
input_shape = []
concurrency = "shared:2"
batching = { max_batch_size = 8 }
timeout_s = 30
"""
    )
    with serving([str(config)], tmp_path, env=cli_env(tmp_path)) as server:
        supervisor = psutil.Process(server.process.pid)
        before = _workers(supervisor)

        def predict(value: int) -> int | str:
            try:
                answer = httpx.post(
                    f"{server.url}/models/m/predict",
                    json={"inputs": [value]},
                    headers={"Connection": "close"},
                    timeout=20,
                )
            except httpx.TransportError as exc:
                return type(exc).__name__
            if answer.status_code == 200:
                assert answer.json()["outputs"] == [2 * value]
            else:
                assert answer.status_code >= 500, answer.text
                assert "Traceback" not in answer.text
            return answer.status_code

        with ThreadPoolExecutor(8) as pool:
            started = time.monotonic()
            outcomes = list(pool.map(predict, [poison, 1, 2, 3, 4, 5, 6, 7]))
        assert time.monotonic() - started < 15, "a request in flight on the dead worker hung"
        assert outcomes[0] != 200
        wait_until(lambda: said in server.log(), 30, "the worker's end in the log")
        wait_until(
            lambda: len(_workers(supervisor)) == 2 and _workers(supervisor) != before,
            60,
            "a replacement worker",
        )
        wait_until(
            lambda: all(
                httpx.get(f"{server.url}/readyz", headers={"Connection": "close"}).status_code
                == 200
                for _ in range(6)
            ),
            30,
            "every worker ready",
        )
        assert predict(4) == 200
        [line] = [line for line in server.log().splitlines() if said in line]
        assert "starting a replacement" in line
        if poison == -2:
            assert "crashed" in line
            assert "Segmentation fault" in server.log()  # the fault handler's stack
