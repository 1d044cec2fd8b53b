"""`loadonce serve --workers 2`: each worker process loads each model exactly once."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import httpx2 as httpx
import psutil
import pytest

from tests.servers import cli_env, serving, start_cli, stop, wait_ready, wait_until


def test_two_workers_each_load_once_across_200_requests(tmp_path: Path) -> None:
    load_log = tmp_path / "loads.txt"
    config = tmp_path / "loadonce.toml"
    config.write_text(
        """
[server]
workers = 2
memory_plan = false  # the plan would run the counting loader once more, in its own process

[[models]]
name = "echo"
loader = "tests.loaders:counting_echo"
concurrency = "shared"
"""
    )
    env = cli_env(tmp_path, {"LOADER_TEST_LOAD_LOG": str(load_log)})
    with serving([str(config)], tmp_path, env=env) as server:
        loader_pids = [int(line) for line in load_log.read_text().split()]
        assert len(loader_pids) == 2, "one load per worker"
        assert len(set(loader_pids)) == 2, "in two different processes"
        assert server.process.pid not in loader_pids, "the supervisor itself loads nothing"

        seen_by_models: dict[int, int] = {}
        # A new connection each time, so the kernel may hand it to either worker (one client:
        # each of httpx's own post() builds a TLS context, about 20 ms of CPU).
        with httpx.Client(headers={"Connection": "close"}) as client:
            for i in range(200):
                if i % 2:
                    response = client.post(
                        f"{server.url}/models/echo/predict", json={"inputs": [i]}
                    )
                    assert response.status_code == 200
                    [output] = response.json()["outputs"]
                    assert output["echo"] == i
                    assert output["pid"] in loader_pids
                else:
                    listing = client.get(f"{server.url}/models").json()
                    [model] = listing["models"]
                    assert model["worker_pid"] == listing["worker_pid"]
                    assert model["state"] == "ready"
                    seen_by_models[model["worker_pid"]] = model["load_count"]

        assert set(seen_by_models) <= set(loader_pids)
        assert all(count == 1 for count in seen_by_models.values())
        assert [int(line) for line in load_log.read_text().split()] == loader_pids

        # An unload asked of one worker reaches both: no worker is left serving the model.
        assert httpx.post(f"{server.url}/v2/repository/models/echo/unload").status_code == 200
        for _ in range(10):
            assert httpx.get(f"{server.url}/v2/models/echo/ready").status_code == 503
        assert httpx.post(f"{server.url}/v2/repository/models/echo/load").status_code == 200
        for _ in range(10):
            assert httpx.get(f"{server.url}/v2/models/echo/ready").status_code == 200
        reloaded = [int(line) for line in load_log.read_text().split()][2:]
        assert sorted(reloaded) == sorted(loader_pids), "loaded again once in each worker"
    assert "each worker process loads its own copy" in server.log()
    for pid in loader_pids:
        assert f"model 'echo' version 1 loaded in worker pid {pid}" in server.log()


def _pid_alive(pid: int) -> bool:
    try:
        # A killed child stays a zombie until its parent reaps it; that is not alive.
        return bool(psutil.Process(pid).status() != psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False


def test_a_worker_that_dies_is_replaced_and_sigterm_stops_all(tmp_path: Path) -> None:
    load_log = tmp_path / "loads.txt"
    config = tmp_path / "loadonce.toml"
    config.write_text(
        "[server]\nmemory_plan = false  # no extra load in a planning process\n\n"
        '[[models]]\nname = "echo"\nloader = "tests.loaders:counting_echo"\n'
    )
    env = cli_env(tmp_path, {"LOADER_TEST_LOAD_LOG": str(load_log)})
    server = start_cli([str(config), "--workers", "2"], tmp_path, env=env)
    try:
        wait_ready(server)
        first, second = (int(pid) for pid in load_log.read_text().split())
        os.kill(first, signal.SIGKILL)
        wait_until(lambda: len(load_log.read_text().split()) == 3, 60, "a replacement worker")
        replacement = int(load_log.read_text().split()[2])
        assert replacement not in (first, second)
        wait_until(lambda: not _pid_alive(first), 10, "the killed worker to be reaped")
        pids_answering = set()
        for _ in range(40):
            response = httpx.get(f"{server.url}/models")
            assert response.status_code == 200
            pids_answering.add(response.json()["worker_pid"])
        assert pids_answering <= {second, replacement}
        assert "starting a replacement" in server.log()
    finally:
        code = stop(server)
    assert code == 0, server.log()
    assert not _pid_alive(second)
    assert not _pid_alive(replacement)


@pytest.mark.parametrize("workers", ["1", "2"])
def test_ctrl_c_stops_cleanly_with_status_0(tmp_path: Path, workers: str) -> None:
    config = tmp_path / "loadonce.toml"
    config.write_text('[[models]]\nname = "echo"\nloader = "tests.loaders:echo"\n')
    server = start_cli([str(config), "--workers", workers], tmp_path)
    wait_ready(server)
    server.process.send_signal(signal.SIGINT)
    assert server.process.wait(timeout=60) == 0, server.log()
    assert "Traceback" not in server.log()
    assert "KeyboardInterrupt" not in server.log()
