"""The Open Inference Protocol over gRPC, driven by its real client (``tritonclient.grpc``)
against a real server: loadonce's app under uvicorn in a thread, its gRPC server started by
the lifespan (``grpc_lifespan``); and one ``loadonce serve --grpc-port`` with two workers."""

from __future__ import annotations

import asyncio
import json
import logging
import queue
import re
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx2 as httpx
import ml_dtypes
import numpy as np
import pytest
import tritonclient.grpc as triton
import tritonclient.grpc.aio as triton_aio
from google.protobuf.descriptor import Descriptor, EnumDescriptor
from tritonclient.grpc import service_pb2
from tritonclient.utils import InferenceServerException

import loadonce
from loadonce.core.errors import LoadonceError
from loadonce.http.state import LoadonceState
from loadonce.protocols.grpc import grpc_lifespan
from loadonce.protocols.grpc.messages import HEALTH_SERVICE, SERVICE, message_class
from loadonce.protocols.grpc.service import InferenceService, grpc_code
from loadonce.protocols.grpc.stream import STREAM_WINDOW
from loadonce.runtimes import Predictor, TensorInfo
from tests.servers import ThreadedServer, cli_env, free_port, start_cli, stop, wait_until
from tests.triton_unsupported import UNSUPPORTED_CALLS, UnsupportedCall
from tests.v2_models import triton_example_specs

INPUT0 = np.arange(16, dtype=np.int32).reshape(1, 16)
INPUT1 = np.full((1, 16), -1, dtype=np.int32)
KEY = "k" * 24
ADMIN_KEY = "a" * 24


class Picky(Predictor):
    """FP32 [-1, 1]: negative values make it raise (with a path in the message), values over
    100 make it take a second."""

    inputs = (TensorInfo(name="INPUT0", dtype="float32", shape=(None, 1)),)
    outputs = (TensorInfo(name="OUTPUT0", dtype="float32", shape=(None, 1)),)

    def predict(self, batch: list[Any]) -> list[Any]:
        values = np.asarray(batch)
        if (values < 0).any():
            raise ValueError("/srv/secret/model.py: negative")
        if (values > 100).any():
            time.sleep(1)
        return list(values * 2)


class _Echo:
    """Declares nothing: answers each example as it came."""

    def predict(self, batch: list[Any]) -> list[Any]:
        return list(batch)


class _Complex:
    """Answers complex numbers, which no protocol's answer can carry."""

    def predict(self, batch: list[Any]) -> list[Any]:
        return [complex(1, 2) for _ in batch]


def _specs() -> list[loadonce.ModelSpec]:
    return [
        *triton_example_specs()[:3],
        loadonce.ModelSpec(name="picky", loader=Picky),
        loadonce.ModelSpec(name="echo", loader=_Echo),
        loadonce.ModelSpec(name="complex", loader=_Complex),
    ]


def _serve(port: int, **options: Any) -> ThreadedServer:
    app = loadonce.create_app(_specs(), wrap=grpc_lifespan(port=port), **options)
    return ThreadedServer(app)


@pytest.fixture(scope="module")
def grpc_url() -> Iterator[str]:
    port = free_port()
    with _serve(port):
        yield f"127.0.0.1:{port}"


@pytest.fixture
def client(grpc_url: str) -> Iterator[triton.InferenceServerClient]:
    connection = triton.InferenceServerClient(grpc_url)
    yield connection
    connection.close()


def _pair(raw: bool = True) -> list[Any]:
    inputs = []
    for name, array in (("INPUT0", INPUT0), ("INPUT1", INPUT1)):
        tensor = triton.InferInput(name, [1, 16], "INT32")
        if raw:
            tensor.set_data_from_numpy(array)  # raw_input_contents
        else:
            tensor._get_tensor().contents.int_contents.extend(array.reshape(-1).tolist())
        inputs.append(tensor)
    return inputs


def _code(call: Any) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(InferenceServerException) as raised:
        call()
    status = raised.value.status()
    code = getattr(grpc.StatusCode, status.removeprefix("StatusCode."))
    return code, raised.value.message()


def test_health_and_metadata(client: triton.InferenceServerClient) -> None:
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready("simple")
    server = client.get_server_metadata(as_json=True)
    assert server["name"] == "loadonce"
    assert "model_repository" in server["extensions"]
    model = client.get_model_metadata("simple", as_json=True)
    assert [(t["name"], t["datatype"], t["shape"]) for t in model["inputs"]] == [
        ("INPUT0", "INT32", ["-1", "16"]),
        ("INPUT1", "INT32", ["-1", "16"]),
    ]
    assert [t["name"] for t in model["outputs"]] == ["OUTPUT0", "OUTPUT1"]
    index = client.get_model_repository_index(as_json=True)
    assert {m["name"]: m["state"] for m in index["models"]}["simple"] == "READY"


def test_a_model_or_version_not_served_is_not_ready(
    client: triton.InferenceServerClient,
) -> None:
    # As Triton answers: OK, ready false. NOT_FOUND made is_model_ready() raise.
    assert client.is_model_ready("no-such-model") is False
    assert client.is_model_ready("simple", "2") is False
    assert client.is_model_ready("simple", "1") is True


def test_infer_raw_answers_raw(client: triton.InferenceServerClient) -> None:
    result = client.infer("simple", _pair(raw=True), request_id="r1")
    response = result.get_response()
    assert response.raw_output_contents
    assert response.id == "r1"
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), INPUT0 + INPUT1)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), INPUT0 - INPUT1)


def test_infer_typed_answers_typed(client: triton.InferenceServerClient) -> None:
    outputs = [triton.InferRequestedOutput("OUTPUT1")]
    result = client.infer("simple", _pair(raw=False), outputs=outputs)
    response = result.get_response()
    assert not response.raw_output_contents
    assert [o.name for o in response.outputs] == ["OUTPUT1"]
    # (tritonclient's as_numpy reads raw outputs only; KServe's client reads typed ones.)
    assert list(response.outputs[0].contents.int_contents) == (INPUT0 - INPUT1).ravel().tolist()


def test_bytes_raw_and_typed(client: triton.InferenceServerClient) -> None:
    text = np.array([[str(i).encode() for i in range(16)]], dtype=object)
    ones = np.array([[b"1"] * 16], dtype=object)
    inputs = [
        triton.InferInput("INPUT0", [1, 16], "BYTES"),
        triton.InferInput("INPUT1", [1, 16], "BYTES"),
    ]
    inputs[0].set_data_from_numpy(text)
    inputs[1].set_data_from_numpy(ones)
    result = client.infer("simple_string", inputs)
    assert result.as_numpy("OUTPUT0").ravel().tolist() == [str(i + 1).encode() for i in range(16)]
    typed = triton.InferInput("INPUT0", [1, 2], "BYTES")
    typed._get_tensor().contents.bytes_contents.extend([b"a\x00b", b""])
    answer = client.infer("simple_identity", [typed]).get_response()
    assert list(answer.outputs[0].contents.bytes_contents) == [b"a\x00b", b""]


def test_async_infer(client: triton.InferenceServerClient) -> None:
    done: queue.Queue[Any] = queue.Queue()
    client.async_infer("simple", _pair(), lambda result, error: done.put((result, error)))
    result, error = done.get(timeout=10)
    assert error is None
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), INPUT0 + INPUT1)


