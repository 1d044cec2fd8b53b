"""Gradient-boosted trees from their libraries' own files, no pickle: XGBoost (``.json``,
``.ubj``) and LightGBM (``.txt``). These formats hold data only, so nothing in them runs code
when loaded, and a config needs no ``trust``.

A ``.json`` or ``.txt`` file is any program's: each runtime claims one only when its first
bytes are the library's (``{"learner"`` for XGBoost, ``tree`` then ``version=`` for LightGBM).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from loadonce.core.imports import import_optional
from loadonce.core.spec import ModelSpec
from loadonce.runtimes._base import InputSignature, Predictor, Runtime, TensorInfo

_HEAD_BYTES = 64


def _head(path: Path | None) -> bytes:
    if path is None or not path.is_file():
        return b""
    with path.open("rb") as stream:
        return stream.read(_HEAD_BYTES)


def _feature_signature(features: int) -> InputSignature | None:
    # float64 here: requests' numbers convert without loss; the boosters take either.
    return InputSignature(shape=(features,), dtype="float64") if features > 0 else None


class BoosterPredictor(Predictor):
    """One booster's ``predict(rows)``: a score per example (a probability for a binary
    classifier, a value for a regressor), or a row of class probabilities."""

    def __init__(self, booster: Any, features: int, predict: Any) -> None:
        self.booster = booster
        self.signature = _feature_signature(features)
        self._predict = predict

    def predict(self, batch: Any) -> Sequence[Any]:
        result: Sequence[Any] = self._predict(batch)
        return result


def _threads(spec: ModelSpec) -> int | None:
    threads = spec.options.get("threads")
    return None if threads is None else int(threads)


class XGBoostRuntime(Runtime):
    name = "xgboost"
    options = frozenset({"threads"})
    libraries = ("xgboost",)
    suffixes = (".ubj",)
    # inplace_predict is thread-safe (XGBoost's documentation), and runs in C++ without the GIL.
    default_concurrency = "shared"

    def claims(self, spec: ModelSpec) -> bool:
        if spec.artifact is None:
            return False
        suffix = spec.artifact.suffix.lower()
        return suffix == ".ubj" or (
            suffix == ".json" and _head(spec.artifact).startswith(b'{"learner"')
        )

    def load(self, spec: ModelSpec) -> Predictor:
        if spec.artifact is None or not spec.artifact.is_file():
            raise FileNotFoundError(f"no such file: {spec.artifact}")
        xgboost = import_optional("xgboost", extra="xgboost")
        booster = xgboost.Booster()
        booster.load_model(str(spec.artifact))
        threads = _threads(spec)
        if threads is not None:
            booster.set_param({"nthread": threads})
        predictor = BoosterPredictor(booster, booster.num_features(), booster.inplace_predict)
        predictor.outputs = [TensorInfo(name="output", dtype="float32", shape=None)]
        return predictor


class LightGBMRuntime(Runtime):
    name = "lightgbm"
    options = frozenset({"threads"})
    libraries = ("lightgbm",)
    # Serialized: LightGBM's Booster.predict has not always been safe to call from several
    # threads at once, and a wrong answer would be silent; it parallelises inside a call.
    default_concurrency = "serialized"

    def claims(self, spec: ModelSpec) -> bool:
        if spec.artifact is None or spec.artifact.suffix.lower() != ".txt":
            return False
        return _head(spec.artifact).startswith(b"tree\nversion=")

    def load(self, spec: ModelSpec) -> Predictor:
        if spec.artifact is None or not spec.artifact.is_file():
            raise FileNotFoundError(f"no such file: {spec.artifact}")
        lightgbm = import_optional("lightgbm", extra="lightgbm")
        booster = lightgbm.Booster(model_file=str(spec.artifact))
        threads = _threads(spec)

        def predict(batch: Any) -> Any:
            if threads is None:
                return booster.predict(batch)
            return booster.predict(batch, num_threads=threads)

        predictor = BoosterPredictor(booster, booster.num_feature(), predict)
        predictor.outputs = [TensorInfo(name="output", dtype="float64", shape=None)]
        return predictor
