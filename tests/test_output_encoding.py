"""What a model answers that JSON has no type for is written as what it stands for, the same
on the JSON route and /v2; what JSON cannot carry at all is the model's 500, said the same way
on both (the JSON route answered "the server failed", /v2 the value's str(): an object's
memory address; a long double recursed without end)."""

from __future__ import annotations

import datetime
import decimal
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import skops.io
import torch
from fastapi.testclient import TestClient
from sklearn.preprocessing import OneHotEncoder

import loadonce


def _answering(value: Callable[[], Any]) -> Callable[[], Callable[[list[Any]], list[Any]]]:
    return lambda: lambda batch: [value() for _ in batch]


WRITTEN = {
    "long double": (lambda: np.longdouble(1.5), 1.5),
    "long double array": (lambda: np.full(2, 0.25, dtype=np.longdouble), [0.25, 0.25]),
    "datetime": (lambda: datetime.datetime(2020, 1, 2, 3, 4, 5), "2020-01-02T03:04:05"),
    "date": (lambda: datetime.date(2020, 1, 2), "2020-01-02"),
    "datetime64": (lambda: np.datetime64("2020-01-02T03:04"), "2020-01-02T03:04"),
    "timedelta": (lambda: datetime.timedelta(minutes=1, seconds=30), 90.0),
    "timedelta64": (lambda: np.timedelta64(1500, "ms"), 1.5),
    "pandas Timestamp": (lambda: pd.Timestamp("2020-01-02"), "2020-01-02T00:00:00"),
    "pandas NA": (lambda: pd.NA, None),
    "Decimal": (lambda: decimal.Decimal("1.25"), 1.25),
    "set": (lambda: {3, 1, 2}, [1, 2, 3]),
    "missing duration": (lambda: np.array([1, "NaT"], dtype="timedelta64[s]"), [1.0, "NaN"]),
    "signaling NaN Decimal": (lambda: decimal.Decimal("sNaN"), "NaN"),
    "torch tensor": (lambda: torch.tensor([1.0, 2.0]), [1.0, 2.0]),
}


@pytest.mark.parametrize("name", list(WRITTEN))
def test_what_json_has_no_type_for_is_written_as_what_it_stands_for(name: str) -> None:
    make, expected = WRITTEN[name]
    spec = loadonce.ModelSpec(name="m", loader=_answering(make))
    with TestClient(loadonce.create_app([spec])) as client:
        answer = client.post("/models/m/predict", json={"inputs": [1]})
        assert answer.status_code == 200, answer.text
        assert answer.json()["outputs"] == [expected]
        tensor = {"name": "x", "datatype": "INT64", "shape": [1], "data": [1]}
        infer = client.post("/v2/models/m/infer", json={"inputs": [tensor]})
        assert infer.status_code == 200, infer.text
        for output in infer.json()["outputs"]:  # a JSON document is strict JSON (no NaN)
            if output["datatype"] == "BYTES":
                for text in output["data"]:
                    json.loads(text, parse_constant=_not_json)


def _not_json(literal: str) -> None:
    raise AssertionError(f"{literal} is not JSON")


@pytest.mark.parametrize(
    "make",
    [lambda: complex(1, 2), lambda: np.complex64(1), lambda: object(), lambda: _itself()],
    ids=["complex", "numpy complex", "object", "contains itself"],
)
def test_what_json_cannot_carry_is_the_models_500_on_both_routes(make: Callable[[], Any]) -> None:
    spec = loadonce.ModelSpec(name="m", loader=_answering(make))
    with TestClient(loadonce.create_app([spec])) as client:
        tensor = {"name": "x", "datatype": "INT64", "shape": [1], "data": [1]}
        for answer in (
            client.post("/models/m/predict", json={"inputs": [1]}),
            client.post("/v2/models/m/infer", json={"inputs": [tensor]}),
        ):
            assert answer.status_code == 500
            assert answer.json()["error"].startswith("the model raised TypeError")
            assert "0x" not in answer.text