def test_aio_client(grpc_url: str) -> None:
    async def run() -> Any:
        async with triton_aio.InferenceServerClient(grpc_url) as aio:
            return await aio.infer("simple", _pair())

    result = asyncio.run(run())
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), INPUT0 + INPUT1)


def _picky(value: float) -> list[Any]:
    tensor = triton.InferInput("INPUT0", [1, 1], "FP32")
    tensor.set_data_from_numpy(np.array([[value]], dtype=np.float32))
    return [tensor]


def test_error_codes(client: triton.InferenceServerClient) -> None:
    code, message = _code(lambda: client.infer("nope", _pair()))
    assert code is grpc.StatusCode.NOT_FOUND
    assert message.startswith("Request for unknown model")
    code, message = _code(lambda: client.infer("simple", _pair()[:1]))
    assert code is grpc.StatusCode.INVALID_ARGUMENT
    assert "missing input 'INPUT1'" in message
    wrong = triton.InferInput("INPUT0", [1, 16], "INT32")
    wrong._get_tensor().contents.int_contents.extend([1, 2])
    code, message = _code(lambda: client.infer("simple", [wrong, _pair(raw=False)[1]]))
    assert code is grpc.StatusCode.INVALID_ARGUMENT
    assert "holds 16 elements" in message
    code, message = _code(lambda: client.infer("picky", _picky(-1)))
    assert code is grpc.StatusCode.INTERNAL
    assert "the model raised ValueError" in message
    assert "/srv/secret" not in message
    assert "Traceback" not in message
    code, _ = _code(lambda: client.infer("picky", _picky(500), client_timeout=0.2))
    assert code is grpc.StatusCode.DEADLINE_EXCEEDED
    code, _ = _code(lambda: client.get_model_metadata("nope"))
    assert code is grpc.StatusCode.NOT_FOUND


def test_raw_and_typed_mismatches(grpc_url: str) -> None:
    request_class = message_class("inference.ModelInferRequest")
    response_class = message_class("inference.ModelInferResponse")
    with grpc.insecure_channel(grpc_url) as channel:
        infer = channel.unary_unary(
            "/inference.GRPCInferenceService/ModelInfer",
            request_serializer=request_class.SerializeToString,
            response_deserializer=response_class.FromString,
        )
        request = request_class(model_name="picky")
        request.inputs.add(name="INPUT0", datatype="FP32", shape=[1, 1])
        request.raw_input_contents.append(b"\x00\x00")  # 2 bytes, not 4
        with pytest.raises(grpc.RpcError) as raised:
            infer(request)
        assert raised.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        # Named as gRPC's field (it was REST's binary_data_size).
        assert "its raw_input_contents is 2 bytes" in raised.value.details()
        assert "takes 4" in raised.value.details()
        request.inputs[0].shape[:] = [-1, 1]
        with pytest.raises(grpc.RpcError) as raised:
            infer(request, metadata=[("x-request-id", "mine-1")])
        assert raised.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert ("x-request-id", "mine-1") in raised.value.trailing_metadata()
        answer, call = infer.with_call(
            request_class(
                model_name="picky",
                inputs=[{"name": "INPUT0", "datatype": "FP32", "shape": [1, 1]}],
                raw_input_contents=[np.float32(2).tobytes()],
            ),
            metadata=[("x-request-id", "mine-2")],
        )
        assert np.frombuffer(answer.raw_output_contents[0], "<f4").tolist() == [4.0]
        assert ("x-request-id", "mine-2") in call.trailing_metadata()


def _with_an_empty_parameter(place: str) -> Any:
    request = message_class("inference.ModelInferRequest")(model_name="echo")
    tensor = request.inputs.add(name="x", datatype="FP32", shape=[1])
    tensor.contents.fp32_contents.append(1.0)
    if place == "request":
        request.parameters["x"].SetInParent()
    elif place == "input":
        tensor.parameters["x"].SetInParent()
    else:
        request.outputs.add(name="output").parameters["x"].SetInParent()
    return request


@pytest.mark.parametrize(
    ("place", "field"),
    [
        ("request", "parameters['x']"),
        ("input", "inputs['x'].parameters['x']"),
        ("output", "outputs['output'].parameters['x']"),
    ],
)
def test_a_parameter_with_no_value_is_refused(grpc_url: str, place: str, field: str) -> None:
    """An InferParameter none of whose oneof is set (REST's null, refused there) was dropped
    unsaid: a client's flag or timeout silently did nothing."""
    with pytest.raises(grpc.RpcError) as raised:
        _model_infer(grpc_url, _with_an_empty_parameter(place))
    assert raised.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    details = raised.value.details()
    assert f"{field}: holds no value: set one of bool_param, int64_param" in details


def test_a_repository_parameter_with_no_value_is_refused(grpc_url: str) -> None:
    """(A load, not an unload: were it taken, the model would only load again.)"""
    request_class = message_class("inference.RepositoryModelLoadRequest")
    response_class = message_class("inference.RepositoryModelLoadResponse")
    request = request_class(model_name="echo")
    request.parameters["config"].SetInParent()
    with grpc.insecure_channel(grpc_url) as channel:
        load = channel.unary_unary(
            "/inference.GRPCInferenceService/RepositoryModelLoad",
            request_serializer=request_class.SerializeToString,
            response_deserializer=response_class.FromString,
        )
        with pytest.raises(grpc.RpcError) as raised:
            load(request)
    assert raised.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "parameters['config']: holds no value: set one of" in raised.value.details()


# Each typed field with the extremes of its datatype, and values of several magnitudes
# together (NumPy read a uint64 field holding 1 and 2**64 - 1 as floats: 2**64 - 1 came back 0).
_EXTREMES = [
    ("UINT64", "uint64_contents", [1, 2**63 + 5, 2**64 - 1, 0]),
    ("INT64", "int64_contents", [-(2**63), 2**63 - 1, -1, 2**53 + 1]),
    ("UINT32", "uint_contents", [0, 2**32 - 1, 7]),
    ("UINT16", "uint_contents", [0, 2**16 - 1]),
    ("UINT8", "uint_contents", [0, 255]),
    ("INT32", "int_contents", [-(2**31), 2**31 - 1, 0]),
    ("INT16", "int_contents", [-(2**15), 2**15 - 1]),
    ("INT8", "int_contents", [-128, 127]),
    ("FP64", "fp64_contents", [1e308, -5e-324, 0.1]),
    ("FP32", "fp32_contents", [3.4028234663852886e38, 1.401298464324817e-45]),
    ("BOOL", "bool_contents", [True, False]),
]


def _model_infer(grpc_url: str, request: Any) -> Any:
    """One ModelInfer call with the raw stub: what tritonclient would not send."""
    response_class = message_class("inference.ModelInferResponse")
    with grpc.insecure_channel(grpc_url) as channel:
        infer = channel.unary_unary(
            "/inference.GRPCInferenceService/ModelInfer",
            request_serializer=type(request).SerializeToString,
            response_deserializer=response_class.FromString,
        )
        return infer(request)


def _typed(grpc_url: str, datatype: str, field: str, values: list[Any]) -> Any:
    request = message_class("inference.ModelInferRequest")(model_name="echo")
    tensor = request.inputs.add(name="x", datatype=datatype, shape=[len(values)])
    getattr(tensor.contents, field).extend(values)
    return _model_infer(grpc_url, request)


@pytest.mark.parametrize(("datatype", "field", "values"), _EXTREMES)
def test_typed_contents_keep_every_value(
    grpc_url: str, datatype: str, field: str, values: list[Any]
) -> None:
    [output] = _typed(grpc_url, datatype, field, values).outputs
    assert (output.datatype, list(output.shape)) == (datatype, [len(values)])
    assert list(getattr(output.contents, field)) == values


