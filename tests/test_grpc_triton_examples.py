"""What Triton's example programs for tritonclient's gRPC API do, against a real loadonce
server (its gRPC port, from ``grpc_lifespan``) serving models under the names they use
(``tests/v2_models.py``): health, metadata and configuration; inference (sync, with a
callback, asyncio in parallel, compressed) with its statistics; BYTES tensors; model control
with a configuration.

The programs themselves (NVIDIA's BSD-3 ``src/python/examples`` of
triton-inference-server/client) are not copied into this repository (this project commits no
code fetched from other repositories): ``python -m tests.triton_examples DIRECTORY`` runs each
one as it is published against a fresh server, with its checks of Triton itself adapted.
"""

from __future__ import annotations

import asyncio
import queue
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as triton
import tritonclient.grpc.aio as triton_aio
from tritonclient.utils import InferenceServerException

import loadonce
from loadonce.protocols.grpc import grpc_lifespan
from tests.servers import ThreadedServer, free_port
from tests.v2_models import triton_example_specs

UNKNOWN = "Request for unknown model"
HEADERS = {"test": "1", "dummy": "2"}
INPUT0 = np.arange(16, dtype=np.int32).reshape(1, 16)
INPUT1 = np.ones((1, 16), dtype=np.int32)


def _serve(models: int = 7) -> tuple[ThreadedServer, str]:
    port = free_port()
    app = loadonce.create_app(triton_example_specs(models), wrap=grpc_lifespan(port=port))
    return ThreadedServer(app), f"127.0.0.1:{port}"


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    server, address = _serve()
    with server:
        yield address


@pytest.fixture
def client(url: str) -> Iterator[triton.InferenceServerClient]:
    connection = triton.InferenceServerClient(url)
    yield connection
    connection.close()


def _pair(module: Any = triton) -> list[Any]:
    inputs = []
    for name, array in (("INPUT0", INPUT0), ("INPUT1", INPUT1)):
        tensor = module.InferInput(name, [1, 16], "INT32")
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    return inputs


def _requested(module: Any = triton) -> list[Any]:
    return [module.InferRequestedOutput("OUTPUT0"), module.InferRequestedOutput("OUTPUT1")]


def _check_sum_and_difference(result: Any) -> None:
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), INPUT0 + INPUT1)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), INPUT0 - INPUT1)


def _refused(call: Any) -> InferenceServerException:
    with pytest.raises(InferenceServerException) as raised:
        call()
    return raised.value


def test_health_metadata_and_configuration(client: triton.InferenceServerClient) -> None:
    assert client.is_server_live(headers=HEADERS)
    assert client.is_server_ready()
    assert client.is_model_ready("simple")
    assert client.get_server_metadata().name == "loadonce"
    assert client.get_model_metadata("simple", headers=HEADERS).name == "simple"
    unknown = _refused(lambda: client.get_model_metadata("wrong_model_name"))
    assert UNKNOWN in unknown.message()
    assert client.get_model_config("simple").config.name == "simple"


@pytest.mark.parametrize("compression", [None, "gzip", "deflate"])
def test_infer_then_its_statistics(
    client: triton.InferenceServerClient, compression: str | None
) -> None:
    result = client.infer(
        model_name="simple",
        inputs=_pair(),
        outputs=_requested(),
        client_timeout=None,
        headers={"test": "1"},
        compression_algorithm=compression,
    )
    _check_sum_and_difference(result)
    statistics = client.get_inference_statistics(model_name="simple")
    assert len(statistics.model_stats) == 1
    _check_sum_and_difference(
        client.infer("simple", _pair(), outputs=None, compression_algorithm=compression)
    )


def test_async_infer_with_a_callback(client: triton.InferenceServerClient) -> None:
    answers: queue.Queue[Any] = queue.Queue()
    client.async_infer(
        model_name="simple",
        inputs=_pair(),
        callback=lambda result, error: answers.put(error or result),
        outputs=_requested(),
        client_timeout=None,
    )
    answer = answers.get(timeout=10)
    assert not isinstance(answer, InferenceServerException), answer
    _check_sum_and_difference(answer)


