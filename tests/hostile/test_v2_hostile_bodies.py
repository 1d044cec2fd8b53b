"""Hostile Open Inference Protocol bodies: every client mistake is a 4xx with a message, and
nothing is allocated in proportion to a number that the request's bytes do not back."""

from __future__ import annotations

import json
import os
import struct
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2 as httpx
import psutil
import pytest
from fastapi.testclient import TestClient

import loadonce
from tests.servers import ThreadedServer
from tests.v2_models import v2_specs


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ThreadedServer]:
    directory: Path = tmp_path_factory.mktemp("hostile-v2")
    with ThreadedServer(loadonce.create_app(v2_specs(directory))) as running:
        yield running


@pytest.fixture(scope="module")
def echo_server() -> Iterator[ThreadedServer]:
    """A model that declares no inputs: any name, shape and datatype reaches the decoding."""
    spec = loadonce.ModelSpec(name="echo", loader="tests.loaders:echo")
    with ThreadedServer(loadonce.create_app([spec])) as running:
        yield running


Json = dict[str, Any]


def _tensor(shape: list[Any], datatype: str, data: object = None, **params: object) -> Json:
    tensor: dict[str, object] = {"name": "input", "shape": shape, "datatype": datatype}
    if data is not None:
        tensor["data"] = data
    if params:
        tensor["parameters"] = params
    return tensor


def _binary(tensors: list[Json], binary: bytes, **extra: object) -> tuple[bytes, dict[str, str]]:
    header = json.dumps({"inputs": tensors, **extra}).encode()
    return header + binary, {"Inference-Header-Content-Length": str(len(header))}


HUGE = [10**8, 2 * 10**8, 2**40, 2**62, 2**70]

# (id, model, body bytes, extra headers)
JSON_CASES: list[tuple[str, Json]] = [
    *((f"bytes json {n}", {"inputs": [_tensor([n], "BYTES", ["a"])]}) for n in HUGE),
    *((f"fp32 json {n}", {"inputs": [_tensor([n], "FP32", [1.0])]}) for n in HUGE),
    ("bytes [2**62, 4]", {"inputs": [_tensor([2**62, 4], "BYTES", ["a"])]}),
    ("zero-size with a huge dimension", {"inputs": [_tensor([0, 2**70], "FP64", [])]}),
    ("zero-size bytes with a huge dimension", {"inputs": [_tensor([0, 2**62], "BYTES", [])]}),
    ("65 dimensions", {"inputs": [_tensor([1] * 65, "FP64", [1.0])]}),
    ("1000 dimensions", {"inputs": [_tensor([1] * 1000, "FP64", [1.0])]}),
    ("booleans as FP64", {"inputs": [_tensor([2], "FP64", [1.5, True])]}),
    ("only booleans as FP64", {"inputs": [_tensor([2], "FP64", [True, False])]}),
    ("booleans as INT32", {"inputs": [_tensor([2], "INT32", [1, True])]}),
    ("nested booleans", {"inputs": [_tensor([1, 2], "FP32", [[1.0, False]])]}),
    ("string in FP64", {"inputs": [_tensor([1], "FP64", ["1"])]}),
    # (null alone in FP64 is NaN, as KServe's clients send it: test_v2_errors.py)
    ("null beside text in FP64", {"inputs": [_tensor([1, 2], "FP64", [[None, "1"]])]}),
    ("null in INT64", {"inputs": [_tensor([1], "INT64", [None])]}),
    ("object in FP64", {"inputs": [_tensor([1], "FP64", [{"a": 1}])]}),
    ("number in BYTES", {"inputs": [_tensor([1], "BYTES", [1])]}),
    ("unknown datatype", {"inputs": [_tensor([1], "FP128", [1.0])]}),
    ("negative dimension", {"inputs": [_tensor([-1], "FP64", [1.0])]}),
    ("float dimension", {"inputs": [_tensor([1.5], "FP64", [1.0])]}),
    ("huge integer value", {"inputs": [_tensor([1], "INT64", [2**70])]}),
    ("huge float value", {"inputs": [_tensor([1], "FP32", [1e300])]}),
    ("timeout NaN", {"inputs": [_tensor([1], "FP64", [1.0])], "parameters": {"timeout": "NaN"}}),
    ("timeout negative", {"inputs": [_tensor([1], "FP64", [1.0])], "parameters": {"timeout": -1}}),
    ("binary size negative", {"inputs": [_tensor([1], "FP64", binary_data_size=-1)]}),
    ("binary size huge", {"inputs": [_tensor([1], "FP64", binary_data_size=2**70)]}),
    ("inputs not a list", {"inputs": {"name": "x"}}),
    ("no inputs", {"inputs": []}),
    ("deep nesting", {"inputs": [_tensor([1], "FP64", json.loads("[" * 200 + "1" + "]" * 200))]}),
]