@pytest.mark.parametrize(
    ("datatype", "field", "values", "bounds"),
    [
        ("INT8", "int_contents", [1, 128], "-128 to 127"),
        ("INT16", "int_contents", [-(2**15) - 1], "-32768 to 32767"),
        ("UINT8", "uint_contents", [256, 0], "0 to 255"),
        ("UINT16", "uint_contents", [2**32 - 1], "0 to 65535"),
    ],
)
def test_typed_contents_outside_their_datatype_are_refused(
    grpc_url: str, datatype: str, field: str, values: list[Any], bounds: str
) -> None:
    with pytest.raises(grpc.RpcError) as raised:
        _typed(grpc_url, datatype, field, values)
    assert raised.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert f"outside the range of {datatype} ({bounds})" in raised.value.details()


def test_a_call_without_inputs_is_the_callers_mistake(grpc_url: str) -> None:
    """A model that declares no inputs takes any: a call with none is still refused."""
    with pytest.raises(grpc.RpcError) as raised:
        _model_infer(grpc_url, message_class("inference.ModelInferRequest")(model_name="echo"))
    assert raised.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "no inputs" in raised.value.details()


class _ExpiredContext:
    """A call whose client's deadline ran out before its handler ran."""

    def time_remaining(self) -> float:
        return 0.0


def test_a_deadline_already_past_is_deadline_exceeded() -> None:
    """Not INVALID_ARGUMENT (a zero timeout), which tells a client never to retry."""
    app = loadonce.create_app(_specs())

    async def run() -> None:
        async with app.router.lifespan_context(app):
            state = LoadonceState.on(app)
            assert state is not None
            request = message_class("inference.ModelInferRequest")(model_name="picky")
            request.inputs.add(name="INPUT0", datatype="FP32", shape=[1, 1])
            request.raw_input_contents.append(np.float32(1).tobytes())
            with pytest.raises(LoadonceError) as raised:
                await InferenceService(state).model_infer(request, _ExpiredContext())
            assert grpc_code(raised.value.status) is grpc.StatusCode.DEADLINE_EXCEEDED

    asyncio.run(run())


def test_model_config(client: triton.InferenceServerClient) -> None:
    config = client.get_model_config("simple", as_json=True)["config"]
    # The REST answer's members, as protobuf's JSON writes them (64-bit integers as strings,
    # a zero left out).
    assert config == {
        "name": "simple",
        "platform": "python",
        "backend": "python",
        "max_batch_size": 8,
        "input": [
            {"name": "INPUT0", "data_type": "TYPE_INT32", "dims": ["16"]},
            {"name": "INPUT1", "data_type": "TYPE_INT32", "dims": ["16"]},
        ],
        "output": [
            {"name": "OUTPUT0", "data_type": "TYPE_INT32", "dims": ["16"]},
            {"name": "OUTPUT1", "data_type": "TYPE_INT32", "dims": ["16"]},
        ],
        "instance_group": [{"name": "simple_0", "kind": "KIND_CPU", "count": 2}],
        "dynamic_batching": {},
    }
    unbatched = client.get_model_config("simple_string", model_version="1").config
    assert unbatched.max_batch_size == 0
    assert not unbatched.HasField("dynamic_batching")
    assert list(unbatched.input[0].dims) == [-1, 16]
    code, message = _code(lambda: client.get_model_config("nope"))
    assert code is grpc.StatusCode.NOT_FOUND
    assert message.startswith("Request for unknown model")


def test_an_answer_that_cannot_be_encoded_counts_as_a_failure(
    client: triton.InferenceServerClient,
) -> None:
    """The model answered, but its outputs cannot be written (complex numbers): the client
    gets INTERNAL, and the statistics count a failure, not a success (they counted what the
    model returned, before its answer was built)."""
    before = client.get_inference_statistics("complex").model_stats[0].inference_stats
    tensor = triton.InferInput("x", [1], "INT64")
    tensor.set_data_from_numpy(np.array([1], dtype=np.int64))
    code, message = _code(lambda: client.infer("complex", [tensor]))
    assert code is grpc.StatusCode.INTERNAL
    assert message.startswith("the model raised TypeError")
    after = client.get_inference_statistics("complex").model_stats[0].inference_stats
    assert after.fail.count == before.fail.count + 1
    assert after.success.count == before.success.count


def test_bf16_travels_as_tritonclient_sends_it(client: triton.InferenceServerClient) -> None:
    """BF16 is one of the protocol's datatypes (in raw contents, as the proto says): it was
    refused as an unknown datatype, even by a model that takes any input."""
    values = np.array([[1.0, 2.5, -3.0, np.inf]], dtype=ml_dtypes.bfloat16)
    tensor = triton.InferInput("x", list(values.shape), "BF16")
    tensor.set_data_from_numpy(values)
    result = client.infer("echo", [tensor])
    assert result.get_output("output").datatype == "BF16"
    assert result.as_numpy("output").tobytes() == values.tobytes()


def test_model_statistics(client: triton.InferenceServerClient) -> None:
    before = client.get_inference_statistics("simple_identity").model_stats[0]
    text = triton.InferInput("INPUT0", [2, 1], "BYTES")
    text.set_data_from_numpy(np.array([[b"a"], [b"b"]], dtype=object))
    client.infer("simple_identity", [text])
    [after] = client.get_inference_statistics("simple_identity", "1").model_stats
    assert (after.name, after.version) == ("simple_identity", "1")
    assert after.inference_stats.success.count == before.inference_stats.success.count + 1
    assert after.inference_stats.success.ns > before.inference_stats.success.ns
    assert after.inference_count == before.inference_count + 2
    assert after.last_inference > 0
    assert 2 in {batch.batch_size for batch in after.batch_stats}
    everything = client.get_inference_statistics().model_stats
    assert [m.name for m in everything][:3] == ["simple", "simple_string", "simple_identity"]
    code, message = _code(lambda: client.get_inference_statistics("simple", "2"))
    assert code is grpc.StatusCode.NOT_FOUND
    assert "no version '2'" in message


def test_messages_match_the_published_protocol() -> None:
    """Every message, field and enum value of loadonce's .proto files is Triton's (tritonclient
    ships the published descriptors): same number, type and label, so the wire agrees."""
    ours = message_class("inference.ModelInferRequest").DESCRIPTOR.file.pool
    theirs = service_pb2.DESCRIPTOR.pool
    service = ours.FindServiceByName(SERVICE)
    published = theirs.FindServiceByName(SERVICE)
    checked: set[str] = set()
    for method in service.methods:
        twin = published.methods_by_name[method.name]
        assert method.input_type.full_name == twin.input_type.full_name
        assert method.output_type.full_name == twin.output_type.full_name
        for message in (method.input_type, method.output_type):
            _same_message(message, theirs.FindMessageTypeByName(message.full_name), checked)
    assert "inference.ModelConfig" in checked
    assert "inference.InferStatistics" in checked


