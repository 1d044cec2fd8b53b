"""Gradient-boosted trees from their libraries' own files, no pickle: XGBoost (``.json``,
``.ubj``), LightGBM (``.txt``) and CatBoost (``.cbm``). These formats hold data only, so nothing
in them runs code when loaded, and a config needs no ``trust``.

A ``.json`` or ``.txt`` file is any program's: each runtime claims one only when its first
bytes are the library's (``{"learner"`` for XGBoost, ``tree`` then ``version=`` for LightGBM).
``.cbm`` is CatBoost's alone, claimed by its suffix.

Every booster answers on the scale of what it predicts: a probability for a binary classifier
(of its second class), a row of class probabilities for a multiclass one, a value for a
regressor (``exp`` of the raw score for a Poisson or Tweedie objective). An XGBoost
scikit-learn estimator's file, trained with early stopping, answers with the rounds up to its
best iteration, as the estimator does (a Booster's, with all, as ``Booster.predict``); a
LightGBM or CatBoost file holds only the trees its library predicts with. What one example's
output is (a number, or a row of classes, quantiles or targets) is read from one row of zeros
predicted at load, the same way for every booster.
"""

from __future__ import annotations

import json
import logging
import mmap
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from loadonce.core.errors import InvalidInputError
from loadonce.core.imports import import_optional
from loadonce.core.spec import ModelSpec
from loadonce.runtimes._base import (
    InputSignature,
    Predictor,
    Runtime,
    TensorInfo,
    model_file,
    thread_count,
)
from loadonce.runtimes._columns import Columns
from loadonce.runtimes._tensors import stack_named_inputs
from loadonce.runtimes.booster_columns import lightgbm_columns, xgboost_columns
from loadonce.runtimes.sklearn_encoders import refuse_missing

logger = logging.getLogger("loadonce")

_HEAD_BYTES = 64


def _head(path: Path | None) -> bytes:
    if path is None or not path.is_file():
        return b""
    with path.open("rb") as stream:
        return stream.read(_HEAD_BYTES)


# Suffixes XGBoost's own files are often saved under; claimed only by their content.
_UNNAMED_SUFFIXES = frozenset({".model", ".bin"})


def _is_ubjson_learner(head: bytes) -> bool:
    """XGBoost's UBJSON model: an object whose first key is "learner" (its length written
    with any of UBJSON's integer markers)."""
    return head.startswith(b"{") and b"learner{" in head[:24]


def _feature_signature(features: int) -> InputSignature | None:
    # float64 here: requests' numbers convert without loss; the boosters take either.
    return InputSignature(shape=(features,), dtype="float64") if features > 0 else None


class BoosterPredictor(Predictor):
    """One booster's ``predict(rows)``: a score per example (a probability for a binary
    classifier, a value for a regressor), or a row of class probabilities."""

    def __init__(self, booster: Any, features: int, predict: Any) -> None:
        self.booster = booster
        self.signature = _feature_signature(features)
        # A tree ensemble scores each row on its own: a batch's rows are what rows alone get.
        self.batches_exactly = True
        # The boosters send NaN down each split's learnt missing-value branch.
        self.missing_as_nan = True
        self._predict = predict
        self._features = features

    def predict(self, batch: Any) -> Sequence[Any]:
        result: Sequence[Any] = self._predict(batch)
        return result

    def describe_output(self) -> None:
        """Set ``outputs`` from one row of zeros predicted: its dtype, and one example's
        shape (a number, or a row of classes, quantiles or targets, which no single field of
        the three libraries' configs says for every objective). Raises what the library
        raises for a model that loads but cannot predict (a damaged file)."""
        import numpy as np

        if self._features <= 0:  # no features recorded: nothing to predict a row of
            self.outputs = [TensorInfo(name="output", dtype=None, shape=None)]
            return
        answered = np.asarray(self._predict(np.zeros((1, self._features))))
        self.outputs = [
            TensorInfo(name="output", dtype=answered.dtype.name, shape=(None, *answered.shape[1:]))
        ]


class ColumnsBoosterPredictor(BoosterPredictor):
    """A booster whose examples are objects keyed by column name, handed to it as a
    DataFrame of the training columns (the category columns as pandas categories)."""

    def __init__(self, booster: Any, features: int, predict: Any, columns: Columns) -> None:
        super().__init__(booster, features, predict)
        self.signature = None
        self.inputs = list(columns.inputs)
        self._columns = columns

    def prepare(self, examples: list[Any]) -> Any:
        typed, examples = self._columns.request_inputs(examples)
        batch = stack_named_inputs(examples, typed, missing_as_nan=True)
        self._columns.check_known(batch)
        return batch

    def predict(self, batch: Any) -> Sequence[Any]:
        result: Sequence[Any] = self._predict(self._columns.frame(batch))
        return result


