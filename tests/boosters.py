"""What the booster runtimes' tests share: the rows and labels their tiny models train on, and
one in-process prediction through loadonce."""

from __future__ import annotations

from typing import Any

import numpy as np
from fastapi.testclient import TestClient

import loadonce

ROWS = np.random.default_rng(0).normal(size=(200, 5))
BINARY = (ROWS[:, 0] > 0).astype(int)
THREE_CLASSES = (ROWS[:, 1] > 0).astype(int) + (ROWS[:, 2] > 0).astype(int)


def served_by(spec: loadonce.ModelSpec, inputs: Any) -> list[Any]:
    """The model's outputs for ``inputs`` from the JSON route of an app serving it alone."""
    with TestClient(loadonce.create_app([spec])) as client:
        answer = client.post(f"/models/{spec.name}/predict", json={"inputs": inputs})
        assert answer.status_code == 200, answer.text
        outputs: list[Any] = answer.json()["outputs"]
        return outputs