def _same_message(ours: Descriptor, theirs: Descriptor, checked: set[str]) -> None:
    if ours.full_name in checked:
        return
    checked.add(ours.full_name)
    for field in ours.fields:
        twin = theirs.fields_by_name[field.name]
        where = f"{ours.full_name}.{field.name}"
        assert (field.number, field.type) == (twin.number, twin.type), where
        assert field.is_repeated == twin.is_repeated, where
        if field.message_type is not None:
            assert field.message_type.full_name == twin.message_type.full_name, where
            _same_message(field.message_type, twin.message_type, checked)
        if field.enum_type is not None:
            _same_enum(field.enum_type, twin.enum_type)
    for oneof in ours.oneofs:
        assert [f.name for f in oneof.fields] == [
            f.name for f in theirs.oneofs_by_name[oneof.name].fields
        ]


def _same_enum(ours: EnumDescriptor, theirs: EnumDescriptor) -> None:
    assert ours.full_name == theirs.full_name
    for value in ours.values:
        assert theirs.values_by_name[value.name].number == value.number, value.name


def _health(url: str, service: str = "") -> int:
    request_class = message_class("grpc.health.v1.HealthCheckRequest")
    response_class = message_class("grpc.health.v1.HealthCheckResponse")
    with grpc.insecure_channel(url) as channel:
        check = channel.unary_unary(
            f"/{HEALTH_SERVICE}/Check",
            request_serializer=request_class.SerializeToString,
            response_deserializer=response_class.FromString,
        )
        status: int = check(request_class(service=service), timeout=5).status
        return status


def test_health_service(grpc_url: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="loadonce.access")
    assert _health(grpc_url) == 1  # SERVING
    # Logged as every other call is (and as the HTTP probes are): it wrote no line.
    wait_until(
        lambda: any("/grpc.health.v1.Health/Check 200" in r.getMessage() for r in caplog.records),
        5,
        "the check's access line",
    )
    assert _health(grpc_url, "inference.GRPCInferenceService") == 1
    # gRPC's health protocol: NOT_FOUND for a service it does not know (it answered OK with
    # SERVICE_UNKNOWN, which is Watch's answer only).
    with pytest.raises(grpc.RpcError) as unknown:
        _health(grpc_url, "something.Else")
    assert unknown.value.code() is grpc.StatusCode.NOT_FOUND
    # Its own answer, logged as such (the line follows the answer: waited for), not a
    # failure of the server's (with tracebacks).
    wait_until(
        lambda: any("/grpc.health.v1.Health/Check 404" in r.getMessage() for r in caplog.records),
        5,
        "the unknown service's access line",
    )
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text


def _watch(channel: grpc.Channel, service: str) -> Any:
    """A health Watch of ``service``: an iterator of its statuses."""
    request_class = message_class("grpc.health.v1.HealthCheckRequest")
    response_class = message_class("grpc.health.v1.HealthCheckResponse")
    watch = channel.unary_stream(
        f"/{HEALTH_SERVICE}/Watch",
        request_serializer=request_class.SerializeToString,
        response_deserializer=response_class.FromString,
    )
    return watch(request_class(service=service), timeout=60)


def _next_status(stream: Any) -> int:
    """The next status a Watch sends, within 10 s."""
    answers: queue.Queue[Any] = queue.Queue()

    def read() -> None:
        try:
            answers.put(next(stream, None))
        except grpc.RpcError as error:  # the stream's end, not OK
            answers.put(error)

    threading.Thread(target=read, daemon=True).start()
    answer = answers.get(timeout=10)
    if isinstance(answer, grpc.RpcError):
        raise answer
    return -1 if answer is None else int(answer.status)


@pytest.mark.parametrize(
    ("service", "first"),
    [("", 1), (SERVICE, 1), ("something.Else", 3), ("x\nforged", 3)],  # SERVING, SERVICE_UNKNOWN
)
def test_health_watch_follows_the_server_and_ends_with_it(service: str, first: int) -> None:
    # Watch (what gRPC clients' own health checking calls) was UNIMPLEMENTED: a client that
    # asked for it treated the server as healthy whatever its state.
    port = free_port()
    server = _serve(port)
    server.start()
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stream = _watch(channel, service)
        assert _next_status(stream) == first
        # The stop ends every stream at once (NOT_SERVING last for a known service), not
        # after the stop's 30 s of grace; an unknown service's stayed open until then.
        stopped = time.monotonic()
        server.stop()
        assert time.monotonic() - stopped < 10
        rest = []
        while (status := _next_status(stream)) != -1:
            rest.append(status)
        assert stream.code() is grpc.StatusCode.OK
    assert rest == ([2] if first == 1 else [])


class _SlowToLoad(_Echo):
    """Takes a second to load."""

    def __init__(self) -> None:
        time.sleep(1)


def test_health_watch_sends_each_change() -> None:
    # A model unloaded, then loaded again: NOT_SERVING while it loads, then SERVING, as
    # Check answers (an unload on request alone leaves the server serving, as Triton's).
    port = free_port()
    spec = loadonce.ModelSpec(name="slow", loader=_SlowToLoad)
    app = loadonce.create_app([spec], wrap=grpc_lifespan(port=port))
    with ThreadedServer(app), grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stream = _watch(channel, "")
        assert _next_status(stream) == 1
        client = triton.InferenceServerClient(f"127.0.0.1:{port}")
        client.unload_model("slow")
        loading = threading.Thread(target=lambda: client.load_model("slow"), daemon=True)
        loading.start()
        assert _next_status(stream) == 2
        assert _next_status(stream) == 1
        stream.cancel()
        # The load's answer may reach the client after the status changed: closed before it
        # arrives, the client's thread fails with CANCELLED.
        loading.join(timeout=30)
        client.close()


def test_health_watch_streams_at_once_are_bounded_and_check_still_answers() -> None:
    # A Watch needs no key and lasts as long as its client likes; each holds one of the
    # server's max_concurrent_rpcs, which unbounded Watches could all take from inference.
    port = free_port()
    spec = loadonce.ModelSpec(name="simple", loader="tests.v2_models:Simple")
    lifespan = grpc_lifespan(port=port, max_concurrent_rpcs=16)  # an eighth: 2 Watches
    with ThreadedServer(loadonce.create_app([spec], wrap=lifespan)):
        channels = [grpc.insecure_channel(f"127.0.0.1:{port}") for _ in range(4)]
        try:
            first, second = (_watch(channel, "") for channel in channels[:2])
            assert _next_status(first) == _next_status(second) == 1
            with pytest.raises(grpc.RpcError) as refused:
                _next_status(_watch(channels[2], ""))
            assert refused.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "at most 2 health Watch streams" in (refused.value.details() or "")
            with triton.InferenceServerClient(f"127.0.0.1:{port}") as client:
                assert client.is_server_ready()
            first.cancel()  # a Watch that ends gives its place back

            def watched_again() -> bool:
                try:
                    return _next_status(_watch(channels[3], "")) == 1
                except grpc.RpcError:
                    return False

            wait_until(watched_again, timeout=10, what="a Watch's place given back")
            second.cancel()
        finally:
            for channel in channels:
                channel.close()


def _raw_call(url: str, method: str, payload: bytes) -> grpc.RpcError:
    """The error a call of ``method`` with ``payload`` as its request's bytes gets."""
    with grpc.insecure_channel(url) as channel:
        call = channel.unary_unary(method, request_serializer=None, response_deserializer=None)
        with pytest.raises(grpc.RpcError) as raised:
            call(payload, timeout=10)
    return raised.value


