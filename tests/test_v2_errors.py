"""The Open Inference Protocol's errors over raw HTTP: the status, and {"error"} naming the
tensor, for every way a request can be wrong."""

from __future__ import annotations

import gzip
import json
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2 as httpx
import numpy as np
import pytest

import loadonce
from tests.servers import ThreadedServer
from tests.v2_models import v2_specs

HEADER_LENGTH = "Inference-Header-Content-Length"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ThreadedServer]:
    app = loadonce.create_app(v2_specs(tmp_path_factory.mktemp("v2-errors")))
    with ThreadedServer(app) as running:
        yield running


@pytest.fixture
def http(server: ThreadedServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=30) as client:
        yield client


def _error(response: httpx.Response, status: int) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}, body
    message: str = body["error"]
    return message


def _binary_request(header: dict[str, Any], *chunks: bytes) -> tuple[bytes, dict[str, str]]:
    text = json.dumps(header).encode()
    return text + b"".join(chunks), {HEADER_LENGTH: str(len(text))}


def _x_input(**fields: Any) -> dict[str, Any]:
    return {"name": "x", "shape": [1, 3], "datatype": "FP32", **fields}


def _tensors_request(x: dict[str, Any]) -> dict[str, Any]:
    """A request to the four-input model whose other inputs are valid JSON."""
    return {
        "inputs": [
            x,
            {"name": "h", "shape": [1, 2], "datatype": "FP16", "data": [1, 2]},
            {"name": "n", "shape": [1, 2], "datatype": "INT64", "data": [1, 2]},
            {"name": "b", "shape": [1, 1], "datatype": "BOOL", "data": [True]},
        ]
    }


def test_a_valid_json_request_for_reference(http: httpx.Client) -> None:
    body = _tensors_request(_x_input(data=[[1, 2, 3]]))
    response = http.post("/v2/models/tensors/infer", json=body)
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    outputs = {o["name"]: o for o in response.json()["outputs"]}
    assert outputs["x_sum"] == {"name": "x_sum", "datatype": "FP32", "shape": [1], "data": [6.0]}


def test_unknown_model_and_unknown_version_are_404(http: httpx.Client) -> None:
    assert "not served here" in _error(http.get("/v2/models/nope"), 404)
    assert "'nope'" in _error(http.post("/v2/models/nope/infer", json={}), 404)
    message = _error(http.get("/v2/models/shout/versions/2"), 404)
    assert "no version '2'" in message
    assert "version '3'" in message
    _error(http.get("/v2/models/shout/versions/2/ready"), 404)
    assert http.get("/v2/models/shout/versions/3/ready").json() == {"name": "shout", "ready": True}


@pytest.mark.parametrize(
    "path",
    ["/v2/models/{}", "/v2/models/{}/ready", "/v2/models/shout/versions/{}"],
)
def test_a_name_quoted_in_a_404_is_escaped_and_cut(http: httpx.Client, path: str) -> None:
    # A newline (percent-encoded in the path) in a model's name reached the client raw in
    # the 404's message, and a long name filled it.
    message = _error(http.get(path.format("x%0aERROR%20forged%E2%80%AE")), 404)
    assert "'x\\x0aERROR forged\\u202e'" in message, message
    message = _error(http.get(path.format("n" * 1000)), 404)
    assert len(message) < 400, message
    assert message.isprintable(), message


def test_unknown_endpoints_and_methods_answer_in_the_protocols_shape(http: httpx.Client) -> None:
    assert "no such endpoint" in _error(http.get("/v2/models/iris/shared_memory"), 404)
    wrong_method = http.get("/v2/models/iris/infer")
    assert "POST" in _error(wrong_method, 405)
    assert wrong_method.headers["allow"] == "POST"


