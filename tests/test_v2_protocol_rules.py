"""The Open Inference Protocol's general rules (issue 19, item 3): unknown members of every
request object are accepted, known ones of the wrong type refused; ``GET /v2/`` answers;
every error body, 404 and 405 included, is ``{"error"}``; a loader's model describes the
outputs its warm-up answered."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

import loadonce
from loadonce.runtimes import Predictor, TensorInfo


def _double(batch: list[float]) -> list[float]:
    return [2 * x for x in batch]


def _label_and_scores(batch: list[float]) -> list[dict[str, Any]]:
    return [{"label": "big" if x > 1 else "small", "scores": [x, -x]} for x in batch]


SPECS = [
    loadonce.ModelSpec(name="double", loader=lambda: _double, warmup=[1.0]),
    loadonce.ModelSpec(name="labels", loader=lambda: _label_and_scores, warmup=[0.5, 2.0]),
    loadonce.ModelSpec(name="unwarmed", loader=lambda: _double),
]


@pytest.fixture(scope="module")
def http() -> Iterator[TestClient]:
    with TestClient(loadonce.create_app(SPECS)) as client:
        yield client


def _error(response: Any, status: int, keys: frozenset[str] = frozenset({"error"})) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == keys, body
    message: str = body["error"]
    assert "Traceback" not in message
    return message


JSON_KEYS = frozenset({"error", "request_id"})


def _infer_body(**members: Any) -> dict[str, Any]:
    tensor = {"name": "input", "shape": [2], "datatype": "FP64", "data": [1, 2]}
    return {"inputs": [{**tensor, **members.pop("tensor", {})}], **members}


# --- unknown members are accepted on every request object -----------------------------------


def test_the_inference_request_as_kserves_sdk_sends_it(http: TestClient) -> None:
    body = _infer_body(model_name="double", model_version="1", anything={"nested": [1]})
    answer = http.post("/v2/models/double/infer", json=body)
    assert answer.status_code == 200, answer.text
    assert answer.json()["outputs"][0]["data"] == [2.0, 4.0]


def test_unknown_members_of_an_input_and_a_requested_output(http: TestClient) -> None:
    body = _infer_body(
        tensor={"shard": 3, "comment": "from a newer client"},
        outputs=[{"name": "output", "parameters": {"binary_data": False}, "priority": 1}],
    )
    answer = http.post("/v2/models/double/infer", json=body)
    assert answer.status_code == 200, answer.text
    assert [o["name"] for o in answer.json()["outputs"]] == ["output"]


def test_unknown_members_of_the_repository_bodies(http: TestClient) -> None:
    index = http.post("/v2/repository/index", json={"ready": True, "repository_name": "r"})
    assert index.status_code == 200, index.text
    assert {m["name"] for m in index.json()} == {"double", "labels", "unwarmed"}
    for action in ("unload", "load"):
        body = {"parameters": {"unload_dependents": False}, "model_version": "1"}
        answer = http.post(f"/v2/repository/models/unwarmed/{action}", json=body)
        assert answer.status_code == 200, answer.text


INFER = "/v2/models/double/infer"


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        (INFER, _infer_body(model_name="double", id=7), "body.id"),
        (INFER, _infer_body(model_name="double", parameters=[1]), "body.parameters"),
        (INFER, _infer_body(tensor={"x": 1, "shape": "2"}), "body.inputs.0.shape"),
        (INFER, _infer_body(tensor={"x": 1, "name": 1}), "body.inputs.0.name"),
        (INFER, _infer_body(outputs=[{"name": 5, "x": 1}]), "body.outputs.0.name"),
        ("/v2/repository/index", {"ready": "yes", "x": 1}, "body.ready"),
        ("/v2/repository/models/unwarmed/load", {"parameters": "x", "x": 1}, "body.parameters"),
        ("/v2/repository/models/unwarmed/unload", {"parameters": 1, "x": 1}, "body.parameters"),
        # The extension's one unload parameter is a boolean ("yes" was taken).
        (
            "/v2/repository/models/unwarmed/unload",
            {"parameters": {"unload_dependents": "yes"}, "x": 1},
            "body.parameters.unload_dependents",
        ),
    ],
)
def test_known_members_of_the_wrong_type_are_still_refused(
    http: TestClient, path: str, body: dict[str, Any], field: str
) -> None:
    """Each body also holds an unknown member: only the wrong type is named."""
    message = _error(http.post(path, json=body), 400)
    assert field in message
    assert "extra" not in message.lower()


# --- a parameter's value is a string, a number or a boolean ------------------------------------

_NOT_SCALARS = [({"nested": 1}, "an object"), ([1], "an array"), (None, "null")]
# Every parameters map a client sends, with one entry of the value given.
_PARAMETER_PLACES = [
    (INFER, lambda v: _infer_body(parameters={"x": v}), "body.parameters.x"),
    (INFER, lambda v: _infer_body(tensor={"parameters": {"x": v}}), "body.inputs.0.parameters.x"),
    (
        INFER,
        lambda v: _infer_body(outputs=[{"name": "output", "parameters": {"x": v}}]),
        "body.outputs.0.parameters.x",
    ),
    ("/v2/repository/models/unwarmed/load", lambda v: {"parameters": {"x": v}}, "parameters.x"),
    ("/v2/repository/models/unwarmed/unload", lambda v: {"parameters": {"x": v}}, "parameters.x"),
]


@pytest.mark.parametrize(("value", "kind"), _NOT_SCALARS)
@pytest.mark.parametrize(("path", "body", "field"), _PARAMETER_PLACES)
def test_a_parameter_that_is_not_a_string_number_or_boolean_is_refused(
    http: TestClient, path: str, body: Any, field: str, value: Any, kind: str
) -> None:
    """As the protocol's parameters are typed (gRPC's InferParameter holds nothing else),
    and as Triton and KServe refuse them: they were taken, and reached the model or were
    dropped unsaid."""
    message = _error(http.post(path, json=body(value)), 400)
    assert field in message
    assert f"a parameter must be a string, a number or a boolean; got {kind}" in message


@pytest.mark.parametrize("value", ["text", 7, -(2**63), 2**64 - 1, 1.5, True, False])
def test_a_parameter_of_each_of_the_protocols_types_is_taken(http: TestClient, value: Any) -> None:
    body = _infer_body(
        parameters={"x": value},
        tensor={"parameters": {"x": value}},
        outputs=[{"name": "output", "parameters": {"x": value}}],
    )
    answer = http.post(INFER, json=body)
    assert answer.status_code == 200, answer.text
    assert answer.json()["outputs"][0]["data"] == [2.0, 4.0]


_LOAD = "/v2/repository/models/unwarmed/load"
_UNLOAD = "/v2/repository/models/unwarmed/unload"


@pytest.mark.parametrize(
    ("path", "body", "named"),
    [
        # A file: parameter a filter reading the first "parameters" refuses, loaded here as
        # a plain load of what was declared.
        (_LOAD, b'{"parameters": {"file:1/model.onnx": "AAAA"}, "parameters": {}}', "parameters"),
        (
            _LOAD,
            b'{"parameters": {"config": "{\\"max_batch_size\\": 8}", "config": "{}"}}',
            "config",
        ),
        (_LOAD, b'{"parameters": {}, "paramet\\u0065rs": {"config": "{}"}}', "parameters"),
        (_UNLOAD, b'{"parameters": {"unload_dependents": true, "unload_dependents": 1}}', "unload"),
        ("/v2/repository/index", b'{"ready": true, "ready": false}', "ready"),
        # Inside the config parameter's own JSON, at any depth.
        (
            _LOAD,
            b'{"parameters": {"config": "{\\"max_batch_size\\": 8, \\"max_batch_size\\": 0}"}}',
            "max_batch_size",
        ),
        (
            _LOAD,
            b'{"parameters": {"config": "{\\"dynamic_batching\\": '
            b'{\\"max_queue_delay_microseconds\\": 1, \\"max_queue_delay_microseconds\\": 2}}"}}',
            "max_queue_delay_microseconds",
        ),
    ],
)
def test_a_key_given_twice_in_a_repository_body_is_refused_naming_it(
    http: TestClient, path: str, body: bytes, named: str
) -> None:
    """Readers differ on which of two keys counts (RapidJSON and many filters read the first,
    this server the last): a control request must not mean two things. The model is not
    touched."""
    loads = http.app.state.loadonce.registry.get("unwarmed")  # type: ignore[attr-defined]
    before = loads.load_count
    message = _error(http.post(path, content=body), 400)
    assert "more than once" in message, message
    assert named in message, message
    assert loads.load_count == before


_IN_SHARED_MEMORY = {"shared_memory_region": "r", "shared_memory_byte_size": 16}


@pytest.mark.parametrize(
    ("body", "named"),
    [
        (_infer_body(tensor={"data": None, "parameters": _IN_SHARED_MEMORY}), "input 'input'"),
        (
            _infer_body(outputs=[{"name": "output", "parameters": _IN_SHARED_MEMORY}]),
            "output 'output'",
        ),
    ],
)
def test_tensors_in_shared_memory_are_refused_by_name(
    http: TestClient, body: dict[str, Any], named: str
) -> None:
    """An input's region was refused as "has no data"; an output's was ignored (the client's
    buffer never written, the data in the answer)."""
    message = _error(http.post(INFER, json=body), 400)
    assert message.startswith(f"{named} has parameters.shared_memory_region")
    assert "shared memory is not supported by this server" in message


# --- GET /v2/ ----------------------------------------------------------------------------------


def test_server_metadata_with_a_trailing_slash(http: TestClient) -> None:
    slash = http.get("/v2/")
    assert slash.status_code == 200, slash.text
    assert slash.json() == http.get("/v2").json()
    assert slash.json()["name"] == "loadonce"


# --- every error body is {"error"} -------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("DELETE", "/v2", "GET, HEAD"),
        ("POST", "/v2/", "GET, HEAD"),
        ("TRACE", "/v2/health/ready", "GET, HEAD"),
        ("TRACE", "/v2/models/double/infer", "POST"),
    ],
)
def test_a_wrong_method_under_v2(http: TestClient, method: str, path: str, allowed: str) -> None:
    answer = http.request(method, path)
    assert f"use {allowed}" in _error(answer, 405)
    assert answer.headers["allow"] == allowed
    assert answer.headers["x-request-id"]


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("TRACE", "/livez", "GET, HEAD"),
        ("POST", "/readyz", "GET, HEAD"),
        ("GET", "/models/double/predict", "POST"),
        ("POST", "/metrics", "GET, HEAD"),
        ("TRACE", "/openapi.json", "GET, HEAD"),
        ("PUT", "/docs", "GET, HEAD"),
    ],
)
def test_a_wrong_method_elsewhere_keeps_the_request_id(
    http: TestClient, method: str, path: str, allowed: str
) -> None:
    answer = http.request(method, path, headers={"X-Request-ID": "wrong-method-1"})
    message = _error(answer, 405, JSON_KEYS)
    assert message == f"{method} is not allowed here; use {allowed}"
    assert answer.json()["request_id"] == "wrong-method-1"
    assert answer.headers["allow"] == allowed


@pytest.mark.parametrize("method", ["GET", "POST", "TRACE"])
def test_unknown_paths(http: TestClient, method: str) -> None:
    outside = http.request(method, "/no/such/thing", headers={"X-Request-ID": "lost-1"})
    assert _error(outside, 404, JSON_KEYS) == f"no such endpoint: {method} '/no/such/thing'"
    assert outside.json()["request_id"] == "lost-1"
    inside = http.request(method, "/v2/no/such/thing")
    assert _error(inside, 404) == f"no such endpoint: {method} '/v2/no/such/thing'"


@pytest.mark.parametrize("root", ["", "/v2", "/v1", "/models/m", "/admin"])
def test_an_unknown_paths_answer_quotes_it_cut_and_escaped(http: TestClient, root: str) -> None:
    """The path is the client's: a 30 KB one was answered whole (and a control character in
    it raw, on /v2), 30 KB of answer per request."""
    path = f"{root}/x%0Ay" + "z" * 30_000
    answer = http.get(path)
    assert answer.status_code == 404
    assert len(answer.content) < 500, len(answer.content)
    error = answer.json()["error"]
    message = error["message"] if isinstance(error, dict) else error  # OpenAI's, on /v1
    assert f"'{root}/x\\x0ay" in message, message
    assert "\n" not in message


def test_an_unknown_model_is_said_in_tritons_words(http: TestClient) -> None:
    message = _error(http.post("/v2/models/nope/infer", json=_infer_body()), 404)
    assert message.startswith("Request for unknown model: 'nope' is not served here")


# --- a loader's model lists the outputs it answers ------------------------------------------


def test_a_functions_output_is_described_by_its_warm_up(http: TestClient) -> None:
    metadata = http.get("/v2/models/double").json()
    assert metadata["outputs"] == [{"name": "output", "datatype": "FP64", "shape": [-1]}]
    answer = http.post("/v2/models/double/infer", json=_infer_body()).json()
    described = metadata["outputs"][0]
    [output] = answer["outputs"]
    assert (output["name"], output["datatype"]) == (described["name"], described["datatype"])


def test_without_a_warm_up_the_first_answer_describes_the_outputs() -> None:
    app = loadonce.create_app([loadonce.ModelSpec(name="unwarmed", loader=lambda: _double)])
    described = [{"name": "output", "datatype": "FP64", "shape": [-1]}]
    with TestClient(app) as http:
        # Before any answer nothing is known of the outputs, and nothing is claimed.
        assert http.get("/v2/models/unwarmed").json()["outputs"] == []
        answer = http.post("/v2/models/unwarmed/infer", json=_infer_body())
        assert answer.status_code == 200, answer.text
        assert http.get("/v2/models/unwarmed").json()["outputs"] == described
        [output] = http.get("/v2/models/unwarmed/config").json()["output"]
        assert (output["name"], output["data_type"]) == ("output", "TYPE_FP64")
        # A reload may answer otherwise: known again from its own first answer.
        assert http.post("/v2/repository/models/unwarmed/load", json={}).status_code == 200
        assert http.get("/v2/models/unwarmed").json()["outputs"] == []


class _Declares(Predictor):
    """Declares its outputs' datatypes and answers Python numbers (float and int, 64-bit)."""

    inputs = (TensorInfo(name="x", dtype="float64", shape=(None,)),)
    outputs = (
        TensorInfo(name="half", dtype="float32", shape=(None,)),
        TensorInfo(name="hundreds", dtype="int8", shape=(None,)),
    )

    def predict(self, batch: Any) -> list[Any]:
        return [{"half": float(x) / 2, "hundreds": int(x) * 100} for x in batch]