@pytest.mark.parametrize(
    "payload",
    [
        b"\x0a\x04dou\xffble",  # a string field that is not UTF-8
        b"\x0a\x10ab",  # a field longer than the message
    ],
)
@pytest.mark.parametrize(
    "method",
    [
        "/inference.GRPCInferenceService/ModelReady",
        "/inference.GRPCInferenceService/ModelInfer",
        f"/{HEALTH_SERVICE}/Check",
    ],
)
def test_a_message_that_is_not_one_is_invalid_argument(
    grpc_url: str, method: str, payload: bytes
) -> None:
    # It was UNKNOWN, "Unexpected <class 'google.protobuf.message.DecodeError'>".
    error = _raw_call(grpc_url, method, payload)
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "not a valid" in (error.details() or "")
    assert "class" not in (error.details() or "")


def test_tensors_in_shared_memory_are_refused_by_name(
    client: triton.InferenceServerClient,
) -> None:
    # An input's region was refused as "has no data"; an output's was ignored, the data in
    # the answer and the client's region never written.
    tensor = triton.InferInput("INPUT0", [1, 1], "FP32")
    tensor.set_shared_memory("input_region", 4)
    code, message = _code(lambda: client.infer("picky", [tensor]))
    assert code is grpc.StatusCode.INVALID_ARGUMENT
    assert "input 'INPUT0' has parameters.shared_memory_region" in message
    assert "shared memory is not supported by this server" in message
    output = triton.InferRequestedOutput("OUTPUT0")
    output.set_shared_memory("output_region", 4)
    code, message = _code(lambda: client.infer("picky", _picky(1), outputs=[output]))
    assert code is grpc.StatusCode.INVALID_ARGUMENT
    assert "output 'OUTPUT0' has parameters.shared_memory_region" in message


@pytest.mark.parametrize(
    ("call", "refusal"),
    [pytest.param(call, refusal, id=name) for name, call, refusal in UNSUPPORTED_CALLS],
)
def test_an_extension_not_offered_is_refused_as_triton_refuses_one(
    client: triton.InferenceServerClient, call: UnsupportedCall, refusal: str
) -> None:
    """UNIMPLEMENTED, Triton's code for a feature it does not support, saying what is not
    offered: it was grpcio's "Method not found!", which named nothing."""
    code, message = _code(lambda: call(client, "simple"))
    assert code is grpc.StatusCode.UNIMPLEMENTED
    assert message.startswith(refusal)


# A request sent in a stream between two good ones: (its arguments to async_stream_infer, the
# start of its error, or None for an answer).
_STREAMED: list[tuple[str, dict[str, Any], str | None]] = [
    ("answered", {"model_name": "simple", "inputs": _pair()}, None),
    ("missing_input", {"model_name": "simple", "inputs": _pair()[:1]}, "invalid inputs: missing"),
    ("unknown_model", {"model_name": "nope", "inputs": _pair()}, "Request for unknown model"),
    (
        "other_version",
        {"model_name": "simple", "inputs": _pair(), "model_version": "2"},
        "model 'simple' has no version '2'",
    ),
    (
        "sequence",
        {"model_name": "simple", "inputs": _pair(), "sequence_id": 7},
        "sequence batching",
    ),
    (
        "deadline",
        {"model_name": "picky", "inputs": _picky(200), "timeout": 50_000},
        # Either its deadline passes, or, the model still busy with an earlier test's slow
        # call, it is refused at once: it would be answered past its deadline.
        "model 'picky'",
    ),
    ("model_raises", {"model_name": "picky", "inputs": _picky(-1)}, "the model raised"),
]


@pytest.mark.parametrize("empty_final", [False, True])
@pytest.mark.parametrize(
    ("arguments", "error"), [pytest.param(a, e, id=name) for name, a, e in _STREAMED]
)
def test_a_stream_answers_each_request_in_order_its_errors_included(
    client: triton.InferenceServerClient,
    arguments: dict[str, Any],
    error: str | None,
    empty_final: bool,
) -> None:
    """start_stream / async_stream_infer / stop_stream: each request answered as ModelInfer
    answers it, a failed one by its error in the stream, which goes on (as Triton's). It was
    "Method not found!", and the stream unusable."""
    done: queue.Queue[Any] = queue.Queue()
    client.start_stream(lambda result, error: done.put((result, error)))
    for request_id, sent in (
        ("before", _STREAMED[0][1]),
        ("it", arguments),
        ("after", _STREAMED[0][1]),
    ):
        client.async_stream_infer(
            **sent, request_id=request_id, enable_empty_final_response=empty_final
        )
    answers = [done.get(timeout=10) for _ in range(3)]
    client.stop_stream()
    for index, (result, failure) in enumerate(answers):
        if index == 1 and error is not None:
            assert result is None
            assert failure.message().startswith(error), failure.message()
            assert "deadline" in failure.message() or "timeout" not in arguments
            continue
        assert failure is None, failure
        response = result.get_response()
        assert response.id == ("before", "it", "after")[index]
        np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), INPUT0 + INPUT1)
        # Every answer is its request's last (a non-decoupled model's, in Triton's terms).
        if empty_final:
            assert response.parameters["triton_final_response"].bool_param is True
        else:
            assert "triton_final_response" not in response.parameters


def test_a_stream_waiting_for_a_request_ends_when_the_server_stops() -> None:
    """An open stream is a call in flight: waiting for its next request, it held the server's
    stop for the whole grace period (30 s), the models' unload after it."""
    port = free_port()
    done: queue.Queue[Any] = queue.Queue()
    client = triton.InferenceServerClient(f"127.0.0.1:{port}")
    with _serve(port):
        client.start_stream(lambda result, error: done.put((result, error)))
        client.async_stream_infer("simple", _pair())
        _, error = done.get(timeout=10)
        assert error is None
        stopping = time.monotonic()
    assert time.monotonic() - stopping < 10
    client.stop_stream()
    client.close()


def test_an_aio_stream_answers_in_order(grpc_url: str) -> None:
    async def requests() -> Any:
        for index, model in enumerate(("simple", "nope", "simple")):
            yield {"model_name": model, "inputs": _pair(), "request_id": str(index)}

    async def run() -> list[Any]:
        async with triton_aio.InferenceServerClient(grpc_url) as aio:
            return [answer async for answer in aio.stream_infer(requests(), stream_timeout=10)]

    [(first, none), (no_result, refused), (last, _)] = asyncio.run(run())
    assert none is None
    assert no_result is None
    assert (first.get_response().id, last.get_response().id) == ("0", "2")
    np.testing.assert_array_equal(last.as_numpy("OUTPUT0"), INPUT0 + INPUT1)
    assert refused.message().startswith("Request for unknown model: 'nope'")


@pytest.mark.parametrize("raw", [True, False])
@pytest.mark.parametrize(
    ("count", "expected"),
    [
        (1, [b"14:15"]),
        (3, [b"14:15", b"13:14", b"12:13"]),
        (99, [f"{v}:{v + 1}".encode() for v in range(14, -2, -1)]),
    ],
)
def test_the_classification_extension(
    client: triton.InferenceServerClient, raw: bool, count: int, expected: list[bytes]
) -> None:
    """tritonclient's class_count: simple's OUTPUT0 (INPUT0 + INPUT1: -1 to 14) as its top
    classes, "<value>:<index>", in raw or typed contents as the request is; INVALID_ARGUMENT
    before."""
    assert "classification" in client.get_server_metadata(as_json=True)["extensions"]
    outputs = [triton.InferRequestedOutput("OUTPUT0", class_count=count)]
    response = client.infer("simple", _pair(raw=raw), outputs=outputs).get_response()
    [output] = response.outputs
    assert (output.datatype, list(output.shape)) == ("BYTES", [1, len(expected)])
    if raw:
        data = response.raw_output_contents[0]
        assert data == b"".join(len(c).to_bytes(4, "little") + c for c in expected)
    else:
        assert list(output.contents.bytes_contents) == expected


