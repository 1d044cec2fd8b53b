"""The named columns of a scikit-learn model fitted on a pandas DataFrame.

scikit-learn records the columns' names (``feature_names_in_``) but not their dtypes, and a
pipeline fitted on a DataFrame cannot take anything else: a ColumnTransformer that selects
columns by name refuses an array. Each column becomes a named input (shape ``[batch]``), so
requests name their columns as they name a multi-input model's inputs, on both protocols.

A column's dtype is, in order: the operator's (``options.columns``); what the fitted model
says of it, where it reaches an encoder that learnt its categories (their dtype: text
categories make a string column) or a text vectorizer (a string column), however nested
(sklearn_encoders.py); else float64, what scikit-learn's numeric transformers and
estimators turn their input into anyway; such an assumed column takes booleans too (as one
fitted as bool: nothing in the fitted model tells them apart), a DataFrame column of bool
where a request's values all are, their numbers where some are null (missing). A column
that fits none of these (text the model drops, text a custom transformer reads) must be
declared.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from loadonce.core.errors import InvalidInputError
from loadonce.core.imports import import_optional
from loadonce.runtimes._base import TensorInfo
from loadonce.runtimes.sklearn_encoders import (
    check_known,
    column_kinds,
    dtype_of_categories,
    fitted_column_names,
)

if TYPE_CHECKING:
    import numpy.typing as npt

# What an operator may declare a column as: the dtypes both protocols carry.
COLUMN_DTYPES = ("float64", "float32", "int64", "int32", "bool", "string")


@dataclass(frozen=True, kw_only=True)
class Columns:
    """The model's columns, in the order it was fitted on, and the values a column must take
    where the model refuses any other (an encoder with ``handle_unknown="error"``)."""

    inputs: Sequence[TensorInfo]
    known_values: Mapping[str, frozenset[Any]]
    pandas: Any  # the module, imported once at load
    # Columns a booster was fitted on as pandas categories (LightGBM, XGBoost), and their
    # categories in the fitted order where the model kept them (None: the model re-codes).
    categorical: Mapping[str, Sequence[Any] | None] = dataclasses.field(default_factory=dict)
    # Columns whose dtype nothing declared or recorded (float64, assumed): they take
    # booleans too, since a column fitted as bool looks the same in the fitted model.
    assumed: frozenset[str] = frozenset()
    # Columns an encoder fitted on Python objects reads (a DataFrame column of object
    # dtype): they reach it as objects, as at fit; NumPy's numbers were its 500.
    objects: frozenset[str] = frozenset()
    # Columns where the model learnt None itself as a value (sklearn_encoders.ColumnKind): a
    # null reaches it as None there, not as NaN.
    learnt_none: frozenset[str] = frozenset()

    def request_inputs(self, examples: list[Any]) -> tuple[list[TensorInfo], list[Any]]:
        """The columns as this request's values type them, and the examples as the model
        takes them. An assumed column whose values are all booleans is bool, as it was at
        fit (scikit-learn reads True as 1.0 either way); one of booleans and nulls (missing
        values) stays float64, each boolean its number: NumPy has no missing boolean, and
        the model reads these numbers (null as NaN where it takes missing values, refused
        where it does not, as among numbers). Text there is refused with how to declare the
        column."""
        import numpy as np

        typed = []
        as_numbers = []
        for tensor in self.inputs:
            if tensor.name in self.assumed:
                values = [e.get(tensor.name) for e in examples if isinstance(e, Mapping)]
                if values and all(isinstance(v, bool | np.bool_) for v in values):
                    tensor = dataclasses.replace(tensor, dtype="bool")
                elif values and all(v is None or isinstance(v, bool | np.bool_) for v in values):
                    as_numbers.append(tensor.name)
                elif (text := next((v for v in values if isinstance(v, str)), None)) is not None:
                    raise InvalidInputError(
                        f"column '{tensor.name}' takes numbers (float64) or booleans; got the "
                        f"text {text[:40]!r}. scikit-learn records no column types and no "
                        "encoder of the model reads this column, so loadonce took it for "
                        "numbers; if the model reads text there, declare it in the model's "
                        f'options: columns = {{ {tensor.name} = "string" }}'
                    )
            typed.append(tensor)
        if as_numbers:
            examples = [_booleans_as_numbers(e, as_numbers) for e in examples]
        return typed, examples

    def check_known(self, batch: Mapping[str, npt.NDArray[Any]]) -> None:
        """An unseen category is the client's mistake (400), not the model's failure (500)."""
        for name, known in self.known_values.items():
            check_known(f"column '{name}'", batch[name].tolist(), known)

    def frame(self, batch: Mapping[str, npt.NDArray[Any]]) -> Any:
        """The batch as a DataFrame of exactly the fitted columns, in the fitted order."""
        names = [t.name for t in self.inputs]
        dtypes = {t.name: t.dtype for t in self.inputs}
        columns: dict[str, Any] = {name: batch[name] for name in names}
        for name, categories in self.categorical.items():
            # As at fit: a category column, its codes the fitted ones (LightGBM reads codes).
            column = self.pandas.Categorical(columns[name], categories=categories)
            if categories is None and not len(column.categories):
                # Only missing values: XGBoost fails on a column of no categories at all
                # (NumPy's "cannot call vectorize on size 0 inputs", the model's 500). One of
                # the column's type stands in; every value still reads as missing.
                stand_in = "" if dtypes[name] == "string" else 0
                column = self.pandas.Categorical(columns[name], categories=[stand_in])
            columns[name] = column
        for name in self.objects:
            columns[name] = columns[name].astype(object, copy=False)  # Python numbers
        return self.pandas.DataFrame(columns, columns=names)


def _booleans_as_numbers(example: Any, names: list[str]) -> Any:
    """A request's example (left as it is: the request's own) with the booleans of the
    columns ``names`` as 1.0 and 0.0."""
    if not isinstance(example, Mapping):
        return example  # refused as not an object when stacked
    changed = dict(example)
    for name in names:
        value = changed.get(name)
        if value is not None:
            changed[name] = float(value)
    return changed


def features_in(estimator: Any) -> int | None:
    """How many features a fitted estimator takes, where it says so: ``n_features_in_``, or
    for a model that reports 0 there once unpickled (CatBoost's scikit-learn classes) the
    length of its ``feature_names_``. None: unknown, and the model's own checks answer."""
    n_features = getattr(estimator, "n_features_in_", None)
    if isinstance(n_features, int) and not isinstance(n_features, bool) and n_features > 0:
        return n_features
    names = getattr(estimator, "feature_names_", None)
    if isinstance(names, list | tuple) and names:
        return len(names)
    return None


def named_columns(estimator: Any, declared: Any) -> Columns | None:
    """The columns of an estimator fitted on a DataFrame, None for any other estimator (and
    then pandas is not imported). ``declared``: the operator's ``options.columns``."""
    if not isinstance(declared, Mapping):
        raise ValueError('options.columns must be a table: {column = "dtype", ...}')
    names = fitted_column_names(estimator)
    if names is None:
        if declared:
            raise ValueError(
                "options.columns is set, but the model was not fitted on a DataFrame with "
                "named columns (it has no feature_names_in_)"
            )
        return None
    return columns_of(estimator, names, declared)


def columns_of(estimator: Any, names: list[str], declared: Mapping[str, Any]) -> Columns:
    """The columns' dtypes (the operator's declaration wins) and known values. Needs pandas:
    without it, the one line names the extra to install."""
    pandas = import_optional("pandas", extra="pandas")
    _check_declared(declared, names)
    derived, known, objects, learnt_none = _from_encoders(estimator, names)
    categorical, kinds, texts = _booster_categories(estimator, names)
    for name, categories in categorical.items():
        if categories is None:  # XGBoost keeps them (and refuses an unseen text)
            derived[name] = kinds.get(name, "string")
            if name in texts:
                known[name] = texts[name]
        else:
            derived[name] = dtype_of_categories(_as_array(categories)) or "string"
            known[name] = frozenset(categories)
    assumed = frozenset(name for name in names if name not in declared and name not in derived)
    inputs = [
        TensorInfo(
            name=name,
            dtype=str(declared.get(name, derived.get(name, "float64"))),
            shape=(None,),
            also_takes=("bool",) if name in assumed else (),
        )
        for name in names
    ]
    # Known values stay checked under a declared dtype: a value the encoder has not seen
    # fails the model whatever its type.
    return Columns(
        inputs=inputs,
        known_values=known,
        pandas=pandas,
        categorical=categorical,
        assumed=assumed,
        objects=objects,
        learnt_none=learnt_none,
    )


def _booster_categories(
    estimator: Any, names: list[str]
) -> tuple[dict[str, Sequence[Any] | None], dict[str, str], dict[str, frozenset[str]]]:
    """The columns a LightGBM or XGBoost estimator was fitted on as pandas categories: it
    takes them as categories again, never as numbers or text (every request was its 500).
    LightGBM keeps each one's categories (``pandas_categorical``, in column order) and reads
    a category's code; XGBoost marks them ``c`` and re-codes the values itself (their type,
    text or numbers, read from its model: the second mapping), failing on a text it never
    saw (its 500, "Found a category not in the training set"): its texts, the third."""
    booster: Any = getattr(estimator, "booster_", None)
    kept = getattr(booster, "pandas_categorical", None)
    if kept and hasattr(booster, "dump_model"):
        # Its feature_infos list values only for a categorical feature; no tree is dumped.
        infos = booster.dump_model(start_iteration=booster.current_iteration())["feature_infos"]
        columns = [name for name in names if infos.get(name, {}).get("values")]
        if len(columns) == len(kept):
            pairs = zip(columns, kept, strict=True)
            return {name: list(categories) for name, categories in pairs}, {}, {}
        return {}, {}, {}
    get_booster = getattr(estimator, "get_booster", None)
    if callable(get_booster):
        xgboost_booster = get_booster()
        types = getattr(xgboost_booster, "feature_types", None) or []
        if len(types) == len(names):
            found = [index for index, kind in enumerate(types) if kind == "c"]
            # Its JSON dump holds every tree: read only where there are categories to type.
            kinds, texts = _xgboost_categories(xgboost_booster) if found else ({}, {})
            return (
                {names[index]: None for index in found},
                {names[index]: kinds[index] for index in found if index in kinds},
                {names[index]: texts[index] for index in found if index in texts},
            )
    return {}, {}, {}


def _xgboost_categories(booster: Any) -> tuple[dict[int, str], dict[int, frozenset[str]]]:
    """Each categorical feature's type, text or numbers, by index, as XGBoost's model (JSON)
    records its categories, and a text feature's categories; nothing when the model does not
    say (an older XGBoost). (An unseen number is not refused: it reads as no category.)"""
    import json

    try:
        model = json.loads(booster.save_raw("json"))["learner"]["gradient_booster"]
        encoded = (model.get("model") or model["gbtree"]["model"])["cats"]["enc"]
    except (KeyError, TypeError, ValueError):
        return {}, {}
    kinds: dict[int, str] = {}
    texts: dict[int, frozenset[str]] = {}
    for index, entry in enumerate(encoded):
        values = entry.get("values") if isinstance(entry, dict) else None
        if not values:
            continue
        if "offsets" in entry:  # text: UTF-8 bytes, cut at the offsets
            kinds[index] = "string"
            found = _texts_at(values, entry["offsets"])
            if found is not None:
                texts[index] = found
        else:
            kinds[index] = "int64" if all(isinstance(v, int) for v in values) else "float64"
    return kinds, texts


def _texts_at(values: Any, offsets: Any) -> frozenset[str] | None:
    """The texts of XGBoost's encoding: the bytes ``values`` cut at ``offsets`` (each text's
    start, then the end); None where they do not read so."""
    try:
        data = bytes(values)
        ends = [*offsets[1:], len(data)] if offsets and offsets[-1] != len(data) else offsets[1:]
        return frozenset(
            data[start:end].decode() for start, end in zip(offsets, ends, strict=False)
        )
    except (TypeError, ValueError):
        return None


def _as_array(values: Sequence[Any]) -> npt.NDArray[Any]:
    import numpy as np

    return np.asarray(values)


def _check_declared(declared: Mapping[str, Any], names: list[str]) -> None:
    unknown = [name for name in declared if name not in names]
    if unknown:
        raise ValueError(
            f"options.columns names {', '.join(map(repr, unknown))}, but the model was fitted "
            f"on the columns {', '.join(names)}"
        )
    for name, dtype in declared.items():
        if dtype not in COLUMN_DTYPES:
            raise ValueError(
                f"options.columns: column '{name}' is declared as {dtype!r}; a column is one "
                f"of {', '.join(COLUMN_DTYPES)}"
            )


def _from_encoders(
    estimator: Any, names: list[str]
) -> tuple[dict[str, str], dict[str, frozenset[Any]], frozenset[str], frozenset[str]]:
    """Dtypes and known values of the columns the model sends to an encoder or a text
    vectorizer, however it nests them (sklearn_encoders.py), those it takes as objects, and
    those where it learnt None as a value."""
    dtypes: dict[str, str] = {}
    known: dict[str, frozenset[Any]] = {}
    objects: set[str] = set()
    learnt_none: set[str] = set()
    for position, kind in column_kinds(estimator, len(names)).items():
        if kind.dtype is not None:
            dtypes[names[position]] = kind.dtype
        if kind.known is not None:
            known[names[position]] = kind.known
        if kind.objects:
            objects.add(names[position])
        if kind.learnt_none:
            learnt_none.add(names[position])
    return dtypes, known, frozenset(objects), frozenset(learnt_none)


def first_step(estimator: Any) -> Any:
    """The step a Pipeline (nested or not) gives its input to; the estimator itself else."""
    steps = getattr(estimator, "steps", None)
    while isinstance(steps, list) and steps and isinstance(steps[0], tuple):
        estimator = steps[0][1]
        steps = getattr(estimator, "steps", None)
    return estimator
