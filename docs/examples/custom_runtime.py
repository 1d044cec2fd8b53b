"""A runtime of your own: linear models stored as JSON, served like any other artifact."""

import json
from collections.abc import Sequence
from typing import Any

import numpy as np

import loadonce


class LinearPredictor(loadonce.Predictor):
    def __init__(self, weights: list[float], bias: float) -> None:
        self.weights = np.asarray(weights, dtype=np.float64)
        self.bias = bias
        # Declaring the shape of one example buys validation: a wrong shape is a 400.
        self.signature = loadonce.InputSignature(shape=(len(weights),), dtype="float64")

    def predict(self, batch: Any) -> Sequence[Any]:
        # The whole batch at once: a float64 array, one row per example.
        result: Sequence[Any] = batch @ self.weights + self.bias
        return result


class LinearRuntime(loadonce.Runtime):
    name = "linear"
    suffixes = (".linear",)
    default_concurrency = "shared"  # predict only reads NumPy arrays: safe to share

    def load(self, spec: loadonce.ModelSpec) -> loadonce.Predictor:
        assert spec.artifact is not None
        document = json.loads(spec.artifact.read_text())
        return LinearPredictor(document["weights"], document["bias"])


loadonce.register_runtime(LinearRuntime())