def _raw_json_cases() -> list[tuple[str, bytes, dict[str, str]]]:
    cases: list[tuple[str, bytes, dict[str, str]]] = [
        (name, json.dumps(body).encode(), {}) for name, body in JSON_CASES
    ]
    cases += [
        (
            "timeout NaN literal",
            b'{"inputs":[{"name":"input","shape":[1],"datatype":"FP64",'
            b'"data":[1.0]}],"parameters":{"timeout":NaN}}',
            {},
        ),
        (
            "timeout 1e400",
            b'{"inputs":[{"name":"input","shape":[1],"datatype":"FP64",'
            b'"data":[1.0]}],"parameters":{"timeout":1e400}}',
            {},
        ),
        ("not json", b"{", {}),
        ("not utf-8", b'{"inputs": "\xff"}', {}),
        ("very deep json", b"[" * 100_000 + b"]" * 100_000, {}),
    ]
    for n in HUGE:
        body, headers = _binary([_tensor([n], "BYTES", binary_data_size=8)], b"\x04\0\0\0abcd")
        cases.append((f"bytes binary {n}", body, headers))
        body, headers = _binary([_tensor([n], "FP32", binary_data_size=4)], b"\0\0\0\0")
        cases.append((f"fp32 binary {n}", body, headers))
    body, headers = _binary([_tensor([2**62, 4], "BYTES", binary_data_size=4)], b"\0\0\0\0")
    cases.append(("bytes binary [2**62, 4]", body, headers))
    body, headers = _binary([_tensor([0, 2**70], "BYTES", binary_data_size=0)], b"")
    cases.append(("bytes binary zero-size huge", body, headers))
    body, headers = _binary([_tensor([2], "BYTES", binary_data_size=8)], struct.pack("<I", 2**31))
    cases.append(("bytes element longer than the body", body + b"abcd", headers))
    for value in ("10_8", "+10", "1 0", "0x10", "-1", "1e3", "99999999999999999999"):
        body, _ = _binary([_tensor([1], "FP32", binary_data_size=4)], b"\0\0\0\0")
        cases.append((f"header length {value!r}", body, {"Inference-Header-Content-Length": value}))
    return cases


CASES = _raw_json_cases()


@pytest.mark.parametrize(("case", "body", "headers"), CASES, ids=[c[0] for c in CASES])
@pytest.mark.parametrize("model", ["tensors", "shout", "scaler"])
def test_each_hostile_body_is_a_4xx_with_a_message(
    server: ThreadedServer, case: str, body: bytes, headers: dict[str, str], model: str
) -> None:
    response = httpx.post(
        f"{server.url}/v2/models/{model}/infer",
        content=body,
        headers={"Content-Type": "application/json", **headers},
        timeout=30,
    )
    assert 400 <= response.status_code < 500, (case, response.status_code, response.text)
    error = response.json()["error"]
    assert error
    assert "the model raised" not in error


@pytest.mark.parametrize(
    "value", [{"a": "x" * 100_000}, 10**4000], ids=["an object", "a 4,000-digit number"]
)
def test_a_refusal_quoting_a_clients_value_quotes_an_excerpt(
    echo_server: ThreadedServer, value: object
) -> None:
    """A BYTES element that is not text was quoted whole in the 400 (100 KB of it)."""
    body = json.dumps({"inputs": [_tensor([1], "BYTES", [value])]})
    response = httpx.post(
        f"{echo_server.url}/v2/models/echo/infer",
        content=body,
        headers={"Content-Type": "application/json"},
        timeout=30,
    )
    assert response.status_code == 400, response.text
    assert "BYTES data must be strings" in response.json()["error"]
    assert len(response.content) < 1000