def test_outputs_travel_in_their_declared_datatypes() -> None:
    app = loadonce.create_app([loadonce.ModelSpec(name="declares", loader=_Declares)])
    body = {"inputs": [{"name": "x", "shape": [2], "datatype": "FP64", "data": [1, 0.5]}]}
    with TestClient(app) as http:
        metadata = http.get("/v2/models/declares").json()["outputs"]
        assert [(o["name"], o["datatype"]) for o in metadata] == [
            ("half", "FP32"),
            ("hundreds", "INT8"),
        ]
        answer = http.post("/v2/models/declares/infer", json=body)
        assert answer.status_code == 200, answer.text
        outputs = {o["name"]: o for o in answer.json()["outputs"]}
        assert (outputs["half"]["datatype"], outputs["half"]["data"]) == ("FP32", [0.5, 0.25])
        assert (outputs["hundreds"]["datatype"], outputs["hundreds"]["data"]) == ("INT8", [100, 0])
        binary = {**body, "parameters": {"binary_data_output": True}}
        raw = http.post("/v2/models/declares/infer", json=binary)
        sizes = {
            o["name"]: o["parameters"]["binary_data_size"]
            for o in json.loads(raw.content[: int(raw.headers["inference-header-content-length"])])[
                "outputs"
            ]
        }
        assert sizes == {"half": 2 * 4, "hundreds": 2 * 1}
        # 200 does not fit INT8: the model broke its own declaration; nothing is sent wrapped.
        body["inputs"][0]["data"] = [2, 1]
        message = _error(http.post("/v2/models/declares/infer", json=body), 500)
        assert "Traceback" not in message


