"""The Open Inference Protocol, driven by the real tritonclient against a real server."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx2 as httpx
import ml_dtypes
import numpy as np
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

import loadonce
from tests.servers import ThreadedServer
from tests.triton_unsupported import UNSUPPORTED_CALLS, UnsupportedCall
from tests.v2_models import IRIS_LIKE, v2_specs


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ThreadedServer]:
    app = loadonce.create_app(v2_specs(tmp_path_factory.mktemp("v2")))
    with ThreadedServer(app) as running:
        yield running


@pytest.fixture
def client(server: ThreadedServer) -> Iterator[triton.InferenceServerClient]:
    connection = triton.InferenceServerClient(server.url.removeprefix("http://"))
    yield connection
    connection.close()


X = np.array([[1.0, 2.0, 3.5], [-1.0, 0.25, 0.0]], dtype=np.float32)
H = np.array([[0.5, -1.5], [1024.0, 0.0]], dtype=np.float16)
N = np.array([[1, -7], [2**40, 0]], dtype=np.int64)
B = np.array([[True], [False]])


def _tensor_inputs(*, binary: bool) -> list[triton.InferInput]:
    inputs = []
    named = (("x", X, "FP32"), ("h", H, "FP16"), ("n", N, "INT64"), ("b", B, "BOOL"))
    for name, array, datatype in named:
        tensor = triton.InferInput(name, list(array.shape), datatype)
        tensor.set_data_from_numpy(array, binary_data=binary)
        inputs.append(tensor)
    return inputs


def _check_tensor_outputs(result: triton.InferResult) -> None:
    np.testing.assert_array_equal(result.as_numpy("x_sum"), X.sum(axis=1))
    assert result.as_numpy("x_sum").dtype == np.float32
    np.testing.assert_array_equal(result.as_numpy("h_twice"), H + H)
    assert result.as_numpy("h_twice").dtype == np.float16
    np.testing.assert_array_equal(result.as_numpy("n_next"), N + 1)
    np.testing.assert_array_equal(result.as_numpy("b_not"), ~B)


def test_health_and_server_metadata(client: triton.InferenceServerClient) -> None:
    assert client.is_server_live()
    assert client.is_server_ready()
    metadata = client.get_server_metadata()
    assert metadata["name"] == "loadonce"
    assert metadata["version"] == loadonce.__version__
    assert {"binary_tensor_data", "model_repository"} <= set(metadata["extensions"])
    assert client.is_model_ready("tensors")
    assert client.is_model_ready("shout", "3")
    assert not client.is_model_ready("shout", "2")
    assert not client.is_model_ready("no-such-model")


def test_model_metadata_names_datatypes_and_variable_dimensions(
    client: triton.InferenceServerClient,
) -> None:
    metadata = client.get_model_metadata("tensors")
    assert metadata["name"] == "tensors"
    assert metadata["versions"] == ["1"]
    assert metadata["platform"] == "onnx"
    assert metadata["inputs"] == [
        {"name": "x", "datatype": "FP32", "shape": [-1, 3]},
        {"name": "h", "datatype": "FP16", "shape": [-1, 2]},
        {"name": "n", "datatype": "INT64", "shape": [-1, 2]},
        {"name": "b", "datatype": "BOOL", "shape": [-1, 1]},
    ]
    assert [o["name"] for o in metadata["outputs"]] == ["x_sum", "h_twice", "n_next", "b_not"]
    iris = client.get_model_metadata("iris", "1")
    assert iris["inputs"] == [{"name": "input", "datatype": "FP64", "shape": [-1, 4]}]
    # A classifier's methods are named outputs of the one loaded copy; label is the default.
    assert iris["outputs"] == [
        {"name": "label", "datatype": "BYTES", "shape": [-1]},
        {"name": "probabilities", "datatype": "FP64", "shape": [-1, 2]},
        {"name": "decision_function", "datatype": "FP64", "shape": [-1]},
    ]


def test_infer_with_the_clients_defaults_sends_and_gets_binary(
    client: triton.InferenceServerClient,
) -> None:
    result = client.infer("tensors", _tensor_inputs(binary=True), request_id="req-7")
    _check_tensor_outputs(result)
    response = result.get_response()
    assert response["id"] == "req-7"
    assert (response["model_name"], response["model_version"]) == ("tensors", "1")
    assert all("binary_data_size" in o["parameters"] for o in response["outputs"])


def test_infer_in_pure_json(client: triton.InferenceServerClient) -> None:
    outputs = [
        triton.InferRequestedOutput(name, binary_data=False)
        for name in ("x_sum", "h_twice", "n_next", "b_not")
    ]
    result = client.infer("tensors", _tensor_inputs(binary=False), outputs=outputs)
    _check_tensor_outputs(result)
    response = result.get_response()
    assert all("data" in o and "parameters" not in o for o in response["outputs"])


def test_only_the_requested_outputs_come_back_each_in_its_own_encoding(
    client: triton.InferenceServerClient,
) -> None:
    outputs = [
        triton.InferRequestedOutput("n_next", binary_data=True),
        triton.InferRequestedOutput("b_not", binary_data=False),
    ]
    result = client.infer("tensors", _tensor_inputs(binary=True), outputs=outputs)
    response = result.get_response()
    assert [o["name"] for o in response["outputs"]] == ["n_next", "b_not"]
    assert "binary_data_size" in response["outputs"][0]["parameters"]
    assert response["outputs"][1]["data"] == [False, True]
    np.testing.assert_array_equal(result.as_numpy("n_next"), N + 1)
    assert result.as_numpy("x_sum") is None


@pytest.mark.parametrize("binary", [True, False])
def test_bytes_tensors_both_ways(client: triton.InferenceServerClient, binary: bool) -> None:
    texts = np.array(["héllo", "", "tritón client"], dtype=object)
    text = triton.InferInput("text", [3], "BYTES")
    text.set_data_from_numpy(texts, binary_data=binary)
    outputs = [triton.InferRequestedOutput(n, binary_data=binary) for n in ("upper", "length")]
    result = client.infer("shout", [text], model_version="3", outputs=outputs)
    # tritonclient gives bytes from binary data and str from JSON data.
    upper = [v.decode("utf-8") if binary else v for v in result.as_numpy("upper")]
    assert upper == ["HÉLLO", "", "TRITÓN CLIENT"]
    np.testing.assert_array_equal(result.as_numpy("length"), [5, 0, 13])


def test_results_equal_the_json_routes(
    client: triton.InferenceServerClient, server: ThreadedServer
) -> None:
    features = triton.InferInput("input", list(IRIS_LIKE.shape), "FP64")
    features.set_data_from_numpy(IRIS_LIKE)
    labels = client.infer("iris", [features]).as_numpy("label")
    predicted = httpx.post(
        f"{server.url}/models/iris/predict", json={"inputs": IRIS_LIKE.tolist()}
    ).json()["outputs"]
    assert (
        [label.decode() for label in labels]
        == predicted
        == [
            "setosa",
            "setosa",
            "virginica",
            "virginica",
        ]
    )
    examples = [
        {"x": X[i].tolist(), "h": H[i].tolist(), "n": N[i].tolist(), "b": B[i].tolist()}
        for i in range(2)
    ]
    by_json = httpx.post(f"{server.url}/models/tensors/predict", json={"inputs": examples})
    by_v2 = client.infer("tensors", _tensor_inputs(binary=True))
    for index, row in enumerate(by_json.json()["outputs"]):
        for name, value in row.items():
            np.testing.assert_array_equal(by_v2.as_numpy(name)[index], value)


def test_a_classifier_answers_the_outputs_the_client_requests(
    client: triton.InferenceServerClient, server: ThreadedServer
) -> None:
    features = triton.InferInput("input", list(IRIS_LIKE.shape), "FP64")
    features.set_data_from_numpy(IRIS_LIKE)
    requested = [
        triton.InferRequestedOutput("probabilities", binary_data=True),
        triton.InferRequestedOutput("label", binary_data=False),
    ]
    result = client.infer("iris", [features], outputs=requested)
    assert [output["name"] for output in result.get_response()["outputs"]] == [
        "probabilities",
        "label",
    ]
    probabilities = result.as_numpy("probabilities")
    assert probabilities.shape == (len(IRIS_LIKE), 2)  # this iris knows two species
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0)
    by_json = httpx.post(
        f"{server.url}/models/iris/predict",
        json={"inputs": IRIS_LIKE.tolist(), "outputs": ["probabilities", "label"]},
    ).json()["outputs"]
    np.testing.assert_allclose([row["probabilities"] for row in by_json], probabilities)
    # Asked for in JSON, the labels come back as text.
    assert [row["label"] for row in by_json] == list(result.as_numpy("label"))


# Each output of the four-input model, its values for X, H, N (two examples), and the
# classes tritonclient's class_count asks for, as Triton writes them: "<value>:<index>",
# highest first, a float as C's %f, equal values by index, at most the example's values.
_CLASSIFIED = [
    ("x_sum", 1, [[b"6.500000:0"], [b"-0.750000:0"]]),
    ("h_twice", 2, [[b"1.000000:0", b"-3.000000:1"], [b"2048.000000:0", b"0.000000:1"]]),
    ("h_twice", 9, [[b"1.000000:0", b"-3.000000:1"], [b"2048.000000:0", b"0.000000:1"]]),
    ("n_next", 1, [[b"2:0"], [b"1099511627777:0"]]),
    ("n_next", 2, [[b"2:0", b"-6:1"], [b"1099511627777:0", b"1:1"]]),
]


@pytest.mark.parametrize("binary", [True, False])
@pytest.mark.parametrize(("output", "count", "expected"), _CLASSIFIED)
def test_the_classification_extension_answers_each_examples_top_classes(
    client: triton.InferenceServerClient,
    output: str,
    count: int,
    expected: list[list[bytes]],
    binary: bool,
) -> None:
    """tritonclient's class_count (parameters.classification) was refused with a 400."""
    requested = [triton.InferRequestedOutput(output, binary_data=binary, class_count=count)]
    result = client.infer("tensors", _tensor_inputs(binary=True), outputs=requested)
    [described] = result.get_response()["outputs"]
    assert (described["datatype"], described["shape"]) == ("BYTES", [2, len(expected[0])])
    classes = result.as_numpy(output)
    # tritonclient gives bytes from binary data and str from JSON data.
    assert [[c if binary else c.encode() for c in row] for row in classes] == expected