def _threads(spec: ModelSpec) -> int | None:
    return thread_count(spec, "threads")


class XGBoostRuntime(Runtime):
    name = "xgboost"
    reads_input_shape = False
    options = frozenset({"threads"})
    libraries = ("xgboost",)
    suffixes = (".ubj",)
    # inplace_predict is thread-safe (XGBoost's documentation), and runs in C++ without the GIL.
    default_concurrency = "shared"

    def claims(self, spec: ModelSpec) -> bool:
        if spec.artifact is None:
            return False
        suffix = spec.artifact.suffix.lower()
        if suffix == ".ubj":
            return True
        if suffix == ".json":
            return _head(spec.artifact).startswith(b'{"learner"')
        # save_model writes UBJSON whatever the name ends with, and ".model" or ".bin" are
        # what many older scripts and tutorials name it: taken by its first bytes.
        return suffix in _UNNAMED_SUFFIXES and _is_ubjson_learner(_head(spec.artifact))

    def load(self, spec: ModelSpec) -> Predictor:
        model_file(spec.artifact)
        xgboost = import_optional("xgboost", extra="xgboost")
        booster = xgboost.Booster()
        try:
            booster.load_model(str(spec.artifact))
        except xgboost.core.XGBoostError as exc:
            raise ValueError(f"not an XGBoost model file ({_xgboost_reason(exc)})") from None
        except UnicodeDecodeError:  # a binary file of another kind (a pickle) named .ubj
            raise ValueError("not an XGBoost model file (neither its JSON nor UBJSON)") from None
        threads = _threads(spec)
        if threads is not None:
            booster.set_param({"nthread": threads})
        linear = json.loads(booster.save_config())["learner"]["gradient_booster"]["name"] == (
            "gblinear"
        )
        if linear:
            # A linear booster has no inplace_predict (XGBoost's scikit-learn estimators call
            # predict on a DMatrix for it too); always all its rounds.

            def predict(batch: Any) -> Any:
                return booster.predict(xgboost.DMatrix(batch, nthread=threads or 0))

        else:
            rounds = _xgboost_rounds(booster, spec.name)

            def predict(batch: Any) -> Any:
                return booster.inplace_predict(batch, iteration_range=rounds)

        columns = None if linear else xgboost_columns(booster)
        predictor = (
            BoosterPredictor(booster, booster.num_features(), predict)
            if columns is None
            else ColumnsBoosterPredictor(booster, booster.num_features(), predict, columns)
        )
        try:
            predictor.describe_output()
        except xgboost.core.XGBoostError as exc:
            raise ValueError(f"the XGBoost model cannot predict ({_xgboost_reason(exc)})") from None
        return predictor


def _xgboost_rounds(booster: Any, model: str) -> tuple[int, int]:
    """The boosting rounds that answer, as the API that saved the file predicts: a file an
    XGBoost scikit-learn estimator saved (it records the attribute ``scikit_learn``) with
    the rounds up to the best iteration early stopping recorded, as the estimator does
    (``XGBModel._get_iteration_range``); any other (``xgb.train``'s Booster, whose own
    ``predict`` uses every round) with all ((0, 0)). The file keeps every round, so scoring
    an estimator's with all of them answered what its predict did not."""
    best = booster.attr("best_iteration")
    if best is None or booster.attr("scikit_learn") is None:
        return (0, 0)
    # At most the rounds the file holds (a model sliced after training may keep the attribute).
    end = min(int(best) + 1, booster.num_boosted_rounds())
    logger.info(
        "model '%s': trained with early stopping; answers with its first %s of %s boosting "
        "rounds (best_iteration %s), as XGBoost's scikit-learn predict does",
        model,
        end,
        booster.num_boosted_rounds(),
        best,
    )
    return (0, end)


class LightGBMRuntime(Runtime):
    name = "lightgbm"
    reads_input_shape = False
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
        artifact = model_file(spec.artifact)
        lightgbm = import_optional("lightgbm", extra="lightgbm")
        # Mapped, not read: the text is checked in place, with no copy of a large model.
        with (
            artifact.open("rb") as stream,
            mmap.mmap(stream.fileno(), 0, access=mmap.ACCESS_READ) as text,
        ):
            check_lightgbm_text(text)
        booster = lightgbm.Booster(model_file=str(spec.artifact))
        threads = _threads(spec)

        def predict(batch: Any) -> Any:
            if threads is None:
                return booster.predict(batch)
            return booster.predict(batch, num_threads=threads)

        columns = lightgbm_columns(booster)
        predictor = (
            BoosterPredictor(booster, booster.num_feature(), predict)
            if columns is None
            else ColumnsBoosterPredictor(booster, booster.num_feature(), predict, columns)
        )
        predictor.describe_output()
        return predictor