@pytest.mark.parametrize(
    ("x", "status", "words"),
    [
        (_x_input(data=[1, 2]), 400, ["input 'x'", "holds 3 elements", "data holds 2"]),
        (_x_input(datatype="FP64", data=[1, 2, 3]), 400, ["input 'x' is FP64", "takes FP32"]),
        (_x_input(datatype="FP8", data=[1, 2, 3]), 400, ["input 'x'", "unknown datatype 'FP8'"]),
        (_x_input(shape=[1, 4], data=[1, 2, 3, 4]), 400, ["input 'x'", "[1, 4]", "[-1, 3]"]),
        (_x_input(data=["a", "b", "c"]), 400, ["input 'x'", "must be numbers"]),
        (_x_input(data=[[1, 2, [3]]]), 400, ["input 'x'", "nested unevenly"]),
        (_x_input(data=[[1, 2], [3]]), 400, ["input 'x'", "nested unevenly"]),
        (
            _x_input(data=[1e39, 0, 0]),
            400,
            ["input 'x': FP32 data: a value is outside the range of FP32"],
        ),
        (_x_input(), 400, ["input 'x' has no data"]),
        (_x_input(shape=[1, -3], data=[1, 2, 3]), 400, ["inputs.0.shape"]),
        ({"name": "x", "shape": [1, 3], "data": [1, 2, 3]}, 400, ["datatype", "required"]),
        (_x_input(data=[1, 2, 3], parameters=[1]), 400, ["inputs.0.parameters"]),
    ],
)
def test_a_wrong_tensor_is_a_400_that_names_it(
    http: httpx.Client, x: dict[str, Any], status: int, words: list[str]
) -> None:
    message = _error(http.post("/v2/models/tensors/infer", json=_tensors_request(x)), status)
    for word in words:
        assert word in message


@pytest.mark.parametrize("input_index", [0, 1], ids=["FP32", "FP16"])
def test_null_among_floats_is_nan(http: httpx.Client, input_index: int) -> None:
    """KServe's clients write NaN as null (orjson), and KServe's own server reads it back as
    NaN: so does loadonce, for the datatypes that hold NaN (as its JSON route reads null)."""
    body = _tensors_request(_x_input(data=[[1, 2, 3]]))
    body["inputs"][input_index]["data"] = [None, 2, 3][: 3 - input_index]
    response = http.post("/v2/models/tensors/infer", json=body)
    assert response.status_code == 200, response.text
    outputs = {o["name"]: o["data"] for o in response.json()["outputs"]}
    answered = outputs["x_sum"][0] if input_index == 0 else outputs["h_twice"][0]
    assert np.isnan(answered)


@pytest.mark.parametrize(
    ("position", "data", "words"),
    [
        (2, [None, 2], ["input 'n'", "must be numbers"]),  # INT64: no NaN
        (3, [None], ["input 'b'"]),  # BOOL
        (0, [[None, "a", 3]], ["input 'x'", "must be numbers (or null for a missing value)"]),
        (0, [[None, True, 3]], ["input 'x'", "must be numbers"]),
    ],
)
def test_null_where_no_nan_is_held_is_a_400(
    http: httpx.Client, position: int, data: list[Any], words: list[str]
) -> None:
    body = _tensors_request(_x_input(data=[[1, 2, 3]]))
    body["inputs"][position]["data"] = data
    message = _error(http.post("/v2/models/tensors/infer", json=body), 400)
    for word in words:
        assert word in message


@pytest.mark.parametrize(
    ("n_data", "words"),
    [
        ([1.5, 2], ["input 'n'", "must be integers"]),
        ([True, False], ["must be numbers"]),
        ([2**63, -1], ["input 'n'", "outside the range of INT64"]),
        ([2**63, 0.5], ["input 'n'", "must be integers"]),
        ([2**70, 1], ["input 'n'", "outside the range of INT64"]),
    ],
)
def test_integers_are_never_truncated(
    http: httpx.Client, n_data: list[Any], words: list[str]
) -> None:
    body = _tensors_request(_x_input(data=[1, 2, 3]))
    body["inputs"][2]["data"] = n_data
    message = _error(http.post("/v2/models/tensors/infer", json=body), 400)
    for word in words:
        assert word in message


def test_missing_and_unknown_inputs_and_outputs(http: httpx.Client) -> None:
    body = _tensors_request(_x_input(data=[1, 2, 3]))
    body["inputs"][0]["name"] = "y"
    message = _error(http.post("/v2/models/tensors/infer", json=body), 400)
    assert "missing input 'x'" in message
    assert "unknown input 'y'" in message
    body = _tensors_request(_x_input(data=[1, 2, 3]))
    body["outputs"] = [{"name": "nope"}]
    assert "unknown output 'nope'" in _error(http.post("/v2/models/tensors/infer", json=body), 400)


