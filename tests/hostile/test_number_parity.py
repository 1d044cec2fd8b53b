"""One number policy for both protocols: what the JSON route refuses, /v2 refuses, and the
other way round."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx2 as httpx
import pytest

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
    ("float64", "[1e400]", 400),
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
    count = data.count(",") + 1
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
