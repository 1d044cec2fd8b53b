"""How many tensors and parameters one inference request may name, over REST and gRPC:
past the bounds, a 400 (INVALID_ARGUMENT) naming the field and the bound, before any work per
item. 1 million inputs in a 14 MiB gRPC message held the event loop 40 seconds (health probes
waited as long), and 30 million shape dimensions in 28 MiB took 570 MB."""

from __future__ import annotations

import json
import tracemalloc
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import httpx2 as httpx
import numpy as np
import pytest
import tritonclient.grpc as triton
from tritonclient.utils import InferenceServerException

import loadonce
from loadonce.protocols.grpc import grpc_lifespan
from tests.servers import ThreadedServer, free_port

MAX_TENSORS = 1024
MAX_PARAMETERS = 64


@pytest.fixture(scope="module")
def servers() -> Iterator[tuple[str, str]]:
    """An echo model (it declares no inputs: any names reach the decoding): its REST base
    URL and its gRPC address."""
    port = free_port()
    spec = loadonce.ModelSpec(name="echo", loader="tests.loaders:echo")
    app = loadonce.create_app([spec], wrap=grpc_lifespan(port=port))
    with ThreadedServer(app) as running:
        yield running.url, f"127.0.0.1:{port}"


def _inputs(count: int) -> list[triton.InferInput]:
    tensors = []
    for index in range(count):
        tensor = triton.InferInput(f"x{index}", [1], "INT32")
        tensor.set_data_from_numpy(np.array([index], dtype=np.int32))
        tensors.append(tensor)
    return tensors


def _with_parameters(count: int) -> list[triton.InferInput]:
    [tensor] = _inputs(1)
    for index in range(count):
        tensor._get_tensor().parameters[f"p{index}"].int64_param = index
    return [tensor]


def _outputs(count: int, parameters: int = 0) -> list[triton.InferRequestedOutput]:
    outputs = [triton.InferRequestedOutput(f"o{index}") for index in range(count)]
    for index in range(parameters):
        outputs[0]._get_tensor().parameters[f"p{index}"].bool_param = True
    return outputs


GrpcCase = Callable[[triton.InferenceServerClient], Any]
GRPC_CASES: list[tuple[str, GrpcCase, str]] = [
    ("inputs", lambda c: c.infer("echo", _inputs(MAX_TENSORS + 1)), "inputs"),
    (
        "outputs",
        lambda c: c.infer("echo", _inputs(1), outputs=_outputs(MAX_TENSORS + 1)),
        "outputs",
    ),
    (
        "request parameters",
        lambda c: c.infer(
            "echo", _inputs(1), parameters={f"p{i}": i for i in range(MAX_PARAMETERS + 1)}
        ),
        "parameters",
    ),
    (
        "input parameters",
        lambda c: c.infer("echo", _with_parameters(MAX_PARAMETERS + 1)),
        "inputs['x0'].parameters",
    ),
    (
        "output parameters",
        lambda c: c.infer("echo", _inputs(1), outputs=_outputs(1, MAX_PARAMETERS + 1)),
        "outputs['o0'].parameters",
    ),
]


@pytest.mark.parametrize(("case", "call", "field"), GRPC_CASES, ids=[c[0] for c in GRPC_CASES])
def test_grpc_counts_past_their_bounds_are_refused_by_name(
    servers: tuple[str, str], case: str, call: GrpcCase, field: str
) -> None:
    with triton.InferenceServerClient(servers[1]) as client:
        with pytest.raises(InferenceServerException) as raised:
            call(client)
        assert raised.value.status() == str(grpc.StatusCode.INVALID_ARGUMENT)
        message = raised.value.message()
        assert field in message, message
        assert "at most" in message, message
        assert client.is_server_live()


def test_grpc_counts_at_their_bounds_are_answered(servers: tuple[str, str]) -> None:
    with triton.InferenceServerClient(servers[1]) as client:
        answer = client.infer(
            "echo",
            _with_parameters(MAX_PARAMETERS),
            parameters={f"p{i}": i for i in range(MAX_PARAMETERS)},
        )
        assert answer.as_numpy("echo") is not None


