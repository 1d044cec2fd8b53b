"""Outputs reach the client without loss, whatever the model returns."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from fastapi.testclient import TestClient

import loadonce


def _outputs_of(predict: Any, inputs: Any) -> Any:
    spec = loadonce.ModelSpec(name="m", loader=lambda: predict)
    with TestClient(loadonce.create_app([spec])) as client:
        response = client.post("/models/m/predict", json={"inputs": inputs})
        assert response.status_code == 200, response.text
        return response.json()["outputs"]


def test_numpy_scalars_and_arrays_keep_their_values() -> None:
    values = [
        np.float32(0.1),
        np.int64(2**62 + 1),
        np.bool_(True),
        np.array([[1.5, 2.25]], dtype=np.float32),
        np.array(["a", "b"]),
    ]
    outputs = _outputs_of(lambda batch: values, [0] * len(values))
    assert outputs[0] == float(np.float32(0.1))  # the float32's exact value, as a double
    assert outputs[1] == 2**62 + 1  # no detour through a float
    assert outputs[2] is True
    assert outputs[3] == [[1.5, 2.25]]
    assert outputs[4] == ["a", "b"]


def test_nested_results_tuples_and_dicts() -> None:
    def predict(batch: list[Any]) -> list[Any]:
        return [{"label": np.str_("cat"), "scores": (np.float64(0.5), 1)} for _ in batch]

    assert _outputs_of(predict, [1, 2]) == [{"label": "cat", "scores": [0.5, 1]}] * 2


def test_values_json_cannot_carry_become_strings_not_errors() -> None:
    def predict(batch: list[Any]) -> list[Any]:
        return [np.array([math.nan, math.inf, -math.inf, 1.0]), float("nan"), b"\xff\x00", b"ok"]

    outputs = _outputs_of(predict, [0, 1, 2, 3])
    assert outputs == [
        ["NaN", "Infinity", "-Infinity", 1.0],
        "NaN",
        {"base64": "/wA="},
        "ok",
    ]