@pytest.mark.parametrize(
    ("output", "count", "words"),
    [
        ("x_sum", "2", "parameters.classification must be the number of classes"),
        ("x_sum", -1, "parameters.classification must be the number of classes"),
        ("x_sum", 1.5, "parameters.classification must be the number of classes"),
        ("x_sum", True, "parameters.classification must be the number of classes"),
        ("b_not", 1, "output 'b_not' is BOOL: the classification extension ranks numbers"),
    ],
)
def test_a_classification_the_output_cannot_give(
    http: httpx.Client, output: str, count: Any, words: str
) -> None:
    body = _tensors_request(_x_input(data=[1, 2, 3]))
    body["outputs"] = [{"name": output, "parameters": {"classification": count}}]
    message = _error(http.post("/v2/models/tensors/infer", json=body), 400)
    assert message.startswith(f"output '{output}'"), message
    assert words in message


@pytest.mark.parametrize(
    ("members", "said"),
    [
        ({"outputs": [{"name": "nope"}]}, "unknown output 'nope'"),
        ({"outputs": [{"name": "x_sum"}, {"name": "x_sum"}]}, "an output is requested twice"),
        (
            {"outputs": [{"name": "x_sum", "parameters": {"binary_data": "yes"}}]},
            "output 'x_sum': parameters.binary_data must be true or false",
        ),
        ({"parameters": {"binary_data_output": 1}}, "parameters.binary_data_output must be"),
        ({"parameters": {"timeout": "soon"}}, "parameters.timeout must be a finite number"),
        ({"parameters": {"sequence_id": 7}}, "sequence batching (parameters.sequence_id)"),
    ],
)
def test_a_wrong_parameter_or_requested_output_is_said_as_it_is(
    http: httpx.Client, members: dict[str, Any], said: str
) -> None:
    """Not "invalid inputs: ...": the inputs are valid, and the client looked at them."""
    body = {**_tensors_request(_x_input(data=[1, 2, 3])), **members}
    message = _error(http.post("/v2/models/tensors/infer", json=body), 400)
    assert message.startswith(said), message


def test_inputs_must_agree_on_the_batch_dimension(http: httpx.Client) -> None:
    body = _tensors_request(_x_input(shape=[2, 3], data=[1, 2, 3, 4, 5, 6]))
    message = _error(http.post("/v2/models/tensors/infer", json=body), 400)
    assert "first dimensions (the batch) differ" in message


def test_malformed_json_and_missing_inputs(http: httpx.Client) -> None:
    bad = http.post("/v2/models/tensors/infer", content=b"{not json")
    assert _error(bad, 400).startswith("invalid request: body: Invalid JSON")
    assert "inputs" in _error(http.post("/v2/models/tensors/infer", json={"id": "1"}), 400)
    empty = http.post("/v2/models/tensors/infer", json={"inputs": []})
    assert "inputs" in _error(empty, 400)


def _binary_x(size: int, payload: bytes) -> tuple[bytes, dict[str, str]]:
    header = _tensors_request(_x_input(parameters={"binary_data_size": size}))
    return _binary_request(header, payload)


def test_binary_inputs_are_read_from_after_the_json(http: httpx.Client) -> None:
    content, headers = _binary_x(12, np.array([1, 2, 3.5], dtype="<f4").tobytes())
    response = http.post("/v2/models/tensors/infer", content=content, headers=headers)
    assert response.status_code == 200, response.text
    outputs = {o["name"]: o for o in response.json()["outputs"]}
    assert outputs["x_sum"]["data"] == [6.5]


def test_binary_size_that_does_not_fit_the_shape(http: httpx.Client) -> None:
    content, headers = _binary_x(8, bytes(8))
    message = _error(http.post("/v2/models/tensors/infer", content=content, headers=headers), 400)
    assert "input 'x'" in message
    assert "binary_data_size is 8 bytes" in message
    assert "takes 12" in message


def test_an_over_long_binary_section(http: httpx.Client) -> None:
    content, headers = _binary_x(12, bytes(12) + b"extra")
    message = _error(http.post("/v2/models/tensors/infer", content=content, headers=headers), 400)
    assert "17 bytes of binary data" in message
    assert "add up to 12" in message


def test_a_truncated_binary_section(http: httpx.Client) -> None:
    content, headers = _binary_x(12, bytes(7))
    message = _error(http.post("/v2/models/tensors/infer", content=content, headers=headers), 400)
    assert "input 'x'" in message
    assert "only 7 bytes" in message


