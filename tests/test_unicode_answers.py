"""Text a model returns that UTF-8 cannot write (a lone surrogate: ``chr(0xD800)``, text decoded
with ``surrogateescape``) reaches the client with U+FFFD in its place, on every route that
answers text, whole and streamed; it failed the whole answer as a 500 (UnicodeEncodeError)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

import loadonce
from loadonce.core.generation import GenerationRequest

BROKEN = "caf\udce9 \ud800"  # what b"caf\xe9".decode("utf-8", "surrogateescape") gives, and more
SHOWN = "caf\ufffd \ufffd"


class Broken(loadonce.Predictor):
    max_new_tokens = 8

    def predict(self, batch: Any) -> list[Any]:
        return [BROKEN for _ in batch]

    def generate(self, request: GenerationRequest) -> Iterator[str]:
        yield "caf\udce9 "
        yield "\ud800"


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    spec = loadonce.ModelSpec(name="m", loader=Broken, max_request_examples=5000)
    app = loadonce.create_app([spec])
    with TestClient(app, raise_server_exceptions=False) as test_client:
        yield test_client


@pytest.mark.parametrize("examples", [1, 5000])  # 5000: the large answer, encoded in pieces
def test_the_json_route(client: TestClient, examples: int) -> None:
    response = client.post("/models/m/predict", json={"inputs": [[1.0]] * examples})
    assert response.status_code == 200, response.text
    assert response.json()["outputs"] == [SHOWN] * examples


def test_the_open_inference_protocol_in_json_and_binary(client: TestClient) -> None:
    tensor = {"name": "input0", "shape": [2, 1], "datatype": "FP64", "data": [1.0, 2.0]}
    whole = client.post("/v2/models/m/infer", json={"inputs": [tensor]})
    assert whole.status_code == 200, whole.text
    assert whole.json()["outputs"][0]["data"] == [SHOWN, SHOWN]

    binary = client.post(
        "/v2/models/m/infer",
        json={
            "inputs": [tensor],
            "outputs": [{"name": "output", "parameters": {"binary_data": True}}],
        },
    )
    assert binary.status_code == 200, binary.text
    length = int(binary.headers["inference-header-content-length"])
    element = SHOWN.encode("utf-8")
    prefixed = len(element).to_bytes(4, "little") + element
    assert binary.content[length:] == prefixed * 2


@pytest.mark.parametrize(
    ("path", "body", "text_of"),
    [
        ("/models/m/generate", {"prompt": "x"}, lambda answer: answer["text"]),
        ("/v2/models/m/generate", {"text_input": "x"}, lambda answer: answer["text_output"]),
        (
            "/v1/completions",
            {"model": "m", "prompt": "x"},
            lambda answer: answer["choices"][0]["text"],
        ),
    ],
)
def test_generated_text_whole(
    client: TestClient, path: str, body: dict[str, Any], text_of: Callable[[Any], str]
) -> None:
    response = client.post(path, json=body)
    assert response.status_code == 200, response.text
    assert text_of(response.json()) == SHOWN


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v2/models/m/generate_stream", {"text_input": "x"}),
        ("/v1/completions", {"model": "m", "prompt": "x", "stream": True}),
    ],
)
def test_generated_text_streamed(client: TestClient, path: str, body: dict[str, Any]) -> None:
    with client.stream("POST", path, json=body) as response:
        assert response.status_code == 200
        raw = b"".join(response.iter_bytes())
    events = [line[len(b"data: ") :] for line in raw.split(b"\n") if line.startswith(b"data: ")]
    pieces = [json.loads(event) for event in events if event != b"[DONE]"]
    assert not any("error" in piece for piece in pieces), pieces
    text = "".join(json.dumps(piece, ensure_ascii=False) for piece in pieces)
    assert "caf\ufffd" in text
    assert text.count("\ufffd") == 2
    assert not any(b"\xed" in event for event in events)  # no surrogate's bytes written