def test_memory_stays_flat_over_many_hostile_requests(server: ThreadedServer) -> None:
    process = psutil.Process(os.getpid())
    amplifying = [(b, h) for name, b, h in CASES if "binary" in name or "json" in name]
    with httpx.Client(base_url=server.url, timeout=30) as client:
        for body, headers in amplifying:  # warm every path once
            client.post("/v2/models/shout/infer", content=body, headers=headers)
        before = process.memory_info().rss
        for _ in range(1000 // len(amplifying) + 1):
            for body, headers in amplifying:
                client.post("/v2/models/shout/infer", content=body, headers=headers)
        grown = process.memory_info().rss - before
    assert grown < 64 * 2**20, f"RSS grew by {grown / 2**20:.0f} MiB"


@pytest.mark.parametrize("timeout", ["1e300", "1" + "0" * 400], ids=["float", "400 digits"])
def test_a_finite_timeout_of_any_size_is_accepted(server: ThreadedServer, timeout: str) -> None:
    """An integer past a float's range overflowed the division to seconds: a 500."""
    tensor = json.dumps(_tensor([1], "FP64", [1.0]))
    body = f'{{"inputs": [{tensor}], "parameters": {{"timeout": {timeout}}}}}'
    answered = httpx.post(
        f"{server.url}/v2/models/scaler/infer",
        content=body,
        headers={"content-type": "application/json"},
    )
    assert answered.status_code == 200, answered.text


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_rows_of_no_values_are_refused_before_they_are_built(binary: bool) -> None:
    """A tensor of shape [N, 0] carries no data: its N rows come from nothing the body's
    bytes back. Refused (413, past max_request_examples) before they are built: they were
    built first, a gigabyte for N = 6 million from an 80-byte body."""
    rows = 2**20
    tensor = _tensor([rows, 0], "FP32", [])
    if binary:
        body, headers = _binary([_tensor([rows, 0], "FP32", binary_data_size=0)], b"")
    else:
        body, headers = json.dumps({"inputs": [tensor]}).encode(), {}
    spec = loadonce.ModelSpec(name="echo", loader="tests.loaders:echo")  # declares no shape
    with TestClient(loadonce.create_app([spec])) as client:
        tracemalloc.start()
        try:
            answer = client.post("/v2/models/echo/infer", content=body, headers=headers)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    assert answer.status_code == 413, answer.text
    assert f"holds {rows} examples" in answer.json()["error"]
    assert peak < 8 * 2**20, f"{peak / 2**20:.0f} MiB allocated at the peak"


@pytest.mark.parametrize(
    ("shape", "datatype", "data"),
    [
        ([1, 0], "FP64", [[]] * 50_000),  # 0 elements each way: the lists were built whole
        ([1, 0], "BYTES", [[]] * 50_000),
        ([2, 0], "FP64", [[], [[]] * 50_000]),  # past the first row
        ([2, 0], "BYTES", [[], [[]] * 50_000]),
        ([2], "BYTES", ["a", [[]] * 50_000]),
    ],
    ids=["empty rows", "empty rows of text", "second row", "second row of text", "in a row"],
)
def test_data_of_more_lists_than_its_shape_nests_is_refused(
    echo_server: ThreadedServer, shape: list[int], datatype: str, data: object
) -> None:
    """For a model that declares no inputs too: before this, data whose element count
    matched (0 = 0) was taken whatever its lists held (16 million empty lists: 1.6 GB, the
    loop held 11 s)."""
    body = {"inputs": [_tensor(shape, datatype, data)]}
    response = httpx.post(f"{echo_server.url}/v2/models/echo/infer", json=body, timeout=30)
    assert response.status_code == 400, response.text
    assert f"more lists than its shape {shape} can nest" in response.json()["error"]


@pytest.mark.parametrize(
    ("shape", "data"),
    [([1, 6], [[1, 2, 3], [4, 5, 6]]), ([6], [[1, 2], [3, 4], [5, 6]]), ([1, 2], [[[1, 2]]])],
)
def test_data_nested_otherwise_than_its_shape_is_taken_row_major(
    echo_server: ThreadedServer, shape: list[int], data: object
) -> None:
    """As Triton takes it: the elements in row-major order, whatever their nesting."""
    body = {"inputs": [_tensor(shape, "FP64", data)]}
    response = httpx.post(f"{echo_server.url}/v2/models/echo/infer", json=body, timeout=30)
    assert response.status_code == 200, response.text