class DamagedModelFileError(ValueError):
    """A model file whose structure is broken (truncated, sizes that disagree)."""


def _xgboost_reason(error: Exception) -> str:
    """XGBoost's message without its time, its C++ source line and its native stack trace
    (a 1,200-character line with memory addresses)."""
    text = str(error).split("Stack trace:")[0]
    text = re.sub(r"^\s*\[[\d:]+\]\s*", "", text)
    text = re.sub(r"^\S+:\d+:\s*", "", text)
    return " ".join(text.split())


def check_lightgbm_text(text: bytes | mmap.mmap) -> None:
    """Refuse a LightGBM text model whose trees are not where its header says they are.

    LightGBM reads the trees in parallel at the offsets its ``tree_sizes`` line gives, without
    checking them against the text's length: a truncated file made it read past its buffer
    and abort the whole process (SIGABRT, no Python exception, no line saying which model).
    The same walk here, bounded: each offset must start a ``Tree=`` block, the last must end
    where ``end of trees`` begins, and parameters that begin must end. A file without
    ``tree_sizes`` is read tree by tree, safely, by LightGBM itself."""
    header_end = text.find(b"\nTree=")
    sizes_at = text.find(b"\ntree_sizes=", 0, header_end if header_end >= 0 else len(text))
    if sizes_at < 0:
        # Read tree by tree by LightGBM, which takes a file cut before its trees (in its
        # header) for a model of no trees, answering constants: every whole file ends them.
        if text.find(b"\nend of trees") < 0:
            raise DamagedModelFileError(
                "the LightGBM model file is truncated: it has no 'end of trees' line"
            )
        return
    line_end = text.find(b"\n", sizes_at + 1)
    if line_end < 0 or header_end < 0:
        raise DamagedModelFileError("the LightGBM model file is truncated: it has no trees")
    try:
        sizes = [int(size) for size in text[sizes_at + 12 : line_end].split()]
    except ValueError:
        raise DamagedModelFileError(
            "the LightGBM model file is damaged: its tree_sizes line is not a list of sizes"
        ) from None
    offset = header_end + 1
    for index, size in enumerate(sizes):
        if size < 0 or not _starts(text, offset, b"Tree="):
            raise DamagedModelFileError(
                f"the LightGBM model file is truncated or damaged: tree {index} is not where "
                "its header's tree_sizes put it"
            )
        offset += size
    if not _starts(text, offset, b"end of trees"):
        raise DamagedModelFileError(
            "the LightGBM model file is truncated or damaged: its trees do not end where its "
            "header's tree_sizes say"
        )
    # Its parameters are read up to their end marker, as far as it takes (a file cut among
    # them crashed the process too).
    parameters = text.find(b"\nparameters:\n", offset)
    if parameters >= 0 and text.find(b"\nend of parameters", parameters) < 0:
        raise DamagedModelFileError(
            "the LightGBM model file is truncated: its parameters have no end"
        )


def _starts(text: bytes | mmap.mmap, offset: int, marker: bytes) -> bool:
    return text[offset : offset + len(marker)] == marker


# CatBoost's binary classifiers: their "Probability" has a column per class, and the other
# boosters answer the second class's probability alone.
_CATBOOST_BINARY = frozenset({"Logloss", "CrossEntropy"})
# What CatBoostRegressor.predict answers for these losses (any other: the raw score): the
# target's scale, and for RMSEWithUncertainty a [mean, variance] row.
_CATBOOST_REGRESSOR_SCALES = {
    "Poisson": "Exponent",
    "Tweedie": "Exponent",
    "RMSEWithUncertainty": "RMSEWithUncertainty",
}