@pytest.mark.parametrize(
    ("model", "parameter", "words"),
    [
        ("simple_string", {"int64_param": 1}, "output 'OUTPUT0' is BYTES"),
        ("simple", {"double_param": 2.0}, "parameters.classification must be the number"),
        ("simple", {"int64_param": -2}, "parameters.classification must be the number"),
        ("simple", {"string_param": "2"}, "parameters.classification must be the number"),
    ],
)
def test_a_classification_the_output_cannot_give_is_invalid_argument(
    grpc_url: str, model: str, parameter: dict[str, Any], words: str
) -> None:
    request = message_class("inference.ModelInferRequest")(model_name=model)
    for name in ("INPUT0", "INPUT1"):
        if model == "simple_string":
            tensor = request.inputs.add(name=name, datatype="BYTES", shape=[1, 16])
            tensor.contents.bytes_contents.extend(str(n).encode() for n in range(16))
        else:
            tensor = request.inputs.add(name=name, datatype="INT32", shape=[1, 16])
            tensor.contents.int_contents.extend(range(16))
    request.outputs.add(name="OUTPUT0").parameters["classification"].MergeFrom(
        message_class("inference.InferParameter")(**parameter)
    )
    with pytest.raises(grpc.RpcError) as raised:
        _model_infer(grpc_url, request)
    assert raised.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert words in (raised.value.details() or "")


def test_unload_dependents_must_be_a_boolean(grpc_url: str) -> None:
    request_class = message_class("inference.RepositoryModelUnloadRequest")
    response_class = message_class("inference.RepositoryModelUnloadResponse")
    request = request_class(model_name="echo")
    request.parameters["unload_dependents"].string_param = "yes"
    with grpc.insecure_channel(grpc_url) as channel:
        unload = channel.unary_unary(
            "/inference.GRPCInferenceService/RepositoryModelUnload",
            request_serializer=request_class.SerializeToString,
            response_deserializer=response_class.FromString,
        )
        with pytest.raises(grpc.RpcError) as raised:
            unload(request)
    assert raised.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "parameters.unload_dependents: must be true or false" in (raised.value.details() or "")


def test_a_long_name_echoed_in_an_error_keeps_its_code(
    client: triton.InferenceServerClient,
) -> None:
    # The message quoting a 20,000-character name passed the client's trailer limit: the call
    # failed RESOURCE_EXHAUSTED instead of NOT_FOUND / INVALID_ARGUMENT.
    code, message = _code(lambda: client.get_model_metadata("m" * 20_000))
    assert code is grpc.StatusCode.NOT_FOUND
    assert len(message) <= 500
    long_input = triton.InferInput("I" * 20_000, [1, 16], "INT32")
    long_input.set_data_from_numpy(INPUT0)
    code, _ = _code(lambda: client.infer("simple", [long_input]))
    assert code is grpc.StatusCode.INVALID_ARGUMENT


# What a hostile client puts in a name: a line break and a forged line, a terminal's escape, a
# bidirectional override that shows the text reversed.
_FORGED = "x\nERROR forged line\x1b[31m\u202e"


def _infer_bytes(model: str = "picky", **tensor: str) -> bytes:
    request = message_class("inference.ModelInferRequest")(model_name=model)
    output = tensor.pop("output", None)
    fields = {"name": "INPUT0", "datatype": "FP32", **tensor}
    request.inputs.add(shape=[1, 1], **fields).contents.fp32_contents.append(1.0)
    if output is not None:
        request.outputs.add(name=output)
    return bytes(request.SerializeToString())


def _named(method: str, **fields: str) -> tuple[str, bytes]:
    request = _TYPES_OF[method](**fields)
    return f"/{SERVICE}/{method}", bytes(request.SerializeToString())


_TYPES_OF = {
    "ModelMetadata": message_class("inference.ModelMetadataRequest"),
    "ModelStatistics": message_class("inference.ModelStatisticsRequest"),
    "RepositoryModelLoad": message_class("inference.RepositoryModelLoadRequest"),
    "RepositoryModelUnload": message_class("inference.RepositoryModelUnloadRequest"),
}
_HEALTH_REQUEST = message_class("grpc.health.v1.HealthCheckRequest")


