"""A loader's own Predictor and the spec's ``input_shape``: applied as for a plain object (it
was ignored, and a list of three features became three examples), or refused at load when
the two disagree."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

import loadonce
from loadonce.runtimes import InputSignature, Predictor, TensorInfo


class _Sums(Predictor):
    """Declares no input: takes what the spec says."""

    def predict(self, batch: Any) -> list[float]:
        return [float(np.sum(row)) for row in batch]


class _SumsOfThree(_Sums):
    signature = InputSignature(shape=(3,), dtype="float64")


class _Named(_Sums):
    inputs = (TensorInfo(name="a", dtype="float64", shape=(None, 3)),)


def test_the_specs_input_shape_checks_a_predictors_inputs() -> None:
    spec = loadonce.ModelSpec(name="sums", loader=_Sums, input_shape=(3,))
    with TestClient(loadonce.create_app([spec])) as client:
        assert client.get("/models/sums").json()["input_shape"] == [3]
        one = client.post("/models/sums/predict", json={"inputs": [1, 2, 3]})
        assert one.json()["outputs"] == [6.0], one.text
        for wrong in ("abc", [[1, 2, 3, 4], [1, 2]], [[1, 2]]):
            answer = client.post("/models/sums/predict", json={"inputs": wrong})
            assert answer.status_code == 400, (wrong, answer.text)


def test_the_same_shape_in_both_places_is_accepted() -> None:
    spec = loadonce.ModelSpec(name="sums", loader=_SumsOfThree, input_shape=(3,))
    with TestClient(loadonce.create_app([spec])) as client:
        answer = client.post("/models/sums/predict", json={"inputs": [[1, 2, 3], [4, 5, 6]]})
        assert answer.json()["outputs"] == [6.0, 15.0]


@pytest.mark.parametrize(
    ("loader", "said"),
    [(_SumsOfThree, "declare it in one place"), (_Named, "declares named inputs")],
)
def test_a_shape_the_predictor_contradicts_fails_the_load(loader: type, said: str) -> None:
    spec = loadonce.ModelSpec(name="sums", loader=loader, input_shape=(4,))
    with (
        pytest.raises(loadonce.ModelLoadError, match=said),
        TestClient(loadonce.create_app([spec])),
    ):
        pass
