"""ONNX Runtime: served outputs equal the session's own; names, dtypes and shapes enforced."""

from __future__ import annotations

import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx2 as httpx
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import tritonclient.grpc as triton_grpc
import tritonclient.http as triton
from fastapi.testclient import TestClient
from onnx import TensorProto, helper, numpy_helper

import loadonce
from loadonce.protocols.grpc import grpc_lifespan
from tests.servers import ThreadedServer, free_port, serving


def _save(graph: onnx.GraphProto, path: Path) -> Path:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


@pytest.fixture(scope="module")
def classifier(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """probabilities = softmax(x @ W + b), label = argmax: float32 [batch, 4] in."""
    rng = np.random.default_rng(0)
    weights = numpy_helper.from_array(rng.normal(size=(4, 3)).astype(np.float32), "W")
    bias = numpy_helper.from_array(rng.normal(size=(3,)).astype(np.float32), "B")
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "W"], ["xw"]),
            helper.make_node("Add", ["xw", "B"], ["logits"]),
            helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
            helper.make_node("ArgMax", ["probabilities"], ["label"], axis=1, keepdims=0),
        ],
        "classifier",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [
            helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", 3]),
            helper.make_tensor_value_info("label", TensorProto.INT64, ["batch"]),
        ],
        initializer=[weights, bias],
    )
    return _save(graph, tmp_path_factory.mktemp("onnx") / "classifier.onnx")


@pytest.fixture(scope="module")
def two_inputs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """total = float(counts) + offsets: int64 [batch, 2] and float32 [batch, 2] in."""
    graph = helper.make_graph(
        [
            helper.make_node("Cast", ["counts"], ["counts_f"], to=TensorProto.FLOAT),
            helper.make_node("Add", ["counts_f", "offsets"], ["total"]),
        ],
        "two_inputs",
        [
            helper.make_tensor_value_info("counts", TensorProto.INT64, [None, 2]),
            helper.make_tensor_value_info("offsets", TensorProto.FLOAT, [None, 2]),
        ],
        [helper.make_tensor_value_info("total", TensorProto.FLOAT, [None, 2])],
    )
    return _save(graph, tmp_path_factory.mktemp("onnx") / "two_inputs.onnx")


@pytest.fixture
def client(classifier: Path, two_inputs: Path) -> Iterator[TestClient]:
    specs = [
        loadonce.ModelSpec(name="classifier", artifact=classifier),
        loadonce.ModelSpec(name="labels", artifact=classifier, options={"outputs": ["label"]}),
        loadonce.ModelSpec(name="adder", artifact=two_inputs, options={"intra_op_threads": 1}),
    ]
    with TestClient(loadonce.create_app(specs)) as test_client:
        yield test_client


ROWS = [[0.1, -1.2, 3.3, 0.5], [2.0, 0.0, -0.7, 1.1], [5.5, 4.4, -3.3, 2.2]]


def test_outputs_equal_the_sessions_own_run(client: TestClient, classifier: Path) -> None:
    session = ort.InferenceSession(str(classifier), providers=["CPUExecutionProvider"])
    probabilities, labels = session.run(None, {"x": np.asarray(ROWS, dtype=np.float32)})
    response = client.post("/models/classifier/predict", json={"inputs": ROWS})
    assert response.status_code == 200
    assert response.json()["outputs"] == [
        {"probabilities": p.tolist(), "label": int(label)}
        for p, label in zip(probabilities, labels, strict=True)
    ]
    only_labels = client.post("/models/labels/predict", json={"inputs": ROWS}).json()
    assert only_labels["outputs"] == labels.tolist()
    one = client.post("/models/labels/predict", json={"inputs": ROWS[0]}).json()
    assert one["outputs"] == labels[:1].tolist()
    # Outputs picked by name: the several-output model's objects are narrowed, the one-output
    # model's values named.
    picked = client.post(
        "/models/classifier/predict", json={"inputs": ROWS, "outputs": ["label"]}
    ).json()["outputs"]
    assert picked == [{"label": int(label)} for label in labels]
    named = client.post(
        "/models/labels/predict", json={"inputs": ROWS, "outputs": ["label"]}
    ).json()["outputs"]
    assert named == picked