class CatBoostPredictor(BoosterPredictor):
    """A CatBoost model; NaN is a missing value unless it was trained with
    ``nan_mode="Forbidden"``: then the model never saw one, and CatBoost would answer anyway.

    ``text_columns``: the positions of its categorical and text features, which CatBoost
    reads as text: an example is then a row of text and numbers."""

    def __init__(
        self,
        model: Any,
        features: int,
        predict: Any,
        *,
        refuses_nan: bool,
        text_columns: frozenset[int] = frozenset(),
    ) -> None:
        super().__init__(model, features, predict)
        self._refuses_nan = refuses_nan
        if text_columns and features > 0:
            columns = tuple(
                "string" if index in text_columns else "float64" for index in range(features)
            )
            self.signature = InputSignature(shape=(features,), dtype="object", columns=columns)
        self._text_columns = text_columns

    def describe_output(self) -> None:
        if not self._text_columns:
            super().describe_output()
            return
        import numpy as np

        # A row of zeros, and empty text where CatBoost reads text (it refuses a number there).
        row = ["" if index in self._text_columns else 0.0 for index in range(self._features)]
        answered = np.asarray(self._predict(np.array([row], dtype=object)))
        self.outputs = [
            TensorInfo(name="output", dtype=answered.dtype.name, shape=(None, *answered.shape[1:]))
        ]

    def prepare(self, examples: list[Any]) -> Any:
        batch = super().prepare(examples)
        if self._text_columns:
            refuse_missing(batch, self._text_columns, "CatBoost")
        if self._refuses_nan and _has_nan(batch):
            raise InvalidInputError(
                "this model was trained with nan_mode 'Forbidden' and does not accept NaN "
                "(a missing value); send numbers"
            )
        return batch


class CatBoostRuntime(Runtime):
    name = "catboost"
    reads_input_shape = False
    options = frozenset({"threads"})
    # Importing catboost starts no thread (measured: the process's thread count is unchanged),
    # so the fork server may import it once for every worker.
    libraries = ("catboost",)
    suffixes = (".cbm",)
    # CatBoost documents its model's const methods as thread-safe; the Python predict builds a
    # new Pool per call and only reads the model (8 threads on one model answered exactly as
    # one, measured), and it runs in C++, partly without the GIL.
    default_concurrency = "shared"

    def load(self, spec: ModelSpec) -> Predictor:
        path = spec.artifact
        path = model_file(path)
        catboost = import_optional("catboost", extra="catboost")
        model = catboost.CatBoost()
        try:
            model.load_model(str(path), format="cbm")
            text_columns = _text_columns(model)
            # The loss's name, as CatBoost's own classifier reads it: get_all_params() fails
            # on a model made by sum_models, which keeps no training options.
            loss = str(model._object._get_loss_function_name()).split(":")[0]
            classifies = catboost.core.is_classification_objective(loss)
        except catboost.CatBoostError as exc:  # a damaged file may load, then fail to name its loss
            raise _not_catboost(exc) from None
        threads = _threads(spec)
        thread_count = -1 if threads is None else threads  # -1: CatBoost's, every core

        if classifies:

            def predict(batch: Any) -> Any:
                rows = model.predict(batch, "Probability", thread_count=thread_count)
                return rows[:, 1] if loss in _CATBOOST_BINARY else rows

        else:
            kind = _CATBOOST_REGRESSOR_SCALES.get(loss, "RawFormulaVal")

            def predict(batch: Any) -> Any:
                return model.predict(batch, kind, thread_count=thread_count)

        predictor = CatBoostPredictor(
            model,
            len(model.feature_names_),
            predict,
            refuses_nan=_nan_forbidden(model, catboost.CatBoostError),
            text_columns=text_columns,
        )
        try:
            predictor.describe_output()
        except catboost.CatBoostError as exc:  # a damaged file that loaded
            raise _not_catboost(exc) from None
        return predictor


def _has_nan(batch: Any) -> bool:
    """NaN in a batch of numbers, or among the numbers of a batch of rows of text and numbers."""
    import numpy as np

    if not isinstance(batch, np.ndarray):
        return False
    if batch.dtype.kind == "f":
        return bool(np.isnan(batch).any())
    return any(isinstance(v, float) and v != v for v in batch.ravel().tolist())


def _not_catboost(error: Exception) -> ValueError:
    # CatBoost starts its messages with the C++ source line that raised them.
    reason = re.sub(r"^\S+:\d+: ", "", str(error))
    return ValueError(f"not a CatBoost model file ({reason})")


def _text_columns(model: Any) -> frozenset[int]:
    """The positions of the model's categorical and text features, which CatBoost reads as
    text; refused at load: embedding features (a vector per column), which a row of values
    cannot carry."""
    embedding = model.get_embedding_feature_indices()
    if embedding:
        columns = ", ".join(map(str, embedding))
        raise ValueError(
            f"the model has embedding features (columns {columns}); the catboost runtime "
            "serves numeric, categorical and text features only"
        )
    return frozenset(
        int(index)
        for index in (*model.get_cat_feature_indices(), *model.get_text_feature_indices())
    )


def _nan_forbidden(model: Any, catboost_error: type[Exception]) -> bool:
    try:
        params = model.get_all_params()
    except catboost_error:  # a summed model keeps no training options: NaN stays missing
        return False
    return bool(params.get("nan_mode") == "Forbidden")