def test_a_header_length_past_the_end_of_the_body(http: httpx.Client) -> None:
    content, _ = _binary_x(12, bytes(12))
    headers = {HEADER_LENGTH: str(len(content) + 1)}
    message = _error(http.post("/v2/models/tensors/infer", content=content, headers=headers), 400)
    assert HEADER_LENGTH in message
    assert f"only {len(content)} bytes" in message
    for wrong in ("-1", "ten"):
        response = http.post(
            "/v2/models/tensors/infer", content=content, headers={HEADER_LENGTH: wrong}
        )
        assert HEADER_LENGTH in _error(response, 400)


@pytest.mark.parametrize("true_one_first", [True, False])
def test_a_header_length_given_twice_with_different_values(
    http: httpx.Client, true_one_first: bool
) -> None:
    """Each order: the last value was taken silently (a proxy may read the first), so one
    order answered 200, the other a JSON parse error. The same value twice is still one."""
    content, headers = _binary_x(12, bytes(12))
    length = headers[HEADER_LENGTH]
    values = [length, "3"] if true_one_first else ["3", length]
    repeated = [(HEADER_LENGTH, value) for value in values]
    message = _error(http.post("/v2/models/tensors/infer", content=content, headers=repeated), 400)
    assert message.startswith(f"invalid inputs: {HEADER_LENGTH} is given twice"), message
    same = [(HEADER_LENGTH, length), (HEADER_LENGTH, length)]
    answer = http.post("/v2/models/tensors/infer", content=content, headers=same)
    assert answer.status_code == 200, answer.text


def test_binary_data_without_the_header(http: httpx.Client) -> None:
    content, _ = _binary_x(12, bytes(12))
    message = _error(http.post("/v2/models/tensors/infer", content=content[:-12]), 400)
    assert "no Inference-Header-Content-Length" in message


def test_bytes_elements_with_a_wrong_length_prefix(http: httpx.Client) -> None:
    def post(payload: bytes, shape: list[int]) -> str:
        header = {
            "inputs": [
                {
                    "name": "text",
                    "shape": shape,
                    "datatype": "BYTES",
                    "parameters": {"binary_data_size": len(payload)},
                }
            ]
        }
        content, headers = _binary_request(header, payload)
        response = http.post("/v2/models/shout/infer", content=content, headers=headers)
        return _error(response, 400)

    assert "past the end" in post(struct.pack("<I", 10) + b"short", [1])
    assert "holds 2 BYTES elements, each at least 4 bytes" in post(
        struct.pack("<I", 2) + b"ok", [2]
    )
    assert "left after the 1" in post(struct.pack("<I", 2) + b"ok" + b"!", [1])
    assert "not UTF-8" in post(struct.pack("<I", 2) + b"\xff\xfe", [1])


def test_bool_bytes_must_be_zero_or_one(http: httpx.Client) -> None:
    header = _tensors_request(_x_input(data=[1, 2, 3]))
    header["inputs"][3] = {
        "name": "b",
        "shape": [1, 1],
        "datatype": "BOOL",
        "parameters": {"binary_data_size": 1},
    }
    content, headers = _binary_request(header, b"\x02")
    message = _error(http.post("/v2/models/tensors/infer", content=content, headers=headers), 400)
    assert "BOOL bytes must be 0 or 1" in message


def test_compressed_bodies(http: httpx.Client) -> None:
    body = json.dumps(_tensors_request(_x_input(data=[1, 2, 3]))).encode()
    zipped = http.post(
        "/v2/models/tensors/infer",
        content=gzip.compress(body),
        headers={"Content-Encoding": "gzip"},
    )
    assert zipped.status_code == 200, zipped.text
    unknown = http.post(
        "/v2/models/tensors/infer", content=body, headers={"Content-Encoding": "br"}
    )
    assert "Content-Encoding 'br'" in _error(unknown, 415)
    broken = http.post(
        "/v2/models/tensors/infer", content=b"not gzip", headers={"Content-Encoding": "gzip"}
    )
    assert "not valid gzip" in _error(broken, 400)