def test_a_classifiers_probabilities_as_classes(client: triton.InferenceServerClient) -> None:
    features = triton.InferInput("input", list(IRIS_LIKE.shape), "FP64")
    features.set_data_from_numpy(IRIS_LIKE)
    plain = client.infer(
        "iris", [features], outputs=[triton.InferRequestedOutput("probabilities")]
    ).as_numpy("probabilities")
    requested = [triton.InferRequestedOutput("probabilities", class_count=1)]
    classes = client.infer("iris", [features], outputs=requested).as_numpy("probabilities")
    assert [row[0] for row in classes] == [
        f"{row.max():f}:{row.argmax()}".encode() for row in plain
    ]


def test_request_parameters_reach_the_model_and_never_share_a_call(
    server: ThreadedServer,
) -> None:
    """Requests that arrive together are batched (max_wait_ms 100), but a request's
    parameters apply to its own examples only."""
    values = np.array([1.5, -2.0])

    def infer(factor: int | None) -> np.ndarray:
        connection = triton.InferenceServerClient(server.url.removeprefix("http://"))
        tensor = triton.InferInput("input", [2], "FP64")
        tensor.set_data_from_numpy(values)
        parameters = None if factor is None else {"factor": factor, "unrelated": "ignored"}
        try:
            output = connection.infer("scaler", [tensor], parameters=parameters)
            return np.asarray(output.as_numpy("output"))
        finally:
            connection.close()

    factors = [2, None, 3, 2, None, 3]
    with ThreadPoolExecutor(len(factors)) as pool:
        results = list(pool.map(infer, factors))
    for factor, result in zip(factors, results, strict=True):
        np.testing.assert_array_equal(result, values * (factor or 1))


