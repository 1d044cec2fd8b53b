"""What Triton's example programs for tritonclient's HTTP API do, against a real loadonce
server serving models under the names they use (``tests/v2_models.py``): health and
metadata, inference (sync and asyncio) with its statistics, BYTES tensors, model control
with a configuration; then the statistics' values, and the configuration's.

The programs themselves (NVIDIA's BSD-3 ``src/python/examples`` of
triton-inference-server/client) are not copied into this repository (this project commits no
code fetched from other repositories): ``python -m tests.triton_examples DIRECTORY`` runs each
one as it is published, against a fresh server, with its one Triton-identity check (the
server's name) adapted.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2 as httpx
import numpy as np
import pytest
import tritonclient.grpc as triton_grpc
import tritonclient.http as triton
import tritonclient.http.aio as triton_aio
from tritonclient.utils import InferenceServerException

import loadonce
from loadonce.protocols.grpc import grpc_lifespan
from tests.servers import ThreadedServer, free_port
from tests.v2_models import triton_example_specs

UNKNOWN = "Request for unknown model"
INPUT0 = np.arange(16, dtype=np.int32).reshape(1, 16)
INPUT1 = np.full((1, 16), -1, dtype=np.int32)


@pytest.fixture(scope="module")
def server() -> Iterator[ThreadedServer]:
    with ThreadedServer(loadonce.create_app(triton_example_specs())) as running:
        yield running


@pytest.fixture
def client(server: ThreadedServer) -> Iterator[triton.InferenceServerClient]:
    connection = triton.InferenceServerClient(server.url.removeprefix("http://"))
    yield connection
    connection.close()


def _pair(module: Any = triton) -> list[Any]:
    """As the examples send them: INPUT0 in JSON, INPUT1 in binary."""
    first = module.InferInput("INPUT0", [1, 16], "INT32")
    first.set_data_from_numpy(INPUT0, binary_data=False)
    second = module.InferInput("INPUT1", [1, 16], "INT32")
    second.set_data_from_numpy(INPUT1, binary_data=True)
    return [first, second]


def _requested(module: Any = triton) -> list[Any]:
    return [
        module.InferRequestedOutput("OUTPUT0", binary_data=True),
        module.InferRequestedOutput("OUTPUT1", binary_data=False),
    ]


def _check_sum_and_difference(result: Any) -> None:
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), INPUT0 + INPUT1)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), INPUT0 - INPUT1)


def test_health_and_metadata(client: triton.InferenceServerClient) -> None:
    query = {"test_1": 1, "test_2": 2}
    assert client.is_server_live(query_params=query)
    assert client.is_server_ready()
    assert client.is_model_ready("simple")
    assert client.get_server_metadata()["name"] == "loadonce"
    assert client.get_model_metadata("simple", query_params=query)["name"] == "simple"
    with pytest.raises(InferenceServerException) as unknown:
        client.get_model_metadata("wrong_model_name")
    assert UNKNOWN in unknown.value.message()


def test_infer_then_its_statistics(client: triton.InferenceServerClient) -> None:
    query = {"test_1": 1, "test_2": 2}
    _check_sum_and_difference(
        client.infer("simple", _pair(), outputs=_requested(), query_params=query)
    )
    statistics = client.get_inference_statistics(model_name="simple")
    assert len(statistics["model_stats"]) == 1
    _check_sum_and_difference(client.infer("simple", _pair(), outputs=None))
    with pytest.raises(InferenceServerException) as unknown:
        client.infer("wrong_model_name", _pair(), outputs=_requested())
    assert unknown.value.message().startswith(UNKNOWN)


def test_infer_with_asyncio_in_parallel(server: ThreadedServer) -> None:
    async def run() -> None:
        client = triton_aio.InferenceServerClient(server.url.removeprefix("http://"))
        try:
            one = await client.infer("simple", _pair(triton_aio), outputs=_requested(triton_aio))
            _check_sum_and_difference(one)
            statistics = await client.get_inference_statistics(model_name="simple")
            assert len(statistics["model_stats"]) == 1
            both = await asyncio.gather(
                client.infer("simple", _pair(triton_aio), outputs=_requested(triton_aio)),
                client.infer("simple", _pair(triton_aio)),
            )
            for result in both:
                _check_sum_and_difference(result)
        finally:
            await client.close()

    asyncio.run(run())


def test_bytes_tensors(client: triton.InferenceServerClient) -> None:
    numbers = [np.arange(16).reshape(1, 16), np.ones((1, 16), dtype=np.int64)]
    inputs = []
    for index, (values, binary) in enumerate(zip(numbers, (True, False), strict=True)):
        tensor = triton.InferInput(f"INPUT{index}", [1, 16], "BYTES")
        text = np.array([str(x).encode() for x in values.flat], dtype=np.object_).reshape(1, 16)
        tensor.set_data_from_numpy(text, binary_data=binary)
        inputs.append(tensor)
    result = client.infer("simple_string", inputs, outputs=_requested())
    sums = [int(x) for x in result.as_numpy("OUTPUT0").flat]
    differences = [int(x) for x in result.as_numpy("OUTPUT1").flat]
    assert sums == list((numbers[0] + numbers[1]).flat)
    assert differences == list((numbers[0] - numbers[1]).flat)
    for data in (b"he\x00llo", b"\x00\x01\x02\x03"):
        array = np.array([data] * 16, dtype=np.object_).reshape(1, 16)
        for binary in (True, False):
            tensor = triton.InferInput("INPUT0", [1, 16], "BYTES")
            tensor.set_data_from_numpy(array, binary_data=binary)
            wanted = [triton.InferRequestedOutput("OUTPUT0", binary_data=binary)]
            answer = client.infer("simple_identity", [tensor], outputs=wanted)
            got = [
                x if isinstance(x, bytes) else str(x).encode()
                for x in answer.as_numpy("OUTPUT0").flat
            ]
            assert got == [data] * 16


def test_model_control_with_a_configuration() -> None:
    with ThreadedServer(loadonce.create_app(triton_example_specs())) as running:
        client = triton.InferenceServerClient(running.url.removeprefix("http://"))
        assert len(client.get_model_repository_index()) == 7
        client.load_model("simple")
        assert client.is_model_ready("simple")
        with pytest.raises(InferenceServerException) as malformed:
            client.load_model(
                "simple", config='"parameters": {"config": {{"max_batch_size": "16"}}}'
            )
        assert "failed to load" in malformed.value.message()
        assert client.get_model_config("simple")["max_batch_size"] == 8
        client.load_model("simple", config='{"max_batch_size":"16"}')
        assert client.get_model_config("simple")["max_batch_size"] == 16
        _check_sum_and_difference(client.infer("simple", _pair()))
        client.unload_model("simple")
        assert not client.is_model_ready("simple")
        with pytest.raises(InferenceServerException) as unknown:
            client.load_model("wrong_model_name")
        assert "failed to load 'wrong_model_name'" in unknown.value.message()
        client.close()


def test_the_configuration_of_a_model(client: triton.InferenceServerClient) -> None:
    config = client.get_model_config("simple")
    assert config == {
        "name": "simple",
        "platform": "python",
        "backend": "python",
        "max_batch_size": 8,
        "input": [
            {"name": "INPUT0", "data_type": "TYPE_INT32", "dims": [16]},
            {"name": "INPUT1", "data_type": "TYPE_INT32", "dims": [16]},
        ],
        "output": [
            {"name": "OUTPUT0", "data_type": "TYPE_INT32", "dims": [16]},
            {"name": "OUTPUT1", "data_type": "TYPE_INT32", "dims": [16]},
        ],
        "instance_group": [{"name": "simple_0", "kind": "KIND_CPU", "count": 2}],
        "dynamic_batching": {"max_queue_delay_microseconds": 0},
    }
    # Without batching, max_batch_size is 0 and the dimensions are the whole shape.
    unbatched = client.get_model_config("simple_string", model_version="1")
    assert unbatched["max_batch_size"] == 0
    assert "dynamic_batching" not in unbatched
    assert unbatched["input"][0] == {"name": "INPUT0", "data_type": "TYPE_STRING", "dims": [-1, 16]}


def test_a_load_configuration_may_not_change_the_model(server: ThreadedServer) -> None:
    load = f"{server.url}/v2/repository/models/simple_copy_1/load"
    for config, field in (
        ({"platform": "onnxruntime_onnx"}, "platform"),
        ({"input": []}, "input"),
        (
            {"dynamic_batching": {"preferred_batch_size": [4]}},
            "dynamic_batching.preferred_batch_size",
        ),
        ({"max_batch_size": -1}, "max_batch_size"),
    ):
        answer = httpx.post(load, json={"parameters": {"config": json.dumps(config)}})
        assert answer.status_code == 400, answer.text
        message = answer.json()["error"]
        assert message.startswith("failed to load 'simple_copy_1'")
        assert field in message
    # What it says already is accepted: it changes nothing.
    same = {"name": "simple_copy_1", "platform": "python", "max_batch_size": 0}
    answer = httpx.post(load, json={"parameters": {"config": json.dumps(same)}})
    assert answer.status_code == 200, answer.text
    refused = httpx.post(load, json={"parameters": {"file:1/model.onnx": "AAAA"}})
    assert "file:1/model.onnx" in refused.json()["error"]
    # Nested past the parser's depth: a RecursionError, answered 500.
    deep = httpx.post(load, json={"parameters": {"config": "[" * 5000 + "]" * 5000}})
    assert deep.status_code == 400, deep.text
    assert "nests too deeply" in deep.json()["error"]


# --- the statistics' values --------------------------------------------------------------------


def _halve(batch: list[Any]) -> list[Any]:
    if any(np.any(np.asarray(x) < 0) for x in batch):
        raise ValueError("negative")
    return [np.asarray(x) / 2 for x in batch]


def _stats(http: httpx.Client, path: str = "/v2/models/halve/stats") -> dict[str, Any]:
    answer = http.get(path)
    assert answer.status_code == 200, answer.text
    [model] = answer.json()["model_stats"]
    stats: dict[str, Any] = model
    return stats


def test_statistics_count_every_request_and_time_it(tmp_path: Path) -> None:
    specs = [
        loadonce.ModelSpec(name="halve", loader=lambda: _halve, warmup=[[1.0, 2.0]]),
        loadonce.ModelSpec(name="other", loader=lambda: _halve),
    ]
    body = {"inputs": [{"name": "x", "shape": [3, 2], "datatype": "FP64", "data": [1] * 6}]}
    negative = {"inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP64", "data": [-1, 1]}]}
    with (
        ThreadedServer(loadonce.create_app(specs)) as running,
        httpx.Client(base_url=running.url) as http,
    ):
        before = _stats(http)
        assert before["name"] == "halve"
        assert before["execution_count"] == before["inference_stats"]["success"]["count"] == 0
        for _ in range(4):
            assert http.post("/v2/models/halve/infer", json=body).status_code == 200
        assert http.post("/v2/models/halve/infer", json=negative).status_code == 500
        # The JSON route's requests reach the same model, and count too.
        assert http.post("/models/halve/predict", json={"inputs": [[2, 4]]}).status_code == 200
        after = _stats(http, "/v2/models/halve/versions/1/stats")
        inference = after["inference_stats"]
        assert inference["success"]["count"] == 5
        assert inference["fail"]["count"] == 1
        assert inference["queue"]["count"] == 5  # the successful requests', as Triton
        for name in ("success", "fail", "queue", "compute_input", "compute_infer"):
            assert inference[name]["ns"] > 0, name
        assert inference["compute_infer"]["count"] == 5
        # Only what succeeded, as Triton: the call that raised is in fail alone.
        assert after["execution_count"] == 5
        assert after["inference_count"] == 4 * 3 + 1
        assert {b["batch_size"]: b["compute_infer"]["count"] for b in after["batch_stats"]} == {
            1: 1,
            3: 4,
        }
        assert after["last_inference"] > 0
        everything = http.get("/v2/models/stats").json()["model_stats"]
        assert [m["name"] for m in everything] == ["halve", "other"]
        assert everything[1]["inference_stats"]["success"]["count"] == 0
        assert "statistics" in http.get("/v2").json()["extensions"]
        assert "no version '2'" in http.get("/v2/models/halve/versions/2/stats").json()["error"]
        # The same measurements as /metrics.
        metrics = http.get("/metrics").text
        assert (
            'loadonce_model_request_duration_seconds_count{model="halve",outcome="fail"} 1.0'
            in metrics
        )
        assert 'loadonce_queue_duration_seconds_count{model="halve"} 6.0' in metrics


def test_without_metrics_there_are_no_statistics() -> None:
    spec = loadonce.ModelSpec(name="halve", loader=lambda: _halve)
    port = free_port()
    app = loadonce.create_app([spec], metrics=False, wrap=grpc_lifespan(port=port))
    with (
        ThreadedServer(app) as running,
        httpx.Client(base_url=running.url) as http,
        triton_grpc.InferenceServerClient(f"127.0.0.1:{port}") as rpc,
    ):
        assert "statistics" not in rpc.get_server_metadata().extensions
        with pytest.raises(InferenceServerException) as raised:
            rpc.get_inference_statistics("halve")
        assert raised.value.status() == "StatusCode.UNIMPLEMENTED"
        assert "the statistics extension is not offered" in raised.value.message()
        assert "statistics" not in http.get("/v2").json()["extensions"]
        # As every extension not offered: 501 (it was a 400, "invalid inputs: ...").
        for path in ("/v2/models/stats", "/v2/models/halve/stats"):
            answer = http.get(path)
            assert answer.status_code == 501
            message = answer.json()["error"]
            assert message.startswith("the statistics extension is not offered"), message
            assert "metrics" in message
