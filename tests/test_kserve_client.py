"""KServe's Python SDK, unchanged, against a real loadonce server: its REST client's
liveness, readiness and inference (an InferRequest, which names the model in the body: loadonce
refused that member once), in a process of its own (see tests/kserve_client.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

import loadonce
from tests.servers import ThreadedServer
from tests.v2_models import build_iris_skops, triton_example_specs


def test_kserve_rest_client_checks_health_and_infers(tmp_path: Path) -> None:
    [simple, *_] = triton_example_specs()
    iris = loadonce.ModelSpec(name="iris", artifact=build_iris_skops(tmp_path / "iris.skops"))
    with ThreadedServer(loadonce.create_app([simple, iris])) as running:
        ran = subprocess.run(
            [sys.executable, "-m", "tests.kserve_client", running.url],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=Path(__file__).parent.parent,
        )
    assert ran.returncode == 0, ran.stderr[-3000:]
    found = json.loads(ran.stdout)
    assert found["live"] is True
    assert found["ready"] is True
    assert found["model_ready"] is True
    rows = np.arange(16).reshape(1, 16)
    assert found["simple"]["id"] == "k1"
    assert found["simple"]["outputs"]["OUTPUT0"] == (rows + 1).tolist()
    assert found["simple"]["outputs"]["OUTPUT1"] == (rows - 1).tolist()
    assert found["iris"]["label"] == ["setosa", "virginica"]