def test_compressed_requests_and_responses(client: triton.InferenceServerClient) -> None:
    for algorithm in ("gzip", "deflate"):
        result = client.infer(
            "tensors",
            _tensor_inputs(binary=True),
            request_compression_algorithm=algorithm,
            response_compression_algorithm=algorithm,
        )
        _check_tensor_outputs(result)
    # Large enough to be compressed on the way back; gzip on the wire, as asked.
    texts = np.array(["word " * 100] * 8, dtype=object)
    text = triton.InferInput("text", [8], "BYTES")
    text.set_data_from_numpy(texts)
    result = client.infer("shout", [text], model_version="3", response_compression_algorithm="gzip")
    assert result.as_numpy("upper")[0] == b"WORD " * 100


def test_the_triton_timeout_parameter_is_the_requests_deadline(
    tmp_path: Path,
) -> None:
    spec = loadonce.ModelSpec(name="slow", loader="tests.loaders:slow_echo", input_shape=())
    with ThreadedServer(loadonce.create_app([spec])) as running:
        connection = triton.InferenceServerClient(running.url.removeprefix("http://"))
        values = triton.InferInput("input", [1], "FP64")
        values.set_data_from_numpy(np.array([1.0]))
        with pytest.raises(InferenceServerException) as refused:
            connection.infer("slow", [values], timeout=50_000)  # 50 ms; a call takes 200 ms
        assert refused.value.status() == "504"
        assert "deadline" in refused.value.message()
        result = connection.infer("slow", [values], timeout=5_000_000)
        np.testing.assert_array_equal(result.as_numpy("output"), [1.0])
        connection.close()