@pytest.mark.parametrize(
    ("call", "code"),
    [
        (lambda text: _named("ModelMetadata", name=text), grpc.StatusCode.NOT_FOUND),
        (
            lambda text: _named("ModelMetadata", name="echo", version=text),
            grpc.StatusCode.NOT_FOUND,
        ),
        (lambda text: _named("ModelStatistics", name=text), grpc.StatusCode.NOT_FOUND),
        (lambda text: _named("RepositoryModelLoad", model_name=text), grpc.StatusCode.NOT_FOUND),
        (lambda text: _named("RepositoryModelUnload", model_name=text), grpc.StatusCode.NOT_FOUND),
        (
            lambda text: (f"/{SERVICE}/ModelInfer", _infer_bytes(model=text)),
            grpc.StatusCode.NOT_FOUND,
        ),
        (
            lambda text: (
                f"/{HEALTH_SERVICE}/Check",
                _HEALTH_REQUEST(service=text).SerializeToString(),
            ),
            grpc.StatusCode.NOT_FOUND,
        ),
        (
            lambda text: (f"/{SERVICE}/ModelInfer", _infer_bytes(name=text)),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        (
            lambda text: (f"/{SERVICE}/ModelInfer", _infer_bytes(datatype=text)),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        (
            lambda text: (f"/{SERVICE}/ModelInfer", _infer_bytes(output=text)),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
    ],
    ids=[
        "model name",
        "model version",
        "statistics name",
        "load name",
        "unload name",
        "infer model name",
        "health service",
        "input name",
        "input datatype",
        "output name",
    ],
)
def test_client_text_in_an_error_is_escaped_and_cut(
    grpc_url: str, call: Any, code: grpc.StatusCode
) -> None:
    # A newline in a model's name reached the client raw in NOT_FOUND's message (as every
    # name the client sent, quoted in any error): a forged line in whatever logs it.
    method, payload = call(_FORGED)
    error = _raw_call(grpc_url, method, payload)
    assert error.code() is code
    details = error.details() or ""
    assert "\\x0aERROR forged line\\x1b[31m\\u202e" in details, details
    assert details.isprintable(), details
    # A long one is cut where it is quoted, the rest of the message kept (the models served).
    method, payload = call("n" * 5_000 + "\n")
    error = _raw_call(grpc_url, method, payload)
    assert error.code() is code
    details = error.details() or ""
    assert details.isprintable(), details
    assert len(details) <= 500, details
    if "not served here" in details:
        assert details.endswith("'complex'"), details


def test_a_timeout_too_small_for_seconds_is_past_not_zero(grpc_url: str) -> None:
    # 5e-324 microseconds read 0.0 seconds: "a timeout must be positive", INVALID_ARGUMENT.
    request = message_class("inference.ModelInferRequest")(model_name="echo")
    request.parameters["timeout"].double_param = 5e-324
    tensor = request.inputs.add(name="x", datatype="FP64", shape=[1])
    tensor.contents.fp64_contents.append(1.0)
    with pytest.raises(grpc.RpcError) as raised:
        _model_infer(grpc_url, request)
    assert raised.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED


@pytest.mark.parametrize(
    ("config", "said"),
    [
        ('{"max_batch_size": 2147483648}', "from 0 to 2147483647"),
        ('{"max_batch_size": ' + "9" * 5000 + "}", "number too long"),
        (
            '{"dynamic_batching": {"max_queue_delay_microseconds": 1' + "0" * 400 + "}}",
            "from 0 to",
        ),
    ],
)
def test_a_load_config_out_of_its_fields_range_is_refused(
    client: triton.InferenceServerClient, config: str, said: str
) -> None:
    # Past int32, the load was taken and every ModelConfig after it failed INTERNAL; a number
    # of 5,000 digits or one that overflowed a float was INTERNAL at once.
    code, message = _code(lambda: client.load_model("simple", config=config))
    assert code is grpc.StatusCode.INVALID_ARGUMENT
    assert said in message
    assert client.get_model_config("simple").config.name == "simple"


def test_a_load_without_config_loads_the_declared_batching(
    client: triton.InferenceServerClient,
) -> None:
    # 'simple' declares max_batch_size 8. A load's config lasted for good: every later load
    # without one, and one after an unload, kept max_batch_size 2.
    client.load_model("simple", config='{"max_batch_size": 2}')
    assert client.get_model_config("simple").config.max_batch_size == 2
    client.load_model("simple")
    assert client.get_model_config("simple").config.max_batch_size == 8
    client.load_model("simple", config='{"max_batch_size": 2}')
    client.unload_model("simple")
    client.load_model("simple")
    assert client.get_model_config("simple").config.max_batch_size == 8


def test_each_config_load_starts_from_the_declared_configuration(
    client: triton.InferenceServerClient,
) -> None:
    # 'simple' declares max_batch_size 8 and no delay. A load's config that set one member
    # kept the others as an earlier load set them, and the declared dims were refused once a
    # load had turned batching off.
    def batching() -> tuple[int, int]:
        config = client.get_model_config("simple").config
        return config.max_batch_size, config.dynamic_batching.max_queue_delay_microseconds

    delay = '"dynamic_batching": {"max_queue_delay_microseconds": 5000}'
    client.load_model("simple", config='{"max_batch_size": 4, ' + delay + "}")
    assert batching() == (4, 5000)
    client.load_model("simple", config='{"max_batch_size": 2}')
    assert batching() == (2, 0)
    client.load_model("simple", config="{" + delay + "}")
    assert batching() == (8, 5000)
    client.load_model("simple", config='{"max_batch_size": 0}')
    inputs = [{"name": n, "data_type": "TYPE_INT32", "dims": [16]} for n in ("INPUT0", "INPUT1")]
    client.load_model("simple", config=json.dumps({"max_batch_size": 8, "input": inputs}))
    assert batching() == (8, 0)


def test_api_keys_and_size_limit() -> None:
    port = free_port()
    keys = loadonce.AccessKeys(inference=(KEY,), admin=(ADMIN_KEY,))
    limits = loadonce.Limits(max_body_bytes=1024)
    with _serve(port, access=keys, limits=limits):
        url = f"127.0.0.1:{port}"
        with triton.InferenceServerClient(url) as anonymous:
            assert anonymous.is_server_live()  # open, as /v2/health/live
            assert _health(url) == 1  # open too
            code, message = _code(lambda: anonymous.infer("simple", _pair()))
            assert code is grpc.StatusCode.UNAUTHENTICATED
            # In gRPC's words: metadata keys are lowercase (tritonclient.grpc refuses
            # "Authorization" before sending it).
            assert "the metadata 'authorization: Bearer <key>'" in message
        bearer = {"authorization": f"Bearer {KEY}"}
        with triton.InferenceServerClient(url) as user:
            result = user.infer("simple", _pair(), headers=bearer)
            np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), INPUT0 + INPUT1)
            code, _ = _code(lambda: user.unload_model("simple", headers={"x-api-key": KEY}))
            assert code is grpc.StatusCode.PERMISSION_DENIED
            # Two different keys are refused whichever comes first (the first was taken).
            for first, second in ((KEY, ADMIN_KEY), (ADMIN_KEY, KEY)):
                both = {"authorization": f"Bearer {first}", "x-api-key": second}
                code, message = _code(lambda: user.unload_model("simple", headers=both))  # noqa: B023
                assert code is grpc.StatusCode.UNAUTHENTICATED, message
                assert "more than one API key" in message
            big = triton.InferInput("INPUT0", [1, 1024], "FP32")
            big.set_data_from_numpy(np.zeros((1, 1024), np.float32))
            code, _ = _code(lambda: user.infer("picky", [big], headers=bearer))
            assert code is grpc.StatusCode.RESOURCE_EXHAUSTED
            admin = {"x-api-key": ADMIN_KEY}
            user.unload_model("picky", headers=admin)
            assert not user.is_model_ready("picky", headers=admin)
            code, _ = _code(lambda: user.infer("picky", _picky(1), headers=admin))
            assert code is grpc.StatusCode.UNAVAILABLE
            # As /readyz: a model unloaded on request does not make the server unready.
            assert _health(url) == 1
            user.load_model("picky", headers=admin)
            assert user.is_model_ready("picky", headers=admin)


def test_cli_two_workers_share_the_port(tmp_path: Path) -> None:
    port = free_port()
    config = tmp_path / "loadonce.toml"
    config.write_text(
        "[server]\nworkers = 2\nmemory_plan = false\n\n"
        '[[models]]\nname = "simple"\nloader = "tests.v2_models:Simple"\n'
    )
    server = start_cli([str(config), "--grpc-port", str(port)], tmp_path)
    try:
        url = f"127.0.0.1:{port}"
        wait_until(lambda: _ready(url), 60, "the gRPC port to answer")
        with triton.InferenceServerClient(url) as client:
            for _ in range(4):
                result = client.infer("simple", _pair())
                np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), INPUT0 + INPUT1)
    finally:
        stop(server)
    assert server.log().count("gRPC (Open Inference Protocol) listening") == 2


def test_grpc_stops_accepting_when_http_does(tmp_path: Path) -> None:
    """On SIGTERM a worker stops taking gRPC calls when it stops taking HTTP connections, not
    once the HTTP requests in flight have finished (its lifespan's end)."""
    port = free_port()
    config = tmp_path / "loadonce.toml"
    config.write_text(
        "[server]\nstop_delay_s = 0\nmemory_plan = false\n\n"
        '[[models]]\nname = "simple"\nloader = "tests.v2_models:Simple"\n\n'
        '[[models]]\nname = "slow"\nloader = "tests.loaders:SlowEcho"\n'
    )
    server = start_cli(
        [str(config), "--grpc-port", str(port)],
        tmp_path,
        env={**cli_env(tmp_path), "LOADER_TEST_DELAY": "4"},
    )
    url = f"127.0.0.1:{port}"
    answers: queue.Queue[int] = queue.Queue()
    try:
        wait_until(lambda: _ready(url), 60, "the gRPC port to answer")
        slow = threading.Thread(
            target=lambda: answers.put(
                httpx.post(
                    f"{server.url}/models/slow/predict", json={"inputs": [1]}, timeout=30
                ).status_code
            )
        )
        slow.start()
        time.sleep(1)  # the slow request is in flight
        server.process.send_signal(signal.SIGTERM)
        time.sleep(1)
        with triton.InferenceServerClient(url) as client:
            code, _ = _code(lambda: client.infer("simple", _pair(), client_timeout=2))
        assert code is grpc.StatusCode.UNAVAILABLE
        assert answers.get(timeout=30) == 200  # the HTTP request in flight still finished
    finally:
        stop(server)