def test_several_inputs_take_an_object_per_example(client: TestClient) -> None:
    examples = [
        {"counts": [1, 2], "offsets": [0.5, 0.25]},
        {"counts": [10, -3], "offsets": [0.0, 1.5]},
    ]
    response = client.post("/models/adder/predict", json={"inputs": examples})
    assert response.status_code == 200
    assert response.json()["outputs"] == [[1.5, 2.25], [10.0, -1.5]]


def test_metadata_comes_from_the_session(client: TestClient) -> None:
    info = client.get("/models/classifier").json()
    assert info["runtime"] == "onnx"
    assert info["concurrency"] == "shared"
    assert info["input_shape"] == [4]
    assert info["input_dtype"] == "float32"
    assert info["inputs"] == [{"name": "x", "dtype": "float32", "shape": [None, 4]}]
    assert info["outputs"] == [
        {"name": "probabilities", "dtype": "float32", "shape": [None, 3]},
        {"name": "label", "dtype": "int64", "shape": [None]},
    ]
    adder = client.get("/models/adder").json()
    assert [t["dtype"] for t in adder["inputs"]] == ["int64", "float32"]


@pytest.mark.parametrize(
    ("model", "inputs", "expected"),
    [
        ("classifier", [[1.0, 2.0, 3.0]], "shape [4]"),
        ("classifier", [["a", "b", "c", "d"]], "numbers"),
        ("adder", [{"counts": [1.5, 2], "offsets": [0, 0]}], "input 'counts'"),
        ("adder", [{"counts": [1, 2], "offsets": [0, 0]}, {"counts": [1, 2]}], "missing input"),
        ("adder", [{"counts": [1, 2], "offsets": [0, 0], "extra": 1}], "unknown input(s) extra"),
        ("adder", [[1, 2]], "one value per input"),
        ("adder", [{"counts": [1, 2, 3], "offsets": [0, 0, 0]}], "shape [2]"),
    ],
)
def test_inputs_that_do_not_fit_are_400_saying_what_was_expected(
    client: TestClient, model: str, inputs: Any, expected: str
) -> None:
    response = client.post(f"/models/{model}/predict", json={"inputs": inputs})
    assert response.status_code == 400
    assert expected in response.json()["error"]


def test_an_unknown_output_name_fails_the_load(classifier: Path) -> None:
    spec = loadonce.ModelSpec(name="c", artifact=classifier, options={"outputs": ["nope"]})
    with pytest.raises(loadonce.ModelLoadError, match="outputs are label, probabilities"):
        TestClient(loadonce.create_app([spec])).__enter__()


def test_a_provider_this_machine_cannot_use_fails_the_load(classifier: Path) -> None:
    """No silent fall back to the CPU: a model asked to run on CUDA where there is none (as
    on the machine the tests run on) does not start."""
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        providers = ["NoSuchExecutionProvider"]  # a GPU machine: a provider nobody has
    else:
        providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    spec = loadonce.ModelSpec(name="c", artifact=classifier, options={"providers": providers})
    with pytest.raises(loadonce.ModelLoadError, match="was asked for, but this onnxruntime"):
        TestClient(loadonce.create_app([spec])).__enter__()


def test_cli_serves_an_onnx_artifact_from_forked_workers(tmp_path: Path, classifier: Path) -> None:
    """Two workers forked after ONNX Runtime was imported (server/worker_start.py) answer."""
    session = ort.InferenceSession(str(classifier), providers=["CPUExecutionProvider"])
    _, labels = session.run(None, {"x": np.asarray(ROWS, dtype=np.float32)})
    with serving([str(classifier), "--workers", "2"], tmp_path) as server:
        answers = [
            httpx.post(f"{server.url}/models/classifier/predict", json={"inputs": ROWS})
            for _ in range(8)
        ]
        pids = {w["pid"] for w in httpx.get(f"{server.url}/models").json()["models"][0]["workers"]}
    assert len(pids) == 2
    for response in answers:
        assert [o["label"] for o in response.json()["outputs"]] == labels.tolist()