def test_a_grpc_shape_of_millions_of_dimensions_is_refused_before_it_is_copied(
    servers: tuple[str, str],
) -> None:
    """The shape is a repeated field: it was copied into a list of Python ints (8 bytes
    each, and more) before its length was checked."""
    [tensor] = _inputs(1)
    tensor._get_tensor().shape[:] = [1] * 4_000_000
    tracemalloc.start()
    try:
        with triton.InferenceServerClient(servers[1]) as client:
            tracemalloc.reset_peak()
            with pytest.raises(InferenceServerException) as raised:
                client.infer("echo", [tensor])
            _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert "its shape has 4000000 dimensions; at most 64" in raised.value.message()
    # The client's own 4 MB message, and the server's copy of its bytes: nothing per dimension.
    assert peak < 16 * 2**20, f"peak {peak / 2**20:.0f} MiB"


def _tensor_json(name: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "shape": [1], "datatype": "INT32", "data": [1], **extra}


TOO_MANY_PARAMETERS = {f"p{i}": i for i in range(MAX_PARAMETERS + 1)}
REST_CASES: list[tuple[str, dict[str, Any], str, int]] = [
    (
        "inputs",
        {"inputs": [_tensor_json(f"x{i}") for i in range(MAX_TENSORS + 1)]},
        "body.inputs",
        MAX_TENSORS,
    ),
    (
        "outputs",
        {"inputs": [_tensor_json("x")], "outputs": [{"name": "o"}] * (MAX_TENSORS + 1)},
        "body.outputs",
        MAX_TENSORS,
    ),
    (
        "request parameters",
        {"inputs": [_tensor_json("x")], "parameters": TOO_MANY_PARAMETERS},
        "body.parameters",
        MAX_PARAMETERS,
    ),
    (
        "input parameters",
        {"inputs": [_tensor_json("x", parameters=TOO_MANY_PARAMETERS)]},
        "body.inputs.0.parameters",
        MAX_PARAMETERS,
    ),
]


@pytest.mark.parametrize(
    ("case", "body", "field", "bound"), REST_CASES, ids=[c[0] for c in REST_CASES]
)
def test_rest_counts_past_their_bounds_are_refused_by_name(
    servers: tuple[str, str], case: str, body: dict[str, Any], field: str, bound: int
) -> None:
    answered = httpx.post(f"{servers[0]}/v2/models/echo/infer", json=body, timeout=30)
    assert answered.status_code == 400, answered.text
    error = answered.json()["error"]
    assert field in error, error
    assert f"at most {bound}" in error, error


TENSOR = {"name": "x", "shape": [1], "datatype": "FP32", "data": [1.0]}


@pytest.mark.parametrize(
    ("field", "body"),
    [
        ("inputs", {"inputs": [TENSOR] * 50_000}),
        ("outputs", {"inputs": [TENSOR], "outputs": [{"name": "y"}] * 100_000}),
    ],
    ids=["inputs", "outputs"],
)
def test_a_large_rest_body_is_counted_before_it_is_parsed(
    servers: tuple[str, str], field: str, body: dict[str, Any]
) -> None:
    # Over 1 MiB: its tensors are counted in its bytes (the JSON route's scan), before pydantic
    # builds an object for each (a million held the GIL 5 s only to be refused): the refusal
    # says how many it counted.
    raw = json.dumps(body).encode()
    assert len(raw) > 1 << 20
    answered = httpx.post(
        f"{servers[0]}/v2/models/echo/infer",
        content=raw,
        headers={"content-type": "application/json"},
        timeout=60,
    )
    assert answered.status_code == 400, answered.text[:300]
    error = answered.json()["error"]
    count = len(body[field])
    assert field in error, error
    assert f"{count} entries; at most 1024" in error, error
