"""The check that a model's output metadata, read before any request, is what its answers are."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from fastapi.testclient import TestClient


def described_outputs(http: TestClient, model: str) -> list[dict[str, Any]]:
    """The model's outputs as /v2 metadata lists them; its /config and /models/{m} list the
    same names (and /config the same datatypes)."""
    outputs: list[dict[str, Any]] = http.get(f"/v2/models/{model}").json()["outputs"]
    config = http.get(f"/v2/models/{model}/config").json()["output"]
    datatypes = {
        "TYPE_STRING" if o["datatype"] == "BYTES" else f"TYPE_{o['datatype']}" for o in outputs
    }
    assert [o["name"] for o in config] == [o["name"] for o in outputs]
    assert {o["data_type"] for o in config} == datatypes
    listed = http.get(f"/models/{model}").json()["outputs"]
    assert [o["name"] for o in listed] == [o["name"] for o in outputs]
    return outputs


def fits(described: list[int], shape: list[int]) -> bool:
    """Whether an answer's shape is the described one, -1 standing for any size."""
    return len(described) == len(shape) and all(
        d in (-1, s) for d, s in zip(described, shape, strict=True)
    )


# A request: a JSON body, or a body of binary tensors with its headers.
Request = dict[str, Any] | tuple[bytes, dict[str, str]]


def binary_request(header: dict[str, Any], data: bytes) -> tuple[bytes, dict[str, str]]:
    """The JSON header followed by binary tensor data (the protocol's extension)."""
    head = json.dumps(header).encode()
    return head + data, {"Inference-Header-Content-Length": str(len(head))}


def assert_answers_as_described(
    http: TestClient, model: str, requests: Sequence[Request]
) -> list[dict[str, Any]]:
    """Reads the metadata first (before the model answered anything, in a fresh app), then
    checks that every output of every request's answer is a described one, in its datatype
    and shape, that each described output was answered by some request (a classifier
    answers its first unless others are requested), and that the metadata did not change.
    Returns the metadata."""
    before = described_outputs(http, model)
    assert before, f"{model}: no outputs described before its first request"
    by_name = {o["name"]: o for o in before}
    seen = set()
    for body in requests:
        path = f"/v2/models/{model}/infer"
        if isinstance(body, tuple):
            response = http.post(path, content=body[0], headers=body[1])
        else:
            response = http.post(path, json=body)
        assert response.status_code == 200, response.text
        for output in response.json()["outputs"]:
            described = by_name.get(output["name"])
            assert described is not None, (model, body, output["name"], list(by_name))
            assert output["datatype"] == described["datatype"], (model, body, output)
            assert fits(described["shape"], output["shape"]), (model, body, output["shape"])
            seen.add(output["name"])
    assert seen == set(by_name), (model, seen)
    assert described_outputs(http, model) == before
    return before