@pytest.mark.parametrize("path", ["/v2", "/v2/health/live", "/v2/models/double", "/readyz"])
def test_head_answers_wherever_get_does(http: TestClient, path: str) -> None:
    get = http.get(path)
    head = http.head(path)
    assert (head.status_code, head.content) == (get.status_code, b"")
    assert head.headers["content-length"] == get.headers["content-length"]
    assert head.headers["content-type"] == get.headers["content-type"]


def test_objects_are_described_one_output_per_key(http: TestClient) -> None:
    assert http.get("/v2/models/labels").json()["outputs"] == [
        {"name": "label", "datatype": "BYTES", "shape": [-1]},
        {"name": "scores", "datatype": "FP64", "shape": [-1, 2]},
    ]
    answer = http.post("/v2/models/labels/infer", json=_infer_body()).json()
    assert [(o["name"], o["datatype"]) for o in answer["outputs"]] == [
        ("label", "BYTES"),
        ("scores", "FP64"),
    ]


def test_an_objects_keys_that_are_not_text_name_its_tensors() -> None:
    # {0: p0, 1: p1} per example: the tensors were named "0" and "1", then looked up by
    # that text in the example (a 500: "the model's outputs differ between examples").
    spec = loadonce.ModelSpec(
        name="classes", loader=lambda: lambda batch: [{0: 0.25, 1: 0.75} for _ in batch]
    )
    with TestClient(loadonce.create_app([spec])) as http:
        answer = http.post("/v2/models/classes/infer", json=_infer_body())
        assert answer.status_code == 200, answer.text
        tensors = {t["name"]: t["data"] for t in answer.json()["outputs"]}
        assert tensors == {"0": [0.25, 0.25], "1": [0.75, 0.75]}  # two examples