def test_a_graph_exported_for_a_fixed_batch_answers_any_number_of_examples(
    tmp_path: Path,
) -> None:
    """``torch.onnx.export`` without ``dynamic_axes`` fixes the batch (here 2): a request of
    any other count was a 500 (ONNX Runtime refused the shape). Calls now run two at a time,
    the last filled up and its extra outputs dropped."""
    rng = np.random.default_rng(1)
    weights = rng.normal(size=(4, 3)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "W"], ["scores"]),
            helper.make_node("ArgMax", ["scores"], ["label"], axis=1, keepdims=0),
        ],
        "fixed",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])],
        [
            helper.make_tensor_value_info("scores", TensorProto.FLOAT, [2, 3]),
            helper.make_tensor_value_info("label", TensorProto.INT64, [2]),
        ],
        initializer=[numpy_helper.from_array(weights, "W")],
    )
    spec = loadonce.ModelSpec(name="fixed", artifact=_save(graph, tmp_path / "fixed.onnx"))
    rows = rng.normal(size=(5, 4)).astype(np.float32)
    with TestClient(loadonce.create_app([spec])) as client:
        for count in (1, 2, 3, 5):
            answer = client.post("/models/fixed/predict", json={"inputs": rows[:count].tolist()})
            assert answer.status_code == 200, answer.text
            outputs = answer.json()["outputs"]
            expected = rows[:count] @ weights
            np.testing.assert_allclose([o["scores"] for o in outputs], expected, rtol=1e-5)
            assert [o["label"] for o in outputs] == expected.argmax(axis=1).tolist()


def test_outputs_without_a_batch_dimension_go_whole_to_every_example(tmp_path: Path) -> None:
    """A constant ([3]) and a scalar (a sum over the batch) beside a batched output: every
    example gets them whole, as the session returns them, on the JSON route and /v2 (each
    was cut into rows, or a 500 with one example); the model is not batched by default (the
    sum would count other requests' rows)."""
    classes = numpy_helper.from_array(np.array([10, 20, 30], np.int64), "classes_value")
    graph = helper.make_graph(
        [
            helper.make_node("Identity", ["x"], ["y"]),
            helper.make_node("Identity", ["classes_value"], ["classes"]),
            helper.make_node("ReduceSum", ["x"], ["total"], keepdims=0),
        ],
        "unbatched_outputs",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 2])],
        [
            helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 2]),
            helper.make_tensor_value_info("classes", TensorProto.INT64, [3]),
            helper.make_tensor_value_info("total", TensorProto.FLOAT, []),
        ],
        initializer=[classes],
    )
    path = _save(graph, tmp_path / "unbatched.onnx")
    rows = np.array([[1, 2], [3, 4], [5, 6]], np.float32)
    session = ort.InferenceSession(path)
    with TestClient(loadonce.create_app([loadonce.ModelSpec(name="m", artifact=path)])) as client:
        assert client.get("/models/m").json()["queue"]["max_batch_size"] == 1
        for count in (1, 3):
            expected_total = float(session.run(["total"], {"x": rows[:count]})[0])
            answer = client.post("/models/m/predict", json={"inputs": rows[:count].tolist()})
            assert answer.status_code == 200, answer.text
            assert answer.json()["outputs"] == [
                {"y": row.tolist(), "classes": [10, 20, 30], "total": expected_total}
                for row in rows[:count]
            ]
            tensor = {"name": "x", "datatype": "FP32", "shape": [count, 2]}
            body = {"inputs": [{**tensor, "data": rows[:count].ravel().tolist()}]}
            infer = client.post("/v2/models/m/infer", json=body)
            assert infer.status_code == 200, infer.text
            outputs = {o["name"]: o for o in infer.json()["outputs"]}
            assert outputs["classes"]["shape"] == [count, 3]
            assert outputs["classes"]["data"] == [10, 20, 30] * count
            assert outputs["total"]["data"] == [expected_total] * count
        described = {o["name"]: o["shape"] for o in client.get("/v2/models/m").json()["outputs"]}
        assert described == {"y": [-1, 2], "classes": [-1, 3], "total": [-1]}


