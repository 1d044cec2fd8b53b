"""Prefault: mapped weights are in each worker's memory when it reports ready, not read by
its first requests."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx2 as httpx
import joblib
import numpy as np
import psutil
import pytest
from fastapi.testclient import TestClient
from sklearn.neighbors import KNeighborsClassifier

import loadonce
from tests.servers import cli_env, serving

# Measures the memory (or the speed) of the processes it starts: run apart from other tests
# (make test runs these after the rest, on one process).
pytestmark = pytest.mark.alone

MIB = 1 << 20


@pytest.fixture(scope="module")
def neighbours(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two uncompressed joblib files of a brute-force KNN holding 64 MB of points (mapped
    when loaded), under two names so that each model's mappings are told apart."""
    root = tmp_path_factory.mktemp("prefault")
    rng = np.random.default_rng(0)
    points = rng.normal(size=(1_600_000, 10)).astype(np.float32)
    labels = rng.integers(0, 3, size=len(points))
    model = KNeighborsClassifier(n_neighbors=3, algorithm="brute").fit(points, labels)
    paths = {"warm": root / "warm.joblib", "cold": root / "cold.joblib"}
    for path in paths.values():
        joblib.dump(model, path)
    return paths


def _resident(process: psutil.Process, path: Path) -> int:
    """Resident bytes of a process's mappings of one file (/proc/PID/smaps)."""
    return sum(
        int(mapping.rss)
        for mapping in process.memory_maps(grouped=True)
        if os.path.realpath(mapping.path) == os.path.realpath(path)
    )


def test_each_worker_holds_its_mapped_weights_when_ready_unless_prefault_is_off(
    tmp_path: Path, neighbours: dict[str, Path]
) -> None:
    # No warm-up: a prediction reads every point, which would fault the weights in anyway.
    config = tmp_path / "loadonce.toml"
    config.write_text(
        f"""
[server]
workers = 2

[[models]]
name = "warm"
artifact = "{neighbours["warm"]}"
trust = true

[[models]]
name = "cold"
artifact = "{neighbours["cold"]}"
trust = true
prefault = false
"""
    )
    with serving([str(config)], tmp_path, env=cli_env(tmp_path)) as server:
        # Ready, and no prediction yet.
        models = {m["name"]: m for m in httpx.get(f"{server.url}/models").json()["models"]}
        assert models["warm"]["weights_shared"] is True
        workers = [psutil.Process(worker["pid"]) for worker in models["warm"]["workers"]]
        assert len(workers) == 2
        size = neighbours["warm"].stat().st_size
        for worker in workers:
            assert _resident(worker, neighbours["warm"]) > 0.95 * size, worker.pid
            assert _resident(worker, neighbours["cold"]) < 0.05 * size, worker.pid
        # The time it took is in each worker's line, for the model it was done for.
        loaded = [line for line in server.log().splitlines() if "loaded in worker pid" in line]
        warm = [line for line in loaded if "model 'warm'" in line]
        assert len(warm) == 2, loaded
        assert all("MiB of mapped weights)" in line for line in warm), loaded
        assert not any("model 'cold'" in line and "mapped weights" in line for line in loaded)

        inputs = np.random.default_rng(1).normal(size=(2, 10)).round(3).tolist()
        answers = [
            httpx.post(f"{server.url}/models/{name}/predict", json={"inputs": inputs})
            for name in ("warm", "cold")
        ]
        assert all(answer.status_code == 200 for answer in answers), answers[0].text
        assert answers[0].json()["outputs"] == answers[1].json()["outputs"]


def _served_resident(spec: loadonce.ModelSpec, path: Path) -> int:
    """The resident bytes of this process's mappings of ``path`` once ``spec`` is loaded in
    an app of this process, before any request."""
    with TestClient(loadonce.create_app([spec])) as client:
        assert client.get("/readyz").status_code == 200
        return _resident(psutil.Process(), path)


def test_by_default_prefault_is_on_only_when_the_artifact_fits_in_available_memory(
    neighbours: dict[str, Path], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    path = neighbours["warm"]
    size = path.stat().st_size
    spec = loadonce.ModelSpec(name="near", artifact=path, trust=True)
    assert _served_resident(spec, path) > 0.95 * size

    # A machine with less memory available than the artifact's size.
    real = psutil.virtual_memory

    def scarce() -> Any:
        return SimpleNamespace(**{**real()._asdict(), "available": size // 2})

    monkeypatch.setattr(psutil, "virtual_memory", scarce)
    with caplog.at_level(logging.INFO, logger="loadonce"):
        assert _served_resident(spec, path) < 0.05 * size
    [line] = [r.getMessage() for r in caplog.records if "prefault off" in r.getMessage()]
    expected = f"model 'near': prefault off: its artifact ({size / MIB:.1f} MiB) is larger than"
    assert line.startswith(expected), line
    # Asked for, it reads them anyway.
    forced = spec.model_copy(update={"prefault": True})
    assert _served_resident(forced, path) > 0.95 * size


def test_prefault_does_nothing_for_weights_copied_at_load(
    neighbours: dict[str, Path], caplog: pytest.LogCaptureFixture
) -> None:
    path = neighbours["warm"]
    spec = loadonce.ModelSpec(name="near", artifact=path, trust=True, share="off", prefault=True)
    with caplog.at_level(logging.INFO, logger="loadonce"):
        assert _served_resident(spec, path) == 0
    [loaded] = [r.getMessage() for r in caplog.records if "loaded in worker" in r.getMessage()]
    assert "mapped weights" not in loaded, loaded