@pytest.mark.parametrize("value", [5, True, "label"])
def test_a_parameter_named_outputs_is_not_loadonces_selection(value: Any, tmp_path: Path) -> None:
    # loadonce's own name for the outputs a request asks for: as a client's parameter it
    # reached a classifier's predictor (5: a 500; "label": outputs 'l', 'a', 'b'...).
    import skops.io
    from sklearn.linear_model import LogisticRegression

    artifact = tmp_path / "classifier.skops"
    skops.io.dump(LogisticRegression().fit([[0.0], [1.0]], [0, 1]), artifact)
    spec = loadonce.ModelSpec(name="classifier", artifact=artifact)
    body = {
        "inputs": [{"name": "input", "shape": [1, 1], "datatype": "FP64", "data": [0.9]}],
        "parameters": {"outputs": value},
    }
    with TestClient(loadonce.create_app([spec])) as http:
        answer = http.post("/v2/models/classifier/infer", json=body)
        assert answer.status_code == 200, answer.text
        names = [t["name"] for t in answer.json()["outputs"]]
        assert "label" in names


def test_an_output_of_text_and_numbers_is_one_json_document_per_example() -> None:
    # NumPy made text of everything beside a string: ("setosa", 0.5, True) was sent as the
    # strings "setosa", "0.5", "True".
    spec = loadonce.ModelSpec(
        name="mixed", loader=lambda: lambda batch: [("setosa", 0.5, True) for _ in batch]
    )
    with TestClient(loadonce.create_app([spec])) as http:
        answer = http.post("/v2/models/mixed/infer", json=_infer_body())
        assert answer.status_code == 200, answer.text
        [output] = answer.json()["outputs"]
        assert output["datatype"] == "BYTES"
        assert [json.loads(document) for document in output["data"]] == [["setosa", 0.5, True]] * 2