def test_infinities_in_binary_data_are_values(tmp_path: Path) -> None:
    """IEEE infinities sent as binary FP32 data (tritonclient's default) reach the model
    and come back computed, as NaN does (they were refused as "outside the range of
    float32"); so do JSON's Infinity literals, as tritonclient's JSON tensors send them."""
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "x"], ["y"])],
        "double",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])],
    )
    path = _save(graph, tmp_path / "double.onnx")
    sent = np.array([[np.inf, -np.inf, np.nan, 1.5]], np.float32)
    expected = ort.InferenceSession(path).run(["y"], {"x": sent})[0]
    app = loadonce.create_app([loadonce.ModelSpec(name="m", artifact=path)])
    with ThreadedServer(app) as running:
        client = triton.InferenceServerClient(running.url.removeprefix("http://"))
        tensor = triton.InferInput("x", [1, 4], "FP32")
        tensor.set_data_from_numpy(sent, binary_data=True)
        answer = client.infer("m", [tensor]).as_numpy("y")
        np.testing.assert_array_equal(answer, expected)
        as_json = httpx.post(
            f"{running.url}/models/m/predict",
            content=b'{"inputs": [[Infinity, -Infinity, 1, 1]]}',
            headers={"content-type": "application/json"},
        )
        assert as_json.json()["outputs"] == [["Infinity", "-Infinity", 2.0, 2.0]]
        client.close()


def test_a_zipmap_output_is_one_output_of_a_mapping_per_example(tmp_path: Path) -> None:
    """skl2onnx's classifiers end with ZipMap: a sequence of {label: probability}, one per
    example. It is listed in metadata (BYTES) and answered under its own name, each example's
    mapping a JSON document (it was left out of metadata, and alone it was answered as one
    tensor per class label)."""
    graph = helper.make_graph(
        [
            helper.make_node("Softmax", ["x"], ["p"], axis=1),
            helper.make_node(
                "ZipMap", ["p"], ["probs"], domain="ai.onnx.ml", classlabels_strings=["a", "b"]
            ),
        ],
        "zipmap",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 2])],
        [helper.make_tensor_value_info("probs", TensorProto.UNDEFINED, None)],
    )
    sequence = helper.make_sequence_type_proto(
        helper.make_map_type_proto(TensorProto.STRING, helper.make_tensor_type_proto(1, []))
    )
    graph.output[0].type.CopyFrom(sequence)
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("ai.onnx.ml", 3)]
    )
    model.ir_version = 9
    onnx.save(model, tmp_path / "zipmap.onnx")
    rows = [[1.0, 2.0], [0.5, -1.0]]
    [expected] = ort.InferenceSession(tmp_path / "zipmap.onnx").run(
        ["probs"], {"x": np.array(rows, np.float32)}
    )
    spec = loadonce.ModelSpec(name="m", artifact=tmp_path / "zipmap.onnx")
    with TestClient(loadonce.create_app([spec])) as client:
        described = client.get("/v2/models/m").json()["outputs"]
        assert described == [{"name": "probs", "datatype": "BYTES", "shape": [-1]}]
        answer = client.post("/models/m/predict", json={"inputs": rows})
        assert answer.status_code == 200, answer.text
        assert answer.json()["outputs"] == [pytest.approx(row) for row in expected]
        tensor = {"name": "x", "datatype": "FP32", "shape": [2, 2]}
        body = {"inputs": [{**tensor, "data": rows}], "outputs": [{"name": "probs"}]}
        infer = client.post("/v2/models/m/infer", json=body)
        assert infer.status_code == 200, infer.text
        [output] = infer.json()["outputs"]
        assert (output["name"], output["datatype"], output["shape"]) == ("probs", "BYTES", [2])
        assert [json.loads(text) for text in output["data"]] == [
            pytest.approx(row) for row in expected
        ]


