"""One number policy for both protocols: what the JSON route refuses, /v2 refuses, and the
other way round."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx2 as httpx
import pytest
from fastapi.testclient import TestClient

import loadonce
from tests.servers import ThreadedServer


def _identity(batch: Any) -> list[float]:
    return [float(x) for x in batch]


@pytest.fixture(scope="module")
def server() -> Iterator[ThreadedServer]:
    specs = [
        loadonce.ModelSpec(
            name=dtype,
            loader=lambda: _identity,
            input_shape=(),
            options={"input_dtype": dtype},
        )
        for dtype in ("float32", "int32", "float64")
    ]
    with ThreadedServer(loadonce.create_app(specs)) as running:
        yield running


DATATYPES = {"float32": "FP32", "int32": "INT32", "float64": "FP64"}
CASES = [
    ("float32", "[1e300]", 400),
    ("float32", "[1.5, true]", 400),
    # Infinities are values (as NaN is): tritonclient's JSON tensors write them Infinity,
    # as loadonce's own answers do; a literal past FP64's range reads as one, as in every
    # JSON parser. Only a finite value never becomes one.
    ("float32", "[Infinity, -Infinity, NaN]", 200),
    ("float64", "[1e400]", 200),
    # An integer past 2**64 (JavaScript writes 1e20 so) is the float it is, for a float.
    ("float32", "[100000000000000000000, 1]", 200),
    ("float64", "[100000000000000000000, 1.5]", 200),
    ("float64", f"[{10**400}]", 400),
    ("int32", "[100000000000000000000]", 400),
    ("float64", "[2.5, false]", 400),
    ("int32", "[2147483648]", 400),
    ("int32", "[1.5]", 400),
    ("float32", "[1.5, 2]", 200),
    ("int32", "[7]", 200),
]


@pytest.mark.parametrize(("model", "data", "status"), CASES)
def test_both_protocols_apply_one_number_policy(
    server: ThreadedServer, model: str, data: str, status: int
) -> None:
    count = data.count(",") + 1  # one value per comma-separated element
    rest = httpx.post(
        f"{server.url}/models/{model}/predict", content=f'{{"inputs": {data}}}'.encode()
    )
    v2 = httpx.post(
        f"{server.url}/v2/models/{model}/infer",
        content=(
            f'{{"inputs": [{{"name": "input", "shape": [{count}], '
            f'"datatype": "{DATATYPES[model]}", "data": {data}}}]}}'
        ).encode(),
    )
    assert (rest.status_code, v2.status_code) == (status, status), (rest.text, v2.text)


class _Echo(loadonce.Predictor):
    """Rows of two values of ``dtype``, answered as received."""

    def __init__(self, dtype: str) -> None:
        self.signature = loadonce.InputSignature(shape=(2,), dtype=dtype)

    def predict(self, batch: Any) -> list[Any]:
        return [row.tolist() for row in batch]


def test_integers_past_int64_and_ragged_rows_are_said_as_such() -> None:
    """An integer past int64 made NumPy an object array, refused as "not a rectangular
    array"; a ragged batch quoted NumPy's own message. A float model takes the integer as
    the float it is."""
    specs = [
        loadonce.ModelSpec(name=dtype, loader=lambda dtype=dtype: _Echo(dtype))
        for dtype in ("int64", "float64")
    ]
    json = {"content-type": "application/json"}
    huge = b'{"inputs": [[1, 1180591620717411303424]]}'
    ragged = b'{"inputs": [[1, 2], [3]]}'
    with TestClient(loadonce.create_app(specs)) as client:
        refused = client.post("/models/int64/predict", content=huge, headers=json)
        assert refused.status_code == 400
        assert "outside the range of int64" in refused.json()["error"]
        taken = client.post("/models/float64/predict", content=huge, headers=json)
        assert taken.json()["outputs"] == [[1.0, 1180591620717411303424.0]]
        for name in ("int64", "float64"):
            uneven = client.post(f"/models/{name}/predict", content=ragged, headers=json)
            assert uneven.status_code == 400
            assert "not a rectangular array" in uneven.json()["error"]
            assert "inhomogeneous" not in uneven.text


class _ArrayEcho(_Echo):
    """Each row answered as the array the model got: its dtype is the output's."""

    def predict(self, batch: Any) -> list[Any]:
        return list(batch)


INTEGER_TYPES = {
    "int8": "INT8",
    "int16": "INT16",
    "int32": "INT32",
    "int64": "INT64",
    "uint8": "UINT8",
    "uint16": "UINT16",
    "uint32": "UINT32",
    "uint64": "UINT64",
}


@pytest.fixture(scope="module")
def echoes() -> Iterator[TestClient]:
    specs = [
        loadonce.ModelSpec(name=dtype, loader=lambda dtype=dtype: _ArrayEcho(dtype))
        for dtype in INTEGER_TYPES
    ]
    with TestClient(loadonce.create_app(specs)) as client:
        yield client


def _bounds(dtype: str) -> tuple[int, int]:
    import numpy as np

    return int(np.iinfo(dtype).min), int(np.iinfo(dtype).max)


@pytest.mark.parametrize(("dtype", "datatype"), INTEGER_TYPES.items())
def test_every_integer_type_takes_its_whole_range_on_both_protocols(
    echoes: TestClient, dtype: str, datatype: str
) -> None:
    """uint64 values from 2**63 (NumPy reads them among other integers as floats) were refused
    on the JSON route as "numbers with a fraction or exponent", and taken on /v2."""
    low, high = _bounds(dtype)
    rows = [[low, high], [high // 2 + 1, 1]]
    taken = echoes.post(f"/models/{dtype}/predict", json={"inputs": rows})
    assert taken.status_code == 200, taken.text
    assert taken.json()["outputs"] == rows
    tensor = {"name": "input", "shape": [2, 2], "datatype": datatype}
    flat = [value for row in rows for value in row]
    v2 = echoes.post(f"/v2/models/{dtype}/infer", json={"inputs": [{**tensor, "data": flat}]})
    assert v2.status_code == 200, v2.text
    assert v2.json()["outputs"][0]["data"] == flat


@pytest.mark.parametrize(("dtype", "datatype"), INTEGER_TYPES.items())
def test_a_value_outside_an_integer_type_is_a_400_that_says_its_range(
    echoes: TestClient, dtype: str, datatype: str
) -> None:
    low, high = _bounds(dtype)
    tensor = {"name": "input", "shape": [2, 2], "datatype": datatype}
    for outside in (low - 1, high + 1):
        bad = [[outside, 1], [1, 1]]
        refused = echoes.post(f"/models/{dtype}/predict", json={"inputs": bad})
        assert refused.status_code == 400, outside
        assert f"outside the range of {dtype} ({low} to {high})" in refused.text
        data = [value for row in bad for value in row]
        refused = echoes.post(
            f"/v2/models/{dtype}/infer", json={"inputs": [{**tensor, "data": data}]}
        )
        assert refused.status_code == 400, outside
        assert f"outside the range of {datatype} ({low} to {high})" in refused.text