def _ready(url: str) -> bool:
    try:
        return _health(url) == 1
    except grpc.RpcError:
        return False


def test_calls_past_the_bound_in_flight_are_refused_at_once() -> None:
    """Backpressure ahead of the models' queues: with one call in flight allowed, a second
    one while the first runs gets RESOURCE_EXHAUSTED at once instead of waiting unbounded."""
    port = free_port()
    app = loadonce.create_app(_specs(), wrap=grpc_lifespan(port=port, max_concurrent_rpcs=1))
    slow = triton.InferInput("INPUT0", [1, 1], "FP32")
    slow.set_data_from_numpy(np.array([[500.0]], dtype=np.float32))  # takes a second
    with ThreadedServer(app):
        first = triton.InferenceServerClient(f"127.0.0.1:{port}")
        second = triton.InferenceServerClient(f"127.0.0.1:{port}")
        answers: list[Any] = []
        first.async_infer("picky", [slow], callback=lambda result, error: answers.append(error))
        time.sleep(0.3)
        code, _ = _code(lambda: second.infer("picky", [slow]))
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
        wait_until(lambda: answers, 10, "the first call's answer")
        assert answers == [None]
        first.close()
        second.close()


def test_each_call_writes_an_access_line(
    client: triton.InferenceServerClient, grpc_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    # Each HTTP request had its line; a gRPC call had none.
    def lines() -> list[str]:
        return [r.getMessage() for r in caplog.records if r.name == "loadonce.access"]

    with caplog.at_level(logging.INFO, logger="loadonce.access"):
        client.infer("simple", _pair(), headers={"x-request-id": "grpc-line-1"})
        _code(lambda: client.get_model_metadata("no-such-model"))
        with pytest.raises(grpc.RpcError):  # a request that is not valid (a value-less entry)
            _model_infer(grpc_url, _with_an_empty_parameter("request"))
        # A call's line is written once its answer has left: the client may see it first.
        wait_until(lambda: len(lines()) >= 3, 5, "the calls' access lines")
    written = lines()
    assert any(
        "/inference.GRPCInferenceService/ModelInfer 200" in line and "grpc-line-1" in line
        for line in written
    ), written
    assert any("/inference.GRPCInferenceService/ModelMetadata 404" in line for line in written), (
        written
    )
    # A request that is not valid: 400, as REST's /v2 records it (it was 422, the JSON
    # routes' status, so the two protocols' lines and metrics disagreed for one request).
    infer_lines = [line for line in written if "GRPCInferenceService/ModelInfer " in line]
    assert any("/inference.GRPCInferenceService/ModelInfer 400" in line for line in infer_lines)
    assert not any(" 422 " in line for line in infer_lines), infer_lines


class _Gated:
    """Echoes each example; every call waits for ``gate`` first, and its size is recorded."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.started = threading.Event()
        self.batches: list[int] = []

    def predict(self, batch: list[Any]) -> list[Any]:
        self.batches.append(len(batch))
        self.started.set()
        self.gate.wait(30)
        return list(batch)


def _bytes_input(value: str) -> list[Any]:
    tensor = triton.InferInput("x", [1], "BYTES")
    tensor.set_data_from_numpy(np.array([value.encode()], dtype=np.object_))
    return [tensor]


def _queued(url: str, model: str) -> float:
    text = httpx.get(f"{url}/metrics").text
    found = re.search(rf'loadonce_queue_examples\{{model="{model}"\}} (\S+)', text)
    return float(found.group(1)) if found else 0.0


@pytest.mark.parametrize(("max_batch_size", "sent"), [(8, 6), (1, STREAM_WINDOW * 3)])
def test_a_streams_requests_run_at_once_answered_in_order_within_a_window(
    max_batch_size: int, sent: int
) -> None:
    """As Triton's stream handler, which issues each request as it is read: the requests of
    one stream wait in the model's queue together (and share its calls), where they were
    answered one at a time, never batched, one slow request holding all behind it. The
    answers still come in the requests' order; at most STREAM_WINDOW are read ahead."""
    model = _Gated()
    port = free_port()
    spec = loadonce.ModelSpec(
        name="gated",
        loader=lambda: model,
        batching=loadonce.Batching(max_batch_size=max_batch_size),
    )
    app = loadonce.create_app([spec], wrap=grpc_lifespan(port=port))
    done: queue.Queue[Any] = queue.Queue()
    with ThreadedServer(app) as server, triton.InferenceServerClient(f"127.0.0.1:{port}") as client:
        client.start_stream(lambda result, error: done.put((result, error)))
        try:
            for index in range(sent):
                client.async_stream_infer("gated", _bytes_input(str(index)), request_id=str(index))
            assert model.started.wait(10)
            waiting = min(sent - 1, STREAM_WINDOW - 1)  # the window's first is running
            wait_until(lambda: _queued(server.url, "gated") >= waiting, 10, "requests queued")
            time.sleep(0.2)
            # Read ahead, but no further than the window.
            assert _queued(server.url, "gated") == waiting
        finally:
            model.gate.set()
        answers = [done.get(timeout=30) for _ in range(sent)]
        client.stop_stream()
    assert [error for _, error in answers] == [None] * sent
    assert [result.get_response().id for result, _ in answers] == [str(i) for i in range(sent)]
    outputs = [result.get_response().outputs[0].name for result, _ in answers]
    assert [
        result.as_numpy(name)[0] for (result, _), name in zip(answers, outputs, strict=True)
    ] == [str(i).encode() for i in range(sent)]
    if max_batch_size > 1:
        # Shared calls (one at a time, each was its own); how the first few split between the
        # first two calls depends on when the loop ran the first one.
        assert sum(model.batches) == sent, model.batches
        assert max(model.batches) > 1, f"the stream's requests shared no call: {model.batches}"


@pytest.mark.parametrize("how", ["unary", "stream"])
@pytest.mark.parametrize("compression", [None, "gzip", "deflate"])
def test_a_message_over_max_body_bytes_is_resource_exhausted_compressed_or_not(
    compression: str | None, how: str
) -> None:
    """gRPC's core refuses it (before loadonce reads it): compressed, as it inflates past the
    limit (zeros: a few hundred bytes on the wire), as when it arrives whole."""
    port = free_port()
    zeros = triton.InferInput("INPUT0", [1, 8192], "FP32")
    zeros.set_data_from_numpy(np.zeros((1, 8192), np.float32))
    with (
        _serve(port, limits=loadonce.Limits(max_body_bytes=4096)),
        triton.InferenceServerClient(f"127.0.0.1:{port}") as client,
    ):
        if how == "unary":
            code, message = _code(
                lambda: client.infer("picky", [zeros], compression_algorithm=compression)
            )
        else:
            done: queue.Queue[Any] = queue.Queue()
            client.start_stream(
                lambda result, error: done.put(error), compression_algorithm=compression
            )
            client.async_stream_infer("picky", [zeros])
            error = done.get(timeout=10)
            client.stop_stream()
            code = getattr(grpc.StatusCode, error.status().removeprefix("StatusCode."))
            message = error.message()
    assert code is grpc.StatusCode.RESOURCE_EXHAUSTED, message
    assert "larger than max" in message
