"""Large answers are written off the event loop, a piece at a time: the text is the one a
single call writes, and the worker answers its health probe meanwhile (an answer of a
thousand rows of 30,000 numbers held the loop for 5.7 s)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from typing import Any

import httpx2 as httpx
import numpy as np
import pytest

import loadonce
from loadonce.core.jsonable import to_jsonable
from loadonce.http.json_answer import json_text
from loadonce.http.json_pieces import PIECE_ELEMENTS, json_in_pieces
from tests.servers import ThreadedServer

WIDE = PIECE_ELEMENTS + 7  # one row longer than a piece


@pytest.mark.parametrize(
    "value",
    [
        [np.arange(300, dtype=np.float32) / 7 for _ in range(1000)],
        np.arange(3 * WIDE, dtype=np.int64).reshape(3, WIDE),
        [{"vector": np.full(WIDE, np.nan), "label": "a"}, {"vector": np.ones(WIDE), "label": "b"}],
        {"outputs": [[float(i)] * 500 for i in range(400)], "name": "x"},
        (np.arange(WIDE * 2) / 3).reshape(2, 1, WIDE),
        [["text", 1.5, None]] * 50_000,
        [{1: np.ones(WIDE), "1": [0.0], 2: "two"}],
        [{"label": "a", "scores": np.ones(WIDE)}, {"label": "b", "scores": np.zeros(WIDE)}],
    ],
    ids=[
        "rows",
        "2-D over a piece a row",
        "objects",
        "nested lists",
        "3-D",
        "mixed rows",
        "keys that collide as text",
        "a small output first",
    ],
)
def test_a_value_in_pieces_is_the_text_one_call_writes(value: Any) -> None:
    assert json_in_pieces(value, json_text, to_jsonable) == json_text(to_jsonable(value))


class _Wide:
    """Each example's answer: 10,000 numbers."""

    def predict(self, batch: list[Any]) -> list[Any]:
        return [np.full(10_000, 0.5) for _ in batch]


def _longest_probe_wait(url: str, busy: threading.Event) -> float:
    longest = 0.0
    with httpx.Client() as client:
        while busy.is_set():
            started = time.monotonic()
            client.get(f"{url}/livez", timeout=30)
            longest = max(longest, time.monotonic() - started)
            time.sleep(0.02)
    return longest


def _while_probed(url: str, request: Callable[[], httpx.Response]) -> tuple[httpx.Response, float]:
    """``request()``'s answer, and the longest the worker's health probe waited meanwhile."""
    busy = threading.Event()
    busy.set()
    waits: list[float] = []
    probing = threading.Thread(target=lambda: waits.append(_longest_probe_wait(url, busy)))
    probing.start()
    time.sleep(0.2)
    try:
        answer = request()
    finally:
        busy.clear()
        probing.join()
    return answer, waits[0]


@pytest.mark.parametrize("route", ["json", "v2"])
def test_the_worker_answers_its_probe_while_a_large_answer_is_written(route: str) -> None:
    spec = loadonce.ModelSpec(name="wide", loader=_Wide)
    with ThreadedServer(loadonce.create_app([spec])) as server:
        if route == "json":
            body: dict[str, Any] = {"inputs": list(range(1000))}
            path = "/models/wide/predict"
        else:
            tensor = {"name": "x", "datatype": "INT64", "shape": [1000], "data": list(range(1000))}
            body, path = {"inputs": [tensor]}, "/v2/models/wide/infer"
        answer, waited = _while_probed(
            server.url, lambda: httpx.post(f"{server.url}{path}", json=body, timeout=120)
        )
    assert answer.status_code == 200
    document = json.loads(answer.content)
    if route == "json":
        assert len(document["outputs"]) == 1000
        assert document["outputs"][999] == [0.5] * 10_000
    else:
        [output] = document["outputs"]
        assert output["shape"] == [1000, 10_000]
        assert len(output["data"]) == 10_000_000
    # Written on the loop, the probe waited for the whole answer (seconds); between two
    # pieces, it is answered.
    assert waited < 0.75, f"the probe waited {waited:.2f} s"


class _EmbeddingAndLabel:
    """Two outputs per example: a label, then 768 numbers (more than 65,536 values in all
    from 86 examples on)."""

    def predict(self, batch: list[Any]) -> list[Any]:
        return [{"label": "x", "embedding": np.full(768, 0.25, np.float32)} for _ in batch]


def test_a_large_v2_answer_of_several_outputs_is_written() -> None:
    """A small output beside a large one (a label and an embedding) was written whole with
    its array inside: a 500 ("ndarray is not JSON serializable") from 86 examples on."""
    from fastapi.testclient import TestClient

    spec = loadonce.ModelSpec(name="m", loader=_EmbeddingAndLabel)
    with TestClient(loadonce.create_app([spec])) as client:
        tensor = {"name": "x", "datatype": "INT64", "shape": [100], "data": list(range(100))}
        answer = client.post("/v2/models/m/infer", json={"inputs": [tensor]})
    assert answer.status_code == 200, answer.text
    outputs = {output["name"]: output for output in answer.json()["outputs"]}
    assert outputs["label"]["data"] == ["x"] * 100
    assert outputs["embedding"]["shape"] == [100, 768]
    assert outputs["embedding"]["data"] == [0.25] * 76_800


class _Counts:
    """Each example's answer: how many elements it holds."""

    def predict(self, batch: list[Any]) -> list[Any]:
        return [int(np.size(example)) for example in batch]


def test_the_worker_answers_its_probe_while_many_tensor_elements_are_decoded() -> None:
    """Six million BYTES elements in binary (30 MB) were decoded on the loop one by one (13
    million held it 17 s); many elements are decoded off the loop."""
    count = 6_000_000
    binary = b"\x01\x00\x00\x00a" * count
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "x",
                    "datatype": "BYTES",
                    "shape": [1, count],
                    "parameters": {"binary_data_size": len(binary)},
                }
            ]
        }
    ).encode()
    spec = loadonce.ModelSpec(name="counts", loader=_Counts)
    with ThreadedServer(loadonce.create_app([spec])) as server:
        answer, waited = _while_probed(
            server.url,
            lambda: httpx.post(
                f"{server.url}/v2/models/counts/infer",
                content=header + binary,
                headers={"Inference-Header-Content-Length": str(len(header))},
                timeout=120,
            ),
        )
    assert answer.status_code == 200, answer.text
    assert answer.json()["outputs"][0]["data"] == [count]
    assert waited < 0.75, f"the probe waited {waited:.2f} s"
