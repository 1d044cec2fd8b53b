"""Tiny models for the Open Inference Protocol tests, built by the tests themselves."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from sklearn.linear_model import LogisticRegression

import loadonce
from loadonce import Predictor, TensorInfo

IRIS_LIKE = np.array(
    [[5.1, 3.5, 1.4, 0.2], [4.9, 3.0, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3], [6.3, 2.5, 5.0, 1.9]]
)


def build_tensors_onnx(path: Path) -> Path:
    """Four inputs of four datatypes, one output from each:
    x FP32 [-1, 3] -> x_sum FP32 [-1]; h FP16 [-1, 2] -> h_twice FP16 [-1, 2];
    n INT64 [-1, 2] -> n_next INT64 [-1, 2]; b BOOL [-1, 1] -> b_not BOOL [-1, 1]."""
    graph = helper.make_graph(
        [
            helper.make_node("ReduceSum", ["x", "axes"], ["x_sum"], keepdims=0),
            helper.make_node("Add", ["h", "h"], ["h_twice"]),
            helper.make_node("Add", ["n", "one"], ["n_next"]),
            helper.make_node("Not", ["b"], ["b_not"]),
        ],
        "tensors",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3]),
            helper.make_tensor_value_info("h", TensorProto.FLOAT16, ["batch", 2]),
            helper.make_tensor_value_info("n", TensorProto.INT64, ["batch", 2]),
            helper.make_tensor_value_info("b", TensorProto.BOOL, ["batch", 1]),
        ],
        [
            helper.make_tensor_value_info("x_sum", TensorProto.FLOAT, ["batch"]),
            helper.make_tensor_value_info("h_twice", TensorProto.FLOAT16, ["batch", 2]),
            helper.make_tensor_value_info("n_next", TensorProto.INT64, ["batch", 2]),
            helper.make_tensor_value_info("b_not", TensorProto.BOOL, ["batch", 1]),
        ],
        initializer=[
            numpy_helper.from_array(np.array([1], dtype=np.int64), "axes"),
            numpy_helper.from_array(np.array(1, dtype=np.int64), "one"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


def build_iris_skops(path: Path) -> Path:
    import skops.io

    labels = np.array(["setosa", "setosa", "virginica", "virginica"])
    estimator = LogisticRegression(random_state=0).fit(IRIS_LIKE, labels)
    skops.io.dump(estimator, path)
    return path


def v2_specs(directory: Path) -> list[loadonce.ModelSpec]:
    return [
        loadonce.ModelSpec(name="tensors", artifact=build_tensors_onnx(directory / "tensors.onnx")),
        loadonce.ModelSpec(name="iris", artifact=build_iris_skops(directory / "iris.skops")),
        loadonce.ModelSpec(name="shout", loader="tests.loaders:shout", version="3"),
        loadonce.ModelSpec(
            name="scaler",
            loader="tests.loaders:scaler",
            batching=loadonce.Batching(max_batch_size=8, max_wait_ms=100),
        ),
    ]


# --- the models Triton's example programs call, under the names they use --------------------

_PAIR = (
    TensorInfo(name="INPUT0", dtype="int32", shape=(None, 16)),
    TensorInfo(name="INPUT1", dtype="int32", shape=(None, 16)),
)


class Simple(Predictor):
    """Triton's "simple": two INT32 [-1, 16] inputs; OUTPUT0 is their sum, OUTPUT1 their
    difference."""

    inputs = _PAIR
    outputs = (
        TensorInfo(name="OUTPUT0", dtype="int32", shape=(None, 16)),
        TensorInfo(name="OUTPUT1", dtype="int32", shape=(None, 16)),
    )

    def predict(self, batch: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [
            {"OUTPUT0": pair["INPUT0"] + pair["INPUT1"], "OUTPUT1": pair["INPUT0"] - pair["INPUT1"]}
            for pair in batch
        ]


class MissingCount(Predictor):
    """How many of each example's three FP32 values are missing (NaN)."""

    inputs = (TensorInfo(name="values", dtype="float32", shape=(None, 3)),)
    outputs = (TensorInfo(name="missing", dtype="int64", shape=(None,)),)

    def predict(self, batch: Any) -> list[dict[str, Any]]:
        # One input: the batch is its array, the examples stacked.
        return [{"missing": int(count)} for count in np.isnan(np.asarray(batch)).sum(axis=1)]


class SimpleString(Predictor):
    """Triton's "simple_string": "simple" on numbers written as text, BYTES in and out."""

    inputs = tuple(TensorInfo(name=t.name, dtype="object", shape=t.shape) for t in _PAIR)
    outputs = (
        TensorInfo(name="OUTPUT0", dtype="object", shape=(None, 16)),
        TensorInfo(name="OUTPUT1", dtype="object", shape=(None, 16)),
    )

    def predict(self, batch: list[dict[str, Any]]) -> list[dict[str, Any]]:
        answers = []
        for pair in batch:
            left = np.array([int(x) for x in pair["INPUT0"]])
            right = np.array([int(x) for x in pair["INPUT1"]])
            answers.append(
                {
                    "OUTPUT0": [str(x).encode() for x in left + right],
                    "OUTPUT1": [str(x).encode() for x in left - right],
                }
            )
        return answers


class SimpleIdentity(Predictor):
    """Triton's "simple_identity": a BYTES [-1, -1] input answered as it came, OUTPUT0."""

    inputs = (TensorInfo(name="INPUT0", dtype="object", shape=(None, None)),)
    outputs = (TensorInfo(name="OUTPUT0", dtype="object", shape=(None, None)),)

    def predict(self, batch: list[Any]) -> list[Any]:
        return list(batch)


def triton_example_specs(models: int = 7) -> list[loadonce.ModelSpec]:
    """As many models as the repository of Triton's model-control example holds (its HTTP
    program counts seven, its gRPC program eight): simple, simple_string, simple_identity,
    and copies of simple to make up the number."""
    return [
        loadonce.ModelSpec(
            name="simple",
            loader=Simple,
            batching=loadonce.Batching(max_batch_size=8),
            concurrency="pool:2",
        ),
        loadonce.ModelSpec(name="simple_string", loader=SimpleString),
        loadonce.ModelSpec(name="simple_identity", loader=SimpleIdentity),
        *(loadonce.ModelSpec(name=f"simple_copy_{n}", loader=Simple) for n in range(1, models - 2)),
    ]
