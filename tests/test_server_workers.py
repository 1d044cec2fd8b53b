"""`loadonce serve --workers 2`: each worker process loads each model exactly once."""

from __future__ import annotations

from pathlib import Path

import httpx2 as httpx

from tests.servers import cli_env, serving


def test_two_workers_each_load_once_across_200_requests(tmp_path: Path) -> None:
    load_log = tmp_path / "loads.txt"
    config = tmp_path / "loadonce.toml"
    config.write_text(
        """
[server]
workers = 2

[[models]]
name = "echo"
loader = "tests.loaders:counting_echo"
concurrency = "shared"
"""
    )
    env = cli_env(tmp_path, {"LOADONCE_TEST_LOAD_LOG": str(load_log)})
    with serving([str(config)], tmp_path, env=env) as server:
        loader_pids = [int(line) for line in load_log.read_text().split()]
        assert len(loader_pids) == 2, "one load per worker"
        assert len(set(loader_pids)) == 2, "in two different processes"
        assert server.process.pid not in loader_pids, "the supervisor itself loads nothing"

        seen_by_models: dict[int, int] = {}
        for i in range(200):
            # A new connection each time, so the kernel may hand it to either worker.
            if i % 2:
                response = httpx.post(f"{server.url}/models/echo/predict", json={"inputs": [i]})
                assert response.status_code == 200
                [output] = response.json()["outputs"]
                assert output["echo"] == i
                assert output["pid"] in loader_pids
            else:
                listing = httpx.get(f"{server.url}/models").json()
                [model] = listing["models"]
                assert model["worker_pid"] == listing["worker_pid"]
                assert model["state"] == "ready"
                seen_by_models[model["worker_pid"]] = model["load_count"]

        assert set(seen_by_models) <= set(loader_pids)
        assert all(count == 1 for count in seen_by_models.values())
        assert [int(line) for line in load_log.read_text().split()] == loader_pids
    assert "each worker process loads its own copy" in server.log()
    for pid in loader_pids:
        assert f"model 'echo' version 1 loaded in worker pid {pid}" in server.log()