def test_an_answer_that_cannot_be_written_counts_as_a_failure() -> None:
    """Its client got a 500, so the model's statistics and /metrics count a failure (they
    counted a success: what the model returned, before the answer was built from it)."""
    spec = loadonce.ModelSpec(name="m", loader=_answering(lambda: complex(1, 2)))
    with TestClient(loadonce.create_app([spec])) as client:
        tensor = {"name": "x", "datatype": "INT64", "shape": [1], "data": [1]}
        assert client.post("/models/m/predict", json={"inputs": [1]}).status_code == 500
        assert client.post("/v2/models/m/infer", json={"inputs": [tensor]}).status_code == 500
        # A client's mistake is no failure of the model's: refused before the model runs.
        bad = {
            "inputs": [tensor],
            "outputs": [{"name": "output", "parameters": {"binary_data": "yes"}}],
        }
        assert client.post("/v2/models/m/infer", json=bad).status_code == 400
        stats = client.get("/v2/models/m/stats").json()["model_stats"][0]["inference_stats"]
        assert (stats["success"]["count"], stats["fail"]["count"]) == (0, 2)
        metrics = client.get("/metrics").text
        assert 'loadonce_model_request_duration_seconds_count{model="m",outcome="fail"} 2.0' in (
            metrics
        )
        assert 'outcome="success"' not in metrics


def test_bytes_that_are_not_text_asked_for_in_json_are_the_clients_400() -> None:
    """The model answered bytes binary carries; JSON was the client's choice. It was a 500,
    counted as the model's failure."""
    spec = loadonce.ModelSpec(name="m", loader=_answering(lambda: b"\xff"))
    with TestClient(loadonce.create_app([spec])) as client:
        tensor = {"name": "x", "datatype": "INT64", "shape": [1], "data": [1]}
        as_json = {"inputs": [tensor], "outputs": [{"name": "output"}]}
        refused = client.post("/v2/models/m/infer", json=as_json)
        assert refused.status_code == 400, refused.text
        assert refused.json()["error"] == (
            "output 'output' holds bytes that are not UTF-8 text, which JSON cannot carry: "
            "request it in binary (parameters.binary_data = true)"
        )
        binary = {
            "inputs": [tensor],
            "outputs": [{"name": "output", "parameters": {"binary_data": True}}],
        }
        answered = client.post("/v2/models/m/infer", json=binary)
        assert answered.status_code == 200
        assert answered.content.endswith(b"\x01\x00\x00\x00\xff")
        # The JSON route writes such bytes as {"base64": ...}.
        assert client.post("/models/m/predict", json={"inputs": [1]}).json()["outputs"] == [
            {"base64": "/w=="}
        ]
        stats = client.get("/v2/models/m/stats").json()["model_stats"][0]["inference_stats"]
        assert (stats["success"]["count"], stats["fail"]["count"]) == (2, 0)


def test_zero_dimensional_arrays_holding_nan_are_written() -> None:
    """``tolist()`` of a 0-d array is its value, not a list: a list of them holding NaN was
    the server's 500 on the JSON route."""
    spec = loadonce.ModelSpec(
        name="m", loader=_answering(lambda: [np.array(np.nan), np.array(1.5)])
    )
    with TestClient(loadonce.create_app([spec])) as client:
        answer = client.post("/models/m/predict", json={"inputs": [1]})
        assert answer.status_code == 200, answer.text
        assert answer.json()["outputs"] == [["NaN", 1.5]]


def _itself() -> list[Any]:
    looped: list[Any] = []
    looped.append(looped)
    return looped


def test_a_sparse_matrix_is_answered_as_its_dense_rows(tmp_path: Path) -> None:
    """A OneHotEncoder's transform answers a SciPy sparse matrix (a vectorizer's too): each
    example gets its dense row, on both routes (the JSON route answered 500, /v2 the
    matrix's printed description)."""
    encoder = OneHotEncoder().fit([[0.0], [1.0], [2.0]])
    skops.io.dump(encoder, tmp_path / "encoder.skops")
    spec = loadonce.ModelSpec(
        name="m", artifact=tmp_path / "encoder.skops", options={"method": "transform"}
    )
    expected = encoder.transform([[2.0], [0.0]]).toarray().tolist()
    with TestClient(loadonce.create_app([spec])) as client:
        answer = client.post("/models/m/predict", json={"inputs": [[2.0], [0.0]]})
        assert answer.status_code == 200, answer.text
        assert answer.json()["outputs"] == expected
        tensor = {"name": "input", "datatype": "FP64", "shape": [2, 1], "data": [2.0, 0.0]}
        infer = client.post("/v2/models/m/infer", json={"inputs": [tensor]})
        assert infer.status_code == 200, infer.text
        [output] = infer.json()["outputs"]
        assert (output["datatype"], output["shape"]) == ("FP64", [2, 3])
        assert output["data"] == [value for row in expected for value in row]