def test_repository_index_unload_and_load(tmp_path: Path) -> None:
    app = loadonce.create_app(v2_specs(tmp_path))
    with ThreadedServer(app) as running:
        connection = triton.InferenceServerClient(running.url.removeprefix("http://"))
        index = connection.get_model_repository_index()
        assert {(m["name"], m["version"], m["state"]) for m in index} == {
            ("tensors", "1", "READY"),
            ("iris", "1", "READY"),
            ("shout", "3", "READY"),
            ("scaler", "1", "READY"),
        }
        connection.unload_model("tensors")
        assert not connection.is_model_ready("tensors")
        index = connection.get_model_repository_index()
        unloaded = next(m for m in index if m["name"] == "tensors")
        assert unloaded["state"] == "UNAVAILABLE"
        assert "unloaded" in unloaded["reason"]
        with pytest.raises(InferenceServerException) as refused:
            connection.infer("tensors", _tensor_inputs(binary=True))
        assert refused.value.status() == "503"
        # Unloaded on purpose: the rest of the server stays ready, as Triton's does.
        assert connection.is_server_ready()
        connection.load_model("tensors")
        assert connection.is_model_ready("tensors")
        _check_tensor_outputs(connection.infer("tensors", _tensor_inputs(binary=True)))
        # Loading a loaded model reloads it; it answers throughout.
        connection.load_model("iris")
        info = httpx.get(f"{running.url}/models/iris").json()
        assert (info["state"], info["load_count"]) == ("ready", 2)
        with pytest.raises(InferenceServerException) as overridden:
            connection.load_model("iris", config='{"backend": "python"}')
        assert overridden.value.status() == "400"
        assert "cannot change backend" in overridden.value.message()
        connection.close()