# --- the classification extension --------------------------------------------------------------


@pytest.fixture(scope="module")
def echo() -> Iterator[TestClient]:
    spec = loadonce.ModelSpec(name="echo", loader=lambda: lambda batch: list(batch))
    with TestClient(loadonce.create_app([spec])) as client:
        yield client


@pytest.mark.parametrize(
    ("datatype", "data", "count", "expected"),
    [
        # Equal values by index; a float as C's %f, as Triton writes it.
        ("FP32", [[0.5, 0.25, 0.5]], 2, [["0.500000:0", "0.500000:2"]]),
        ("FP32", [[1e-7, 0.0]], 1, [["0.000000:0"]]),
        # NaN ranks below every number (NumPy sorts it above: it was the top class).
        ("FP64", [[float("nan"), -1.0]], 2, [["-1.000000:1", "nan:0"]]),
        # An unsigned integer is ranked as it is, never negated into a wrapped value.
        ("UINT64", [[2**64 - 1, 0, 7]], 2, [["18446744073709551615:0", "7:2"]]),
        ("INT8", [[-128, 127], [3, 3]], 5, [["127:1", "-128:0"], ["3:0", "3:1"]]),
        ("BF16", [[0.5, 2.5]], 1, [["2.500000:1"]]),
        # An example of several dimensions: its values indexed row-major.
        ("FP16", [[[1, 9], [4, 2]]], 3, [["9.000000:1", "4.000000:2", "2.000000:3"]]),
        ("FP32", [[]], 2, [[]]),
    ],
)
def test_classification_ranks_each_examples_values(
    echo: TestClient, datatype: str, data: list[Any], count: int, expected: list[list[str]]
) -> None:
    shape = list(np.shape(data))
    body = {
        "inputs": [{"name": "x", "shape": shape, "datatype": datatype, "data": data}],
        "outputs": [{"name": "output", "parameters": {"classification": count}}],
    }
    answer = echo.post(
        "/v2/models/echo/infer",
        content=json.dumps(body),
        headers={"content-type": "application/json"},
    )
    assert answer.status_code == 200, answer.text
    [output] = answer.json()["outputs"]
    assert (output["datatype"], output["shape"]) == ("BYTES", list(np.shape(expected)))
    assert output["data"] == [c for row in expected for c in row]


