"""Tiny models for the Open Inference Protocol tests, built by the tests themselves."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from sklearn.linear_model import LogisticRegression

import loadonce

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
