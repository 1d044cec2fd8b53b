"""KServe's Python SDK, unchanged, against a real loadonce server, in a process of its own (see
tests/kserve_client.py): its REST client's liveness, readiness and inference (an InferRequest,
which names the model in the body: loadonce refused that member once), and its gRPC client's
readiness and inference."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import loadonce
from loadonce.protocols.grpc import grpc_lifespan
from tests.servers import ThreadedServer, free_port
from tests.v2_models import build_iris_skops, triton_example_specs


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """The REST URL and the gRPC address of one server of "simple" and "iris"."""
    [simple, *_] = triton_example_specs()
    artifact = build_iris_skops(tmp_path_factory.mktemp("iris") / "iris.skops")
    iris = loadonce.ModelSpec(name="iris", artifact=artifact)
    missing = loadonce.ModelSpec(name="missing", loader="tests.v2_models:MissingCount")
    port = free_port()
    app = loadonce.create_app([simple, iris, missing], wrap=grpc_lifespan(port=port))
    with ThreadedServer(app) as running:
        yield running.url, f"127.0.0.1:{port}"


def _kserve(protocol: str, target: str) -> dict[str, Any]:
    ran = subprocess.run(
        [sys.executable, "-m", "tests.kserve_client", protocol, target],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=Path(__file__).parent.parent,
    )
    assert ran.returncode == 0, ran.stderr[-3000:]
    found: dict[str, Any] = json.loads(ran.stdout)
    return found


def _check_inference(found: dict[str, Any]) -> None:
    assert found["ready"] is True
    assert found["model_ready"] is True
    rows = np.arange(16).reshape(1, 16)
    assert found["simple"]["id"] == "k1"
    assert found["simple"]["outputs"]["OUTPUT0"] == (rows + 1).tolist()
    assert found["simple"]["outputs"]["OUTPUT1"] == (rows - 1).tolist()
    assert found["iris"]["label"] == ["setosa", "virginica"]
    assert found["missing"]["missing"] == [1, 2]


def test_kserve_rest_client_checks_health_and_infers(server: tuple[str, str]) -> None:
    found = _kserve("rest", server[0])
    assert found["live"] is True
    _check_inference(found)


def test_kserve_grpc_client_checks_health_and_infers(server: tuple[str, str]) -> None:
    _check_inference(_kserve("grpc", server[1]))