@pytest.mark.parametrize(
    ("batch", "declared"), [(["n"], [1, 3]), ([1], [3])], ids=["traced-as-1", "fixed-batch-1"]
)
def test_outputs_a_trace_declared_with_one_row_are_per_example(
    tmp_path: Path, batch: list[Any], declared: list[int]
) -> None:
    """An output declared [1, 3] beside a variable batch (an exporter's trace on one example)
    is computed per row; a graph exported for one example whose output drops the batch
    dimension ([3]) answers each example its own call's value. Each was given whole, or the
    first call's, to every example."""
    weights = numpy_helper.from_array(np.array([[1.0, 2.0, 3.0]], np.float32), "w")
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "w"], ["product"]),
            helper.make_node("Reshape", ["product", "shape"], ["y"]),
        ],
        "per_row",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [*batch, 1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, declared)],
        initializer=[
            weights,
            numpy_helper.from_array(np.array([-1, 3] if len(declared) == 2 else [3]), "shape"),
        ],
    )
    path = tmp_path / "per_row.onnx"
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.save(model, path)
    spec = loadonce.ModelSpec(name="m", artifact=path)
    with TestClient(loadonce.create_app([spec])) as client:
        answer = client.post("/models/m/predict", json={"inputs": [[1.0], [2.0]]})
        assert answer.status_code == 200, answer.text
        assert answer.json()["outputs"] == [[1.0, 2.0, 3.0], [2.0, 4.0, 6.0]]


def _scalar_input_graphs() -> dict[str, onnx.GraphProto]:
    """Graphs with an input declared without any dimension: a scalar alone (squared), and a
    scalar beside a batch ([batch, 3] scaled by it, and its rows' overall sum)."""
    scalar = helper.make_tensor_value_info("t", TensorProto.FLOAT, [])
    alone = helper.make_graph(
        [helper.make_node("Mul", ["t", "t"], ["y"])],
        "scalar_alone",
        [scalar],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [])],
    )
    beside = helper.make_graph(
        [
            helper.make_node("Mul", ["x", "t"], ["y"]),
            helper.make_node("ReduceSum", ["y"], ["total"], keepdims=0),
        ],
        "scalar_beside_a_batch",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3]), scalar],
        [
            helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3]),
            helper.make_tensor_value_info("total", TensorProto.FLOAT, []),
        ],
    )
    return {"alone": alone, "beside": beside}


@pytest.mark.parametrize("batching", [False, True])
@pytest.mark.parametrize("graph", ["alone", "beside"])
def test_a_scalar_input_makes_each_example_its_own_call(
    tmp_path: Path, graph: str, batching: bool
) -> None:
    """An input the graph declares as a scalar (shape []) has no batch dimension: each
    example's value is fed alone, and each example gets its own call's answers, on the JSON
    route and /v2 (whose metadata says [-1]: one value per example). The examples were
    stacked and fed anyway: each got every example's answers (or a 500)."""
    path = _save(_scalar_input_graphs()[graph], tmp_path / f"{graph}.onnx")
    session = ort.InferenceSession(path)
    scalars = [3.0, -0.5]
    rows = np.array([[1, 2, 3], [4, 5, 6]], np.float32)
    examples: list[Any] = []
    expected: list[Any] = []
    for index, value in enumerate(scalars):
        feed = {"t": np.array(value, np.float32)}
        if graph == "beside":
            feed["x"] = rows[index : index + 1]
            y, total = session.run(["y", "total"], feed)
            examples.append({"x": rows[index].tolist(), "t": value})
            expected.append({"y": y[0].tolist(), "total": float(total)})
        else:
            examples.append(value)
            expected.append(float(session.run(["y"], feed)[0]))
    spec = loadonce.ModelSpec(name="m", artifact=path, batching=batching)
    with TestClient(loadonce.create_app([spec])) as client:
        described = client.get("/v2/models/m").json()
        assert {t["name"]: t["shape"] for t in described["inputs"]}["t"] == [-1]
        answer = client.post("/models/m/predict", json={"inputs": examples})
        assert answer.status_code == 200, answer.text
        assert answer.json()["outputs"] == expected
        tensors = [{"name": "t", "datatype": "FP32", "shape": [2], "data": scalars}]
        if graph == "beside":
            data = rows.ravel().tolist()
            tensors.append({"name": "x", "datatype": "FP32", "shape": [2, 3], "data": data})
        infer = client.post("/v2/models/m/infer", json={"inputs": tensors})
        assert infer.status_code == 200, infer.text
        outputs = {o["name"]: o["data"] for o in infer.json()["outputs"]}
        if graph == "beside":
            assert outputs["y"] == [v for e in expected for v in e["y"]]
            assert outputs["total"] == [e["total"] for e in expected]
        else:
            assert outputs["y"] == expected


