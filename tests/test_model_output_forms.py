"""What a model's predict returns must be one output per example: text, bytes and mappings
iterate, but not by example, and are the model's 500 whatever the batch's size (a columnar
dict for two examples answered its two keys); a pandas DataFrame is taken row by row."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pandas as pd
import pytest
from fastapi.testclient import TestClient

import loadonce


def _returning(make: Callable[[list[Any]], Any]) -> Callable[[], Callable[[list[Any]], Any]]:
    return lambda: make


@pytest.mark.parametrize(
    "make",
    [
        lambda batch: {"label": ["a"] * len(batch), "score": [0.5] * len(batch)},
        lambda batch: "no"[: len(batch)],
        lambda batch: b"no"[: len(batch)],
    ],
    ids=["columns-dict", "str", "bytes"],
)
def test_an_answer_that_is_not_one_output_per_example_is_the_models_500(
    make: Callable[[list[Any]], Any],
) -> None:
    spec = loadonce.ModelSpec(name="m", loader=_returning(make))
    with TestClient(loadonce.create_app([spec])) as client:
        for count in (1, 2):
            answer = client.post("/models/m/predict", json={"inputs": [1.0] * count})
            assert answer.status_code == 500
            assert answer.json()["error"].startswith("the model raised RuntimeError")


def test_a_data_frame_is_answered_row_by_row() -> None:
    def rows(batch: list[Any]) -> pd.DataFrame:
        return pd.DataFrame({"label": [f"x{v}" for v in batch], "score": [v / 10 for v in batch]})

    spec = loadonce.ModelSpec(name="m", loader=_returning(rows))
    with TestClient(loadonce.create_app([spec])) as client:
        answer = client.post("/models/m/predict", json={"inputs": [1, 2]})
        assert answer.status_code == 200, answer.text
        assert answer.json()["outputs"] == [
            {"label": "x1", "score": 0.1},
            {"label": "x2", "score": 0.2},
        ]


_HUGE = 10**5000  # past Python's 4,300 digits for an integer written as text


@pytest.mark.parametrize(
    "make",
    [
        lambda batch: [_HUGE for _ in batch],
        lambda batch: [{"score": -_HUGE} for _ in batch],
        lambda batch: [{_HUGE: 1} for _ in batch],
        lambda batch: [[1.5, [_HUGE]] for _ in batch],
        lambda batch: [[7] * 40_000 + [_HUGE] for _ in batch],  # a large answer, in pieces
    ],
    ids=["value", "negative-in-a-mapping", "key", "nested", "large-answer"],
)
@pytest.mark.parametrize("route", ["json", "v2", "v2-binary"])
def test_an_integer_too_long_to_write_is_the_models_500_on_every_route(
    make: Callable[[list[Any]], Any], route: str
) -> None:
    """Python writes no integer of more than 4,300 digits as text: the answer's encoding
    failed, and it was said as the server's failure ("the server failed (ValueError)")."""
    spec = loadonce.ModelSpec(name="m", loader=_returning(make))
    path, body = {
        "json": ("/models/m/predict", {"inputs": [1.0, 2.0]}),
        "v2": (
            "/v2/models/m/infer",
            {"inputs": [{"name": "x", "datatype": "FP64", "shape": [2], "data": [1.0, 2.0]}]},
        ),
        "v2-binary": (
            "/v2/models/m/infer",
            {
                "inputs": [{"name": "x", "datatype": "FP64", "shape": [2], "data": [1.0, 2.0]}],
                "parameters": {"binary_data_output": True},
            },
        ),
    }[route]
    with TestClient(loadonce.create_app([spec])) as client:
        answer = client.post(path, json=body)
        assert answer.status_code == 500
        assert answer.json()["error"].startswith("the model raised TypeError"), answer.text
        assert client.get("/readyz").status_code == 200


class _DeclaresInt8(loadonce.Predictor):
    """Declares one INT8 output; answers 1,000 for each example."""

    outputs = (loadonce.TensorInfo(name="y", dtype="int8", shape=(None,)),)

    def predict(self, batch: Any) -> list[int]:
        return [1_000 for _ in batch]


@pytest.mark.parametrize(
    "load",
    [
        _returning(lambda batch: [{"a": 1, "b": 2}] + [{"a": 1}] * (len(batch) - 1)),
        _returning(lambda batch: [{"a": 1}] + [3] * (len(batch) - 1)),
        _DeclaresInt8,
    ],
    ids=["a-key-missing", "a-mapping-then-a-number", "past-its-declared-datatype"],
)
@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_outputs_no_tensor_can_carry_are_the_models_500_on_v2(
    load: Callable[[], Any], binary: bool
) -> None:
    """Outputs that differ between examples, or values past the datatype the model declares,
    were said as the server's failure ("the server failed (RuntimeError)")."""
    spec = loadonce.ModelSpec(name="m", loader=load)
    tensor = {"name": "x", "datatype": "FP64", "shape": [2], "data": [1.0, 2.0]}
    body = {"inputs": [tensor], "parameters": {"binary_data_output": binary}}
    with TestClient(loadonce.create_app([spec])) as client:
        answer = client.post("/v2/models/m/infer", json=body)
        assert answer.status_code == 500
        assert answer.json()["error"].startswith("the model raised RuntimeError"), answer.text
        assert client.get("/readyz").status_code == 200


def _endless(batch: list[Any]) -> Any:
    while True:
        yield 1.0


@pytest.mark.parametrize(
    "make",
    [_endless, lambda batch: (2 * x for x in batch)],
    ids=["endless", "one-per-example"],
)
def test_a_generator_is_read_no_further_than_one_past_the_examples(
    make: Callable[[list[Any]], Any],
) -> None:
    """An endless generator held the model's thread (and took memory) for good."""
    spec = loadonce.ModelSpec(name="m", loader=_returning(make), timeout_s=5)
    with TestClient(loadonce.create_app([spec])) as client:
        answer = client.post("/models/m/predict", json={"inputs": [1.0, 2.0]})
        if make is _endless:
            assert answer.status_code == 500
            assert answer.json()["error"].startswith("the model raised RuntimeError")
        else:
            assert answer.json()["outputs"] == [2.0, 4.0]
        assert client.get("/readyz").status_code == 200
