"""Requests share a call only when their parameters are the same values of the same types:
Python holds 1, 1.0 and True equal (and 0, 0.0, False), and such requests shared a call
in which every one got the first's parameters."""

from __future__ import annotations

from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx2 as httpx

import loadonce
from tests.servers import ThreadedServer


class _SaysItsParameter(loadonce.Predictor):
    request_parameters = frozenset({"scale"})

    def predict(self, batch: Any) -> list[str]:
        return self.predict_with(batch, {})

    def predict_with(self, batch: Any, parameters: Mapping[str, Any]) -> list[str]:
        scale = parameters.get("scale")
        return [f"{type(scale).__name__}:{scale!r}" for _ in batch]


def test_parameters_equal_in_python_but_not_in_type_never_share_a_call() -> None:
    spec = loadonce.ModelSpec(
        name="m",
        loader=_SaysItsParameter,
        concurrency="serialized",
        batching=loadonce.Batching(max_batch_size=32, max_wait_ms=50),
    )
    values: list[Any] = [1, 1.0, True, 0, 0.0, False, -0.0] * 2
    with ThreadedServer(loadonce.create_app([spec])) as server, httpx.Client() as client:

        def ask(value: Any) -> str:
            body = {"inputs": [0], "parameters": {"scale": value}}
            answer = client.post(f"{server.url}/models/m/predict", json=body, timeout=10)
            assert answer.status_code == 200, answer.text
            output: str = answer.json()["outputs"][0]
            return output

        with ThreadPoolExecutor(len(values)) as pool:
            answers = list(pool.map(ask, values))
    assert answers == [f"{type(value).__name__}:{value!r}" for value in values]