ALL_DATATYPES = {
    "BOOL": np.array([[True, False], [False, True]]),
    "UINT8": np.array([[0, 255], [1, 2]], dtype=np.uint8),
    "UINT16": np.array([[0, 65535], [1, 2]], dtype=np.uint16),
    "UINT32": np.array([[0, 2**32 - 1], [1, 2]], dtype=np.uint32),
    "UINT64": np.array([[0, 2**64 - 1], [1, 2]], dtype=np.uint64),
    "INT8": np.array([[-128, 127], [0, -1]], dtype=np.int8),
    "INT16": np.array([[-(2**15), 2**15 - 1], [0, -1]], dtype=np.int16),
    "INT32": np.array([[-(2**31), 2**31 - 1], [0, -1]], dtype=np.int32),
    "INT64": np.array([[-(2**63), 2**63 - 1], [0, -1]], dtype=np.int64),
    "FP16": np.array([[0.5, -65504.0], [1e-3, 2.0]], dtype=np.float16),
    "FP32": np.array([[0.1, -3.4e38], [1e-30, 2.0]], dtype=np.float32),
    "FP64": np.array([[0.1, -1.7e308], [5e-324, 2.0]], dtype=np.float64),
    "BYTES": np.array([[b"a", b"\x00\xff"], [b"", "é".encode()]], dtype=object),
}


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
@pytest.mark.parametrize("datatype", list(ALL_DATATYPES))
def test_every_datatype_round_trips_exactly(
    echo_client: triton.InferenceServerClient, datatype: str, binary: bool
) -> None:
    """A model that returns its examples as they came: every datatype, both encodings."""
    sent = ALL_DATATYPES[datatype]
    if datatype == "BYTES" and not binary:
        sent = np.array([["a", "b c"], ["", "é"]], dtype=object)  # JSON carries text only
    tensor = triton.InferInput("values", list(sent.shape), datatype)
    tensor.set_data_from_numpy(sent, binary_data=binary)
    output = triton.InferRequestedOutput("output", binary_data=binary)
    result = echo_client.infer("echo", [tensor], outputs=[output])
    [described] = result.get_response()["outputs"]
    assert (described["datatype"], described["shape"]) == (datatype, [2, 2])
    received = result.as_numpy("output")
    if datatype == "BYTES":
        as_text = [v if isinstance(v, str) else v.decode("utf-8", "replace") for v in received.flat]
        expected = [v if isinstance(v, str) else v.decode("utf-8", "replace") for v in sent.flat]
        assert as_text == expected
    else:
        assert received.dtype == sent.dtype
        np.testing.assert_array_equal(received, sent)


@pytest.fixture(scope="module")
def echo_server() -> Iterator[ThreadedServer]:
    spec = loadonce.ModelSpec(name="echo", loader=lambda: lambda batch: list(batch))
    with ThreadedServer(loadonce.create_app([spec])) as running:
        yield running


@pytest.fixture
def echo_client(echo_server: ThreadedServer) -> Iterator[triton.InferenceServerClient]:
    connection = triton.InferenceServerClient(echo_server.url.removeprefix("http://"))
    yield connection
    connection.close()


class _Echo:
    """Declares nothing: answers each example as it came."""

    def predict(self, batch: list[Any]) -> list[Any]:
        return list(batch)


def test_bf16_in_binary_and_json() -> None:
    """BF16 travels as tritonclient sends it (binary: ml_dtypes' bfloat16) and as JSON
    numbers, rounded to BF16 as FP16's are; a value past its range is refused. It was an
    unknown datatype, even for a model that takes any input."""
    values = np.array([[1.0, 2.5, -3.0, np.nan]], dtype=ml_dtypes.bfloat16)
    with ThreadedServer(
        loadonce.create_app([loadonce.ModelSpec(name="echo", loader=_Echo)])
    ) as server:
        client = triton.InferenceServerClient(server.url.removeprefix("http://"))
        tensor = triton.InferInput("x", list(values.shape), "BF16")
        tensor.set_data_from_numpy(values, binary_data=True)
        result = client.infer("echo", [tensor])
        client.close()
        assert result.as_numpy("output").tobytes() == values.tobytes()
        _bf16_as_json(server)


def _bf16_as_json(server: ThreadedServer) -> None:
    for data, status, answered in (("[1.00390625, 2]", 200, [1.0, 2.0]), ("[1e39, 1]", 400, None)):
        body = f'{{"inputs": [{{"name": "x", "datatype": "BF16", "shape": [2], "data": {data}}}]}}'
        answer = httpx.post(f"{server.url}/v2/models/echo/infer", content=body)
        assert answer.status_code == status, answer.text
        if answered is not None:
            [output] = answer.json()["outputs"]
            assert (output["datatype"], output["data"]) == ("BF16", answered)
        else:
            assert "outside the range of BF16" in answer.json()["error"]


@pytest.mark.parametrize(
    ("call", "refusal"),
    [pytest.param(call, refusal, id=name) for name, call, refusal in UNSUPPORTED_CALLS],
)
def test_an_extension_not_offered_is_refused_as_triton_refuses_one(
    client: triton.InferenceServerClient, call: UnsupportedCall, refusal: str
) -> None:
    """501, Triton's status for a feature it does not support, saying what is not offered:
    it was 404 "no such endpoint", which reads as a wrong URL or server."""
    with pytest.raises(InferenceServerException) as refused:
        call(client, "tensors")
    assert refused.value.status() == "501"
    assert refused.value.message().startswith(refusal)