def _graph_with_an_output_of_its_own_kind(kind: str) -> onnx.ModelProto:
    """y = x beside a second output ``extra`` of a kind with no per-example form (a sequence
    of tensors: its length is the graph's, not the batch's; bfloat16: no NumPy type) or with
    one (an optional tensor the graph always gives: that tensor)."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])
    if kind == "sequence":
        node = helper.make_node("SplitToSequence", ["x"], ["extra"], axis=1, keepdims=0)
        extra = helper.make_tensor_sequence_value_info("extra", TensorProto.FLOAT, None)
    elif kind == "bfloat16":
        node = helper.make_node("Cast", ["x"], ["extra"], to=TensorProto.BFLOAT16)
        extra = helper.make_tensor_value_info("extra", TensorProto.BFLOAT16, ["batch", 4])
    else:
        node = helper.make_node("Optional", ["x"], ["extra"])
        tensor = helper.make_tensor_type_proto(TensorProto.FLOAT, ["batch", 4])
        extra = helper.make_value_info("extra", helper.make_optional_type_proto(tensor))
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])
    graph = helper.make_graph(
        [node, helper.make_node("Identity", ["x"], ["y"])], kind, [x], [extra, y]
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    return model


@pytest.mark.parametrize("kind", ["sequence", "bfloat16"])
def test_an_output_with_no_per_example_form_fails_the_load_naming_it(
    tmp_path: Path, kind: str
) -> None:
    """A sequence-of-tensors output (its length the graph's, not the batch's) and a bfloat16
    one (ONNX Runtime has no NumPy type for it) loaded, were left out of /v2 metadata, and
    failed every request with a 500. The load fails naming the output and its type, and
    how to leave it out; left out, the model serves its other outputs."""
    path = tmp_path / f"{kind}.onnx"
    onnx.save(_graph_with_an_output_of_its_own_kind(kind), path)
    with (
        pytest.raises(
            loadonce.ModelLoadError,
            match=r"extra \((seq\(tensor\(float\)\)|tensor\(bfloat16\))\).*"
            r"options.outputs = \['y'\]",
        ),
        TestClient(loadonce.create_app([loadonce.ModelSpec(name="m", artifact=path)])),
    ):
        pass
    spec = loadonce.ModelSpec(name="m", artifact=path, options={"outputs": ["y"]})
    with TestClient(loadonce.create_app([spec])) as client:
        answer = client.post("/models/m/predict", json={"inputs": [ROWS[0]]})
        assert answer.json()["outputs"] == [pytest.approx(ROWS[0])]


def test_an_optional_tensor_output_is_described_as_the_tensor_it_answers(tmp_path: Path) -> None:
    """An optional(tensor(float)) output was answered by /v2 infer (FP32) but left out of
    /v2 metadata (no dtype): metadata now lists what infer answers."""
    path = tmp_path / "optional.onnx"
    onnx.save(_graph_with_an_output_of_its_own_kind("optional"), path)
    with TestClient(loadonce.create_app([loadonce.ModelSpec(name="m", artifact=path)])) as client:
        described = client.get("/v2/models/m").json()["outputs"]
        assert described == [
            {"name": "extra", "datatype": "FP32", "shape": [-1, 4]},
            {"name": "y", "datatype": "FP32", "shape": [-1, 4]},
        ]
        tensor = {"name": "x", "datatype": "FP32", "shape": [1, 4], "data": ROWS[0]}
        infer = client.post("/v2/models/m/infer", json={"inputs": [tensor]})
        answered = [(o["name"], o["datatype"], o["shape"]) for o in infer.json()["outputs"]]
        assert answered == [(t["name"], t["datatype"], [1, 4]) for t in described]


def _graph_with_an_optional_input() -> onnx.ModelProto:
    """y = x + offset where the optional input offset is given, else y = x."""
    row: list[str | int | None] = ["batch", 3]
    tensor = helper.make_tensor_type_proto(TensorProto.FLOAT, row)
    offset = helper.make_value_info("offset", helper.make_optional_type_proto(tensor))
    given = helper.make_graph(
        [
            helper.make_node("OptionalGetElement", ["offset"], ["value"]),
            helper.make_node("Add", ["x", "value"], ["sum"]),
        ],
        "given",
        [],
        [helper.make_tensor_value_info("sum", TensorProto.FLOAT, row)],
    )
    absent = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["same"])],
        "absent",
        [],
        [helper.make_tensor_value_info("same", TensorProto.FLOAT, row)],
    )
    graph = helper.make_graph(
        [
            helper.make_node("OptionalHasElement", ["offset"], ["has"]),
            helper.make_node("If", ["has"], ["y"], then_branch=given, else_branch=absent),
        ],
        "optional_input",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, row), offset],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, row)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    return model


@pytest.mark.parametrize("route", ["json", "v2"])
def test_an_optional_input_may_be_left_out(tmp_path: Path, route: str) -> None:
    """An optional(tensor) input was served as required: every request that left it out
    (as the graph allows, and ONNX Runtime runs) was refused as missing it. Left out of a
    request, the graph now runs without it; given, it is used; given by some examples of a
    request only, it is a 400 naming it. Requests batched together that differ in it are run
    each on its own (merged, the first request's inputs decided for all)."""
    path = tmp_path / "optional_input.onnx"
    onnx.save(_graph_with_an_optional_input(), path)
    session = ort.InferenceSession(str(path))
    x = np.array([[1, 2, 3], [4, 5, 6]], dtype=np.float32)
    offset = np.full((2, 3), 10, dtype=np.float32)
    batching = loadonce.Batching(max_batch_size=8, max_wait_ms=200)
    spec = loadonce.ModelSpec(name="opt", artifact=path, batching=batching)

    def ask(client: TestClient, **inputs: np.ndarray) -> httpx.Response:
        if route == "json":
            rows = [{k: v[i].tolist() for k, v in inputs.items()} for i in range(len(x))]
            return client.post("/models/opt/predict", json={"inputs": rows})
        tensors = [
            {"name": k, "datatype": "FP32", "shape": list(v.shape), "data": v.ravel().tolist()}
            for k, v in inputs.items()
        ]
        return client.post("/v2/models/opt/infer", json={"inputs": tensors})

    def answer(response: httpx.Response) -> Any:
        assert response.status_code == 200, response.text
        body = response.json()
        if route == "json":
            return body["outputs"]
        [output] = body["outputs"]
        return np.reshape(output["data"], output["shape"]).tolist()

    with TestClient(loadonce.create_app([spec])) as client:
        without = session.run(None, {"x": x})[0].tolist()
        with_offset = session.run(None, {"x": x, "offset": offset})[0].tolist()
        assert answer(ask(client, x=x)) == without
        assert answer(ask(client, x=x, offset=offset)) == with_offset
        if route == "json":
            rows = [{"x": x[0].tolist(), "offset": offset[0].tolist()}, {"x": x[1].tolist()}]
            refused = client.post("/models/opt/predict", json={"inputs": rows})
            assert refused.status_code == 400
            assert "offset" in refused.json()["error"]
        # Concurrent requests, one with the optional input and one without, batched.
        with ThreadPoolExecutor(4) as pool:
            futures = [pool.submit(ask, client, x=x), pool.submit(ask, client, x=x, offset=offset)]
            assert [answer(f.result()) for f in futures] == [without, with_offset]


def test_an_optional_input_is_marked_optional_in_the_configuration(tmp_path: Path) -> None:
    """Triton's configuration marks an input a request may leave out (``optional``); it was
    described as every other input, so a client that sizes its requests by the
    configuration always sent it. Over REST and gRPC (tritonclient's get_model_config)."""
    path = tmp_path / "optional_input.onnx"
    onnx.save(_graph_with_an_optional_input(), path)
    spec = loadonce.ModelSpec(name="opt", artifact=path)
    port = free_port()
    app = loadonce.create_app([spec], wrap=grpc_lifespan(port=port))
    with ThreadedServer(app) as server:
        rest = httpx.get(f"{server.url}/v2/models/opt/config").json()
        marked = {i["name"]: i.get("optional", False) for i in rest["input"]}
        assert marked == {"x": False, "offset": True}
        client = triton_grpc.InferenceServerClient(f"127.0.0.1:{port}")
        try:
            config = client.get_model_config("opt").config
        finally:
            client.close()
        assert {i.name: i.optional for i in config.input} == {"x": False, "offset": True}