def test_asyncio_infer_in_parallel(url: str) -> None:
    async def run() -> None:
        client = triton_aio.InferenceServerClient(url)
        try:
            one = await client.infer(
                model_name="simple",
                inputs=_pair(triton_aio),
                outputs=_requested(triton_aio),
                headers={"test": "1"},
            )
            _check_sum_and_difference(one)
            statistics = await client.get_inference_statistics(model_name="simple")
            assert len(statistics.model_stats) == 1
            both = await asyncio.gather(
                client.infer("simple", _pair(triton_aio), outputs=None),
                client.infer("simple", _pair(triton_aio), outputs=None),
            )
            for result in both:
                _check_sum_and_difference(result)
        finally:
            await client.close()

    asyncio.run(run())


def test_bytes_tensors(client: triton.InferenceServerClient) -> None:
    inputs = []
    for name, numbers in (("INPUT0", INPUT0), ("INPUT1", INPUT1)):
        text = np.array([str(x).encode() for x in numbers.flat], dtype=np.object_)
        tensor = triton.InferInput(name, [1, 16], "BYTES")
        tensor.set_data_from_numpy(text.reshape(1, 16))
        inputs.append(tensor)
    result = client.infer("simple_string", inputs, outputs=_requested())
    assert [int(x) for x in result.as_numpy("OUTPUT0").flat] == list((INPUT0 + INPUT1).flat)
    assert [int(x) for x in result.as_numpy("OUTPUT1").flat] == list((INPUT0 - INPUT1).flat)
    # A NUL inside a string, as objects; 4-byte binary blobs, as numpy's fixed-width bytes.
    for array in (
        np.array([b"he\x00llo"] * 16, dtype=np.object_).reshape(1, 16),
        np.array([b"\x00\x01\x02\x03"] * 16, dtype=np.bytes_).reshape(1, 16),
    ):
        tensor = triton.InferInput("INPUT0", list(array.shape), "BYTES")
        tensor.set_data_from_numpy(array)
        outputs = [triton.InferRequestedOutput("OUTPUT0")]
        answer = client.infer("simple_identity", [tensor], outputs=outputs).as_numpy("OUTPUT0")
        if array.dtype == np.object_:
            np.testing.assert_array_equal(answer, array)
        else:
            np.testing.assert_array_equal(np.char.encode(answer.astype(str)), array)


def test_model_control_with_a_configuration() -> None:
    server, url = _serve(models=8)  # the gRPC program's repository holds eight
    with server, triton.InferenceServerClient(url) as client:
        assert len(client.get_model_repository_index().models) == 8
        client.load_model("simple")
        assert client.is_model_ready("simple")
        malformed = _refused(
            lambda: client.load_model(
                "simple", config='"parameters": {"config": {{"max_batch_size": "16"}}}'
            )
        )
        assert "failed to load" in malformed.message()
        assert client.get_model_config("simple").config.max_batch_size == 8
        client.load_model("simple", config='{"max_batch_size":"16"}')
        assert client.get_model_config("simple").config.max_batch_size == 16
        client.unload_model("simple")
        assert not client.is_model_ready("simple")
        # A file to load from: refused as the client's mistake, the server unharmed.
        files = _refused(
            lambda: client.load_model("simple", config="{}", files={"file:" + "A" * 256: b"a"})
        )
        assert files.status() == "StatusCode.INVALID_ARGUMENT"
        assert "failed to load" in files.message()
        assert client.is_server_live()
        unknown = _refused(lambda: client.load_model("wrong_model_name"))
        assert unknown.status() == "StatusCode.NOT_FOUND"
        assert "failed to load 'wrong_model_name'" in unknown.message()