@pytest.mark.parametrize("count", [0, None])
def test_classification_of_none_is_the_output_itself(echo: TestClient, count: Any) -> None:
    """0 asks for no class, as in Triton (tritonclient sends nothing then)."""
    parameters = {} if count is None else {"classification": count}
    body = {
        "inputs": [{"name": "x", "shape": [1, 2], "datatype": "INT32", "data": [4, 5]}],
        "outputs": [{"name": "output", "parameters": parameters}],
    }
    answer = echo.post("/v2/models/echo/infer", json=body)
    assert answer.status_code == 200, answer.text
    [output] = answer.json()["outputs"]
    assert (output["datatype"], output["data"]) == ("INT32", [4, 5])


@pytest.mark.parametrize(
    ("value", "said"),
    [
        (None, "got null"),
        (True, "got true"),
        (7, "got a number 7"),
        (1.5, "got a number 1.5"),
        ({"a": 1}, "got an object {'a': 1}"),
    ],
)
def test_bytes_data_that_is_not_text_is_said_in_jsons_words(
    echo: TestClient, value: Any, said: str
) -> None:
    """A JSON client was told "got NoneType None", "got dict": Python's names."""
    body = {"inputs": [{"name": "x", "shape": [2], "datatype": "BYTES", "data": ["a", value]}]}
    message = _error(echo.post("/v2/models/echo/infer", json=body), 400)
    assert message.endswith(f"input 'x': BYTES data must be strings; {said}"), message
