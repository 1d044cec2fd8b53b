"""The named columns of a scikit-learn model fitted on a pandas DataFrame.

scikit-learn records the columns' names (``feature_names_in_``) but not their dtypes, and a
pipeline fitted on a DataFrame cannot take anything else: a ColumnTransformer that selects
columns by name refuses an array. Each column becomes a named input (shape ``[batch]``), so
requests name their columns as they name a multi-input model's inputs, on both protocols.

A column's dtype is, in order: the operator's (``options.columns``); what the fitted model
says of it, where a ColumnTransformer sends it to an encoder that learnt its categories
(their dtype: text categories make a string column) or to a text vectorizer (a string
column); else float64, what scikit-learn's numeric transformers and estimators turn their
input into anyway. A column that fits none of these (text the model drops, text a custom
transformer reads) must be declared.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from loadonce.core.errors import InvalidInputError
from loadonce.core.imports import import_optional
from loadonce.runtimes._base import TensorInfo

if TYPE_CHECKING:
    import numpy.typing as npt

# What an operator may declare a column as: the dtypes both protocols carry.
COLUMN_DTYPES = ("float64", "float32", "int64", "int32", "bool", "string")
# How many of a column's known values a refusal lists.
_LISTED_VALUES = 10


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

    def check_known(self, batch: Mapping[str, npt.NDArray[Any]]) -> None:
        """An unseen category is the client's mistake (400), not the model's failure (500)."""
        for name, known in self.known_values.items():
            for value in batch[name].tolist():
                if value not in known:
                    listing = ", ".join(map(str, sorted(known, key=str)[:_LISTED_VALUES]))
                    more = ", ..." if len(known) > _LISTED_VALUES else ""
                    raise InvalidInputError(
                        f"column '{name}': unknown value {str(value)[:100]!r}; the model knows "
                        f"{listing}{more}"
                    )

    def frame(self, batch: Mapping[str, npt.NDArray[Any]]) -> Any:
        """The batch as a DataFrame of exactly the fitted columns, in the fitted order."""
        names = [t.name for t in self.inputs]
        columns: dict[str, Any] = {name: batch[name] for name in names}
        for name, categories in self.categorical.items():
            # As at fit: a category column, its codes the fitted ones (LightGBM reads codes).
            columns[name] = self.pandas.Categorical(columns[name], categories=categories)
        return self.pandas.DataFrame(columns, columns=names)


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


def fitted_column_names(estimator: Any) -> list[str] | None:
    """The columns an estimator was fitted on, when it was fitted on a DataFrame whose
    column names are all strings (scikit-learn records no names otherwise)."""
    import numpy as np

    names = getattr(estimator, "feature_names_in_", None)
    if not isinstance(names, np.ndarray) or names.ndim != 1 or not len(names):
        return None
    if not all(isinstance(name, str) for name in names.tolist()):
        return None
    return [str(name) for name in names.tolist()]


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
    return _columns_of(estimator, names, declared)


def _columns_of(estimator: Any, names: list[str], declared: Mapping[str, Any]) -> Columns:
    """The columns' dtypes (the operator's declaration wins) and known values. Needs pandas:
    without it, the one line names the extra to install."""
    pandas = import_optional("pandas", extra="pandas")
    _check_declared(declared, names)
    derived, known = _from_column_transformers(estimator)
    categorical, kinds = _booster_categories(estimator, names)
    for name, categories in categorical.items():
        if categories is None:  # XGBoost keeps them (and refuses an unseen one)
            derived[name] = kinds.get(name, "string")
        else:
            derived[name] = _dtype_of_categories(_as_array(categories))
            known[name] = frozenset(categories)
    inputs = [
        TensorInfo(
            name=name, dtype=str(declared.get(name, derived.get(name, "float64"))), shape=(None,)
        )
        for name in names
    ]
    # Known values stay checked under a declared dtype: a value the encoder has not seen
    # fails the model whatever its type.
    return Columns(inputs=inputs, known_values=known, pandas=pandas, categorical=categorical)


def _booster_categories(
    estimator: Any, names: list[str]
) -> tuple[dict[str, Sequence[Any] | None], dict[str, str]]:
    """The columns a LightGBM or XGBoost estimator was fitted on as pandas categories: it
    takes them as categories again, never as numbers or text (every request was its 500).
    LightGBM keeps each one's categories (``pandas_categorical``, in column order) and reads
    a category's code; XGBoost marks them ``c`` and re-codes the values itself (their type,
    text or numbers, read from its model: the second mapping)."""
    booster: Any = getattr(estimator, "booster_", None)
    kept = getattr(booster, "pandas_categorical", None)
    if kept and hasattr(booster, "dump_model"):
        # Its feature_infos list values only for a categorical feature; no tree is dumped.
        infos = booster.dump_model(start_iteration=booster.current_iteration())["feature_infos"]
        columns = [name for name in names if infos.get(name, {}).get("values")]
        if len(columns) == len(kept):
            pairs = zip(columns, kept, strict=True)
            return {name: list(categories) for name, categories in pairs}, {}
        return {}, {}
    get_booster = getattr(estimator, "get_booster", None)
    if callable(get_booster):
        xgboost_booster = get_booster()
        types = getattr(xgboost_booster, "feature_types", None) or []
        if len(types) == len(names):
            found = [index for index, kind in enumerate(types) if kind == "c"]
            # Its JSON dump holds every tree: read only where there are categories to type.
            kinds = _xgboost_category_kinds(xgboost_booster) if found else {}
            return (
                {names[index]: None for index in found},
                {names[index]: kinds[index] for index in found if index in kinds},
            )
    return {}, {}


def _xgboost_category_kinds(booster: Any) -> dict[int, str]:
    """Each categorical feature's type, text or numbers, by index, as XGBoost's model (JSON)
    records its categories; {} when the model does not say (an older XGBoost)."""
    import json

    try:
        model = json.loads(booster.save_raw("json"))["learner"]["gradient_booster"]
        encoded = (model.get("model") or model["gbtree"]["model"])["cats"]["enc"]
    except (KeyError, TypeError, ValueError):
        return {}
    kinds: dict[int, str] = {}
    for index, entry in enumerate(encoded):
        values = entry.get("values") if isinstance(entry, dict) else None
        if not values:
            continue
        if "offsets" in entry:  # text: UTF-8 bytes, cut at the offsets
            kinds[index] = "string"
        else:
            kinds[index] = "int64" if all(isinstance(v, int) for v in values) else "float64"
    return kinds


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


def _from_column_transformers(
    estimator: Any,
) -> tuple[dict[str, str], dict[str, frozenset[Any]]]:
    """Dtypes and known values of the columns the model's ColumnTransformer (the estimator,
    a pipeline's first step, or a HistGradientBoosting model's own) sends to an encoder or a
    text vectorizer."""
    dtypes: dict[str, str] = {}
    known: dict[str, frozenset[Any]] = {}
    transformer = first_step(estimator)
    if not hasattr(transformer, "transformers_"):
        # HistGradientBoosting's native categories (categorical_features="from_dtype"): its
        # own ColumnTransformer encodes the category columns (a pandas Categorical of text
        # at fit; text in a request).
        transformer = getattr(transformer, "_preprocessor", None)
    fitted = getattr(transformer, "transformers_", None)
    all_names = fitted_column_names(transformer)
    if not isinstance(fitted, list) or all_names is None:
        return dtypes, known
    for entry in fitted:
        if not isinstance(entry, tuple) or len(entry) != 3:
            continue
        _, step, selection = entry
        columns = _selected(selection, all_names)
        if columns is None:
            continue
        encoder = _encoder_in(step, len(columns))
        if encoder is not None:
            for name, categories in zip(columns, encoder.categories_, strict=True):
                dtypes[name] = _dtype_of_categories(categories)
                if getattr(encoder, "handle_unknown", None) == "error":
                    known[name] = frozenset(categories.tolist())
        elif _is_text_vectorizer(step):
            dtypes.update(dict.fromkeys(columns, "string"))
    return dtypes, known


def first_step(estimator: Any) -> Any:
    """The step a Pipeline (nested or not) gives its input to; the estimator itself else."""
    steps = getattr(estimator, "steps", None)
    while isinstance(steps, list) and steps and isinstance(steps[0], tuple):
        estimator = steps[0][1]
        steps = getattr(estimator, "steps", None)
    return estimator


def _selected(selection: Any, all_names: list[str]) -> list[str] | None:
    """The column names a ColumnTransformer's fitted entry selects, or None if unsure."""
    import numpy as np

    if isinstance(selection, str):
        return [selection] if selection in all_names else None
    if isinstance(selection, slice):
        return all_names[selection]
    items = selection.tolist() if isinstance(selection, np.ndarray) else selection
    if not isinstance(items, list):
        return None
    if all(isinstance(item, str) for item in items):
        return [item for item in items if item in all_names] if items else []
    if all(type(item) is bool for item in items) and len(items) == len(all_names):
        return [name for name, chosen in zip(all_names, items, strict=True) if chosen]
    if all(isinstance(item, int) and -len(all_names) <= item < len(all_names) for item in items):
        return [all_names[item] for item in items]
    return None


def _encoder_in(step: Any, width: int) -> Any:
    """The encoder that learnt one list of categories per selected column: the step itself,
    or the first such step of a pipeline (an imputer before it keeps the columns' types)."""
    import numpy as np

    for candidate in [step, *[s for _, s in getattr(step, "steps", None) or []]]:
        categories = getattr(candidate, "categories_", None)
        if (
            isinstance(categories, list)
            and len(categories) == width
            and all(isinstance(c, np.ndarray) and c.ndim == 1 for c in categories)
        ):
            return candidate
    return None


def _dtype_of_categories(categories: npt.NDArray[Any]) -> str:
    kind = categories.dtype.kind
    if kind in "OSU":
        return "string"
    if kind in "iu":
        return "int64"
    if kind == "b":
        return "bool"
    return "float64"


def _is_text_vectorizer(step: Any) -> bool:
    """CountVectorizer, TfidfVectorizer (or a pipeline starting with one): one text column."""
    for candidate in [step, *[s for _, s in getattr(step, "steps", None) or []][:1]]:
        if hasattr(candidate, "vocabulary_") and hasattr(candidate, "build_analyzer"):
            return True
    return False