def test_large_answers_are_compressed_when_the_client_accepts_it(http: httpx.Client) -> None:
    texts = ["word " * 100] * 8
    body = {"inputs": [{"name": "text", "shape": [8], "datatype": "BYTES", "data": texts}]}
    for accepted, expected in (("gzip", "gzip"), ("deflate", "deflate"), ("gzip;q=0", None)):
        response = http.post(
            "/v2/models/shout/infer", json=body, headers={"Accept-Encoding": accepted}
        )
        assert response.status_code == 200
        assert response.headers.get("content-encoding") == expected
        assert response.json()["outputs"][0]["data"][0] == "WORD " * 100


def test_reserved_parameters_are_checked(http: httpx.Client) -> None:
    body = _tensors_request(_x_input(data=[1, 2, 3]))
    body["parameters"] = {"sequence_id": 4}
    assert "sequence" in _error(http.post("/v2/models/tensors/infer", json=body), 400)
    body["parameters"] = {"timeout": -1}
    assert "timeout" in _error(http.post("/v2/models/tensors/infer", json=body), 400)
    body["parameters"] = {"binary_data_output": "yes"}
    assert "binary_data_output" in _error(http.post("/v2/models/tensors/infer", json=body), 400)


def test_not_ready_is_503_and_readiness_follows(tmp_path: Path) -> None:
    app = loadonce.create_app(v2_specs(tmp_path)[:1])
    with ThreadedServer(app) as running, httpx.Client(base_url=running.url) as http:
        assert http.get("/v2/health/ready").json() == {"ready": True}
        assert http.post("/v2/repository/models/tensors/unload").status_code == 200
        message = _error(http.get("/v2/models/tensors/ready"), 503)
        assert "not ready" in message
        # Declared, not serving now: one answer on each of its routes (README: Triton's 404
        # for an unloaded model's metadata is not followed).
        for path in ("/v2/models/tensors", "/v2/models/tensors/config"):
            assert "state: unloaded" in _error(http.get(path), 503)
        valid = _tensors_request(_x_input(data=[1, 2, 3]))
        refused = http.post("/v2/models/tensors/infer", json=valid)
        assert "not ready" in _error(refused, 503)
        assert "retry-after" not in refused.headers  # unloaded until an operator acts
        # Its only model unloaded: nothing is left to serve, so the server is not ready.
        assert "no model is loaded" in _error(http.get("/v2/health/ready"), 503)
        assert http.get("/v2/health/live").json() == {"live": True}
        index = http.post("/v2/repository/index", json={"ready": True})
        assert index.json() == []
        assert http.post("/v2/repository/models/tensors/load", content=b"").status_code == 200
        assert http.get("/v2/health/ready").status_code == 200
        message = _error(http.post("/v2/repository/models/x/load"), 404)
        # A load says so as Triton does: "failed to load".
        assert message.startswith("failed to load 'x': no model of that name is declared")
        bad = http.post("/v2/repository/index", json={"ready": "yes"})
        assert "ready" in _error(bad, 400)


def test_a_model_that_raises_is_a_500_without_internals(tmp_path: Path) -> None:
    def explode(batch: Any) -> list[Any]:
        raise KeyError("secret internal detail /srv/model/weights.bin")

    spec = loadonce.ModelSpec(name="explodes", loader=lambda: explode)
    with ThreadedServer(loadonce.create_app([spec])) as running:
        body = {"inputs": [{"name": "any", "shape": [1], "datatype": "INT32", "data": [1]}]}
        response = httpx.post(f"{running.url}/v2/models/explodes/infer", json=body)
        message = _error(response, 500)
        assert "KeyError" in message
        assert "secret" not in message
        assert response.headers["x-request-id"] in message


def test_openapi_documents_the_protocol(http: httpx.Client) -> None:
    paths = http.get("/openapi.json").json()["paths"]
    for model in ("/v2/models/{model_name}", "/v2/models/{model_name}/versions/{model_version}"):
        for suffix, method in (("", "get"), ("/ready", "get"), ("/infer", "post")):
            assert method in paths[model + suffix]
    infer = paths["/v2/models/{model_name}/infer"]["post"]
    assert set(infer["requestBody"]["content"]) == {"application/json", "application/octet-stream"}
    assert {p["name"] for p in infer["parameters"]} == {
        "model_name",
        HEADER_LENGTH,
        "X-Request-Timeout",
    }
    assert infer["responses"]["400"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "V2Error"
    )
    for path in ("/v2", "/v2/health/live", "/v2/health/ready", "/v2/repository/index"):
        assert path in paths
    assert not any("{rest" in path for path in paths), "the catch-all stays out of the docs"
