"""What each input column of a fitted scikit-learn model must be, from the encoder it reaches.

scikit-learn records no column dtypes, but an encoder records the categories it learnt, one
list per column it was given (``OneHotEncoder``, ``OrdinalEncoder``, ``TargetEncoder``), and
a text vectorizer reads one column of text. One walk finds them however the model nests them,
for both kinds of model: a DataFrame's named columns (``_columns.py``) and an array's rows
(``sklearn.py``). A column is followed from the model's input through

- a ``Pipeline``'s leading steps that keep one column per column (imputers, a
  ``FunctionTransformer``, ``"passthrough"``), to the step after them;
- a ``ColumnTransformer``: each transformer gets the columns it selects (by position, name,
  mask or slice), its remainder too;
- a ``FeatureUnion``: each transformer gets every column;
- a ``HistGradientBoosting`` model's own preprocessor (its native categories);
- a CatBoost estimator's own categorical and text features (text, as CatBoost reads them).

Both kinds had their own, shallower search: an encoder behind an imputer inside a
ColumnTransformer of an array model was missed, and its rows of text were refused as "must
be numbers".
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from loadonce.core.errors import InvalidInputError

if TYPE_CHECKING:
    import numpy.typing as npt

# How many of a column's known values a refusal lists.
_LISTED_VALUES = 10
# A step without ``missing_values`` (not an imputer).
_UNSET = object()


@dataclass(frozen=True, kw_only=True)
class ColumnKind:
    """What the model learnt of one input column.

    ``dtype``: its values' dtype (``"string"``, ``"int64"``, ``"float64"``, ``"bool"``), or None
    for a column an imputer fitted on objects keeps but no encoder reads (any value).
    ``known``: the only values the model takes there (an encoder with
    ``handle_unknown="error"``); None where any value is taken.
    ``objects``: the encoder learnt its categories from Python objects (an object array): it
    compares a value with them as objects, and NumPy's numbers fail there (scikit-learn's
    ``isnan`` of object categories: the model's 500), so the column's values reach it as
    Python objects, as at fit.
    ``missing``: whether a missing value (null, NaN) may reach the model there at all (not in
    CatBoost's categorical and text features, which fail on NaN: the model's 500).
    ``learnt_none``: the model learnt None itself there, not NaN: an encoder holds None among
    its categories (a DataFrame's text column with None in it at fit, which SimpleImputer's
    default ``missing_values=np.nan`` passes on), or an imputer replaces None
    (``missing_values=None``). A null reaches it as None, the value it learnt: as NaN it
    was imputed, or an unknown category, and the answer was not the model's own for None."""

    dtype: str | None
    known: frozenset[Any] | None = None
    objects: bool = False
    missing: bool = True
    learnt_none: bool = False


def column_kinds(estimator: Any, width: int) -> dict[int, ColumnKind]:
    """The columns, by position in the model's input of ``width`` columns, whose kind the
    model's encoders (or text vectorizers) say; a column absent is one they do not read."""
    found: dict[int, ColumnKind] = {}
    _follow(estimator, list(range(width)), found)
    # Where the model learnt None, it takes None (an imputer's None is replaced before the
    # encoder that knows only what it became: None was refused as an unknown value).
    return {
        position: dataclasses.replace(kind, known=kind.known | {None})
        if kind.learnt_none and kind.known is not None
        else kind
        for position, kind in found.items()
    }


def refuse_missing(batch: npt.NDArray[Any], positions: Iterable[int], model: str) -> None:
    """A missing value (null, NaN) in a column of rows where the model takes none: the
    client's mistake (400), said before the model fails on it (its 500)."""
    for position in positions:
        if any(v is None or (isinstance(v, float) and v != v) for v in batch[:, position]):
            raise InvalidInputError(
                f"column {position}: {model} takes text here, not a missing value (null or "
                "NaN); send the text the model was trained with for missing ones"
            )


def nulls_as_none(values: npt.NDArray[Any]) -> npt.NDArray[Any]:
    """A column of objects with its missing values (a null read as NaN) as None, where the
    model learnt None itself (``ColumnKind.learnt_none``); any other column as it is."""
    import numpy as np

    if values.dtype != object:
        return values
    changed = values.copy()
    for index, value in enumerate(changed):
        if isinstance(value, float | np.floating) and value != value:
            changed[index] = None
    return changed


def check_known(column: str, values: Iterable[Any], known: frozenset[Any]) -> None:
    """An unseen category is the client's mistake (400), not the model's failure (500)."""
    for value in values:
        # NaN is a missing value, not a category: where it reaches the model, its column's
        # missing values were found taken care of (an imputer before the encoder).
        if value in known or value != value:
            continue
        listing = ", ".join(map(str, sorted(known, key=str)[:_LISTED_VALUES]))
        more = ", ..." if len(known) > _LISTED_VALUES else ""
        raise InvalidInputError(
            f"{column}: unknown value {str(value)[:100]!r}; the model knows {listing}{more}"
        )


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


def dtype_of_categories(categories: npt.NDArray[Any]) -> str | None:
    """The dtype of the values an encoder learnt: ``"string"``, ``"int64"``, ``"float64"``,
    ``"bool"``; None for an object array whose values are of several kinds (any value is
    taken as it is)."""
    kind = categories.dtype.kind
    if kind in "SU":
        return "string"
    if kind == "O":
        return _dtype_of_objects(categories.tolist())
    if kind in "iu":
        return "int64"
    if kind == "b":
        return "bool"
    return "float64"


def _dtype_of_objects(values: list[Any]) -> str | None:
    """An object array's dtype says nothing of its values: an integer column of an array of
    text and numbers (a zip code beside a colour) holds Python ints, and was taken for text
    (its numbers refused, its text an unknown category). Its missing values (None, NaN), a
    category of their own, say nothing of the others."""
    import numpy as np

    present = [
        value
        for value in values
        if value is not None and not (isinstance(value, float | np.floating) and value != value)
    ]
    if not present:
        return None
    if all(isinstance(value, str) for value in present):
        return "string"
    if all(isinstance(value, bool | np.bool_) for value in present):
        return "bool"
    if any(isinstance(value, bool | np.bool_) for value in present):
        return None  # booleans among numbers or text
    if all(isinstance(value, int | np.integer) for value in present):
        return "int64"
    if all(isinstance(value, int | float | np.integer | np.floating) for value in present):
        return "float64"
    return None  # of several kinds


def _follow(step: Any, positions: list[int], found: dict[int, ColumnKind]) -> None:
    """Record what ``step``, given the model's input columns at ``positions`` in order, says
    of them."""
    if step is None or isinstance(step, str):  # "passthrough", "drop"
        return
    steps = getattr(step, "steps", None)
    if isinstance(steps, list) and steps and isinstance(steps[0], tuple):
        for _, inner in steps:
            _follow(inner, positions, found)
            if not _keeps_columns(inner):
                return  # what follows reads this step's output, not the input's columns
        return
    transformers = getattr(step, "transformers_", None)
    if isinstance(transformers, list):  # a ColumnTransformer
        names = fitted_column_names(step)
        for entry in transformers:
            if isinstance(entry, tuple) and len(entry) == 3:
                chosen = _selected(entry[2], len(positions), names)
                if chosen is not None:
                    _follow(entry[1], [positions[index] for index in chosen], found)
        return
    union = getattr(step, "transformer_list", None)
    if isinstance(union, list):  # a FeatureUnion
        for entry in union:
            if isinstance(entry, tuple) and len(entry) == 2:
                _follow(entry[1], positions, found)
        return
    preprocessor = getattr(step, "_preprocessor", None)
    if hasattr(preprocessor, "transformers_"):
        # HistGradientBoosting's native categories (categorical_features="from_dtype"): its
        # own ColumnTransformer encodes the category columns.
        _follow(preprocessor, positions, found)
        return
    catboost_text = _catboost_text_columns(step, len(positions))
    if catboost_text is not None:
        # CatBoost's own categorical and text features: it reads their values as text (a
        # category given as a number is hashed as its digits), and refuses a float there.
        for index in catboost_text:
            _record(found, positions[index], ColumnKind(dtype="string", missing=False))
        return
    categories = getattr(step, "categories_", None)
    if isinstance(categories, list) and _one_list_per_column(categories, len(positions)):
        refuses_unknown = getattr(step, "handle_unknown", None) == "error"
        for position, values in zip(positions, categories, strict=True):
            known = frozenset(values.tolist()) if refuses_unknown else None
            objects = values.dtype.kind == "O"
            kind = ColumnKind(
                dtype=dtype_of_categories(values),
                known=known,
                objects=objects,
                learnt_none=objects and any(value is None for value in values.tolist()),
            )
            _record(found, position, kind)
        return
    if _is_text_vectorizer(step) and len(positions) == 1:
        _record(found, positions[0], ColumnKind(dtype="string"))
        return
    if getattr(getattr(step, "_fit_dtype", None), "kind", None) == "O":
        # An imputer fitted on objects (text): any value, unless an encoder after it says.
        replaces_none = getattr(step, "missing_values", _UNSET) is None
        for position in positions:
            _record(found, position, ColumnKind(dtype=None, learnt_none=replaces_none))


def _catboost_text_columns(step: Any, width: int) -> list[int] | None:
    """The positions of a fitted CatBoost estimator's categorical and text features (its
    scikit-learn classes keep them in the model); None for any other step. Read as numbers,
    such a model's rows were refused ("must be numbers"), every request."""
    if not type(step).__module__.startswith("catboost"):
        return None
    try:
        indices = [*step.get_cat_feature_indices(), *step.get_text_feature_indices()]
    except Exception:  # not fitted, or not a model (a Pool)
        return None
    return sorted({int(index) for index in indices if 0 <= int(index) < width})


def _record(found: dict[int, ColumnKind], position: int, kind: ColumnKind) -> None:
    """A column read by several encoders (a FeatureUnion's, or selected twice) keeps the
    first one's dtype and takes only the values every refusing encoder knows."""
    earlier = found.get(position)
    if earlier is None or earlier.dtype is None:
        # An imputer's column (dtype None) takes the dtype of the encoder after it; None,
        # learnt by either, still reaches the imputer first.
        learnt_none = kind.learnt_none or (earlier is not None and earlier.learnt_none)
        found[position] = dataclasses.replace(kind, learnt_none=learnt_none)
        return
    known = earlier.known
    if kind.known is not None:
        known = kind.known if earlier.known is None else earlier.known & kind.known
    objects = earlier.objects or kind.objects
    missing = earlier.missing and kind.missing
    found[position] = ColumnKind(
        dtype=earlier.dtype,
        known=known,
        objects=objects,
        missing=missing,
        learnt_none=earlier.learnt_none or kind.learnt_none,
    )


def encodes_missing(step: Any) -> bool:
    """Whether a fitted encoder turns a missing value (NaN) of every column it reads into
    numbers itself, so nothing after it sees one: a TargetEncoder (an unknown category's
    target mean), a OneHotEncoder whose categories hold NaN or that ignores unknown ones (a
    row of zeros), an OrdinalEncoder that gives NaN (as a learnt category, or as an unknown
    one) a number. Its null was refused as not text, though the model answers it."""
    import numpy as np

    kind = type(step)
    if not kind.__module__.startswith("sklearn.preprocessing"):
        return False
    if kind.__name__ == "TargetEncoder":
        return True
    categories = getattr(step, "categories_", None)
    if not isinstance(categories, list) or not categories:
        return False
    learnt = all(_holds_nan(values) for values in categories)
    if kind.__name__ == "OneHotEncoder":
        return learnt or getattr(step, "handle_unknown", "error") != "error"
    if kind.__name__ == "OrdinalEncoder":
        if learnt:
            return _is_number(getattr(step, "encoded_missing_value", np.nan))
        unseen = not any(_holds_nan(values) for values in categories)
        return (
            unseen
            and getattr(step, "handle_unknown", "error") == "use_encoded_value"
            and _is_number(getattr(step, "unknown_value", None))
        )
    return False


def _holds_nan(values: Any) -> bool:
    return any(isinstance(v, float) and v != v for v in getattr(values, "tolist", list)())


def _is_number(value: Any) -> bool:
    """A number that is not NaN (an encoder's stand-in for a missing or unknown value)."""
    return isinstance(value, int | float) and not isinstance(value, bool) and value == value


def is_passthrough(step: Any) -> bool:
    """Whether a step hands its input on unchanged: "passthrough" (or None) as written, and
    as recent scikit-learn keeps a ColumnTransformer's ``remainder="passthrough"`` once
    fitted, an identity FunctionTransformer (no ``func``), whose tags (``allow_nan`` False)
    say nothing of what it passes on."""
    if step is None or (isinstance(step, str) and step == "passthrough"):
        return True
    return _is_function_transformer(step) and getattr(step, "func", None) is None


def _is_function_transformer(step: Any) -> bool:
    return type(step).__name__ == "FunctionTransformer" and type(step).__module__.startswith(
        "sklearn."
    )


def _keeps_columns(step: Any) -> bool:
    """Whether a pipeline step's output has the input's columns, in order, for the next step
    to read: an imputer without indicator columns, a FunctionTransformer (most often a
    cleaning of values in place), "passthrough"."""
    if is_passthrough(step):
        return True
    module = type(step).__module__
    if module.startswith("sklearn.impute"):
        return hasattr(step, "add_indicator") and not step.add_indicator
    return _is_function_transformer(step)


def _one_list_per_column(categories: list[Any], width: int) -> bool:
    import numpy as np

    return len(categories) == width and all(
        isinstance(c, np.ndarray) and c.ndim == 1 for c in categories
    )


def _is_text_vectorizer(step: Any) -> bool:
    """CountVectorizer, TfidfVectorizer, HashingVectorizer: one column of text."""
    return hasattr(step, "build_analyzer") and hasattr(step, "transform")


def _selected(selection: Any, width: int, names: list[str] | None) -> list[int] | None:
    """The positions (in its input of ``width`` columns, named ``names`` if fitted on a
    DataFrame) a ColumnTransformer's fitted entry selects, or None if unsure."""
    import numpy as np

    if isinstance(selection, np.ndarray):
        selection = selection.tolist()
    if isinstance(selection, str):
        return [names.index(selection)] if names and selection in names else None
    if isinstance(selection, int | np.integer) and not isinstance(selection, bool):
        return [int(selection) % width] if -width <= selection < width else None
    if isinstance(selection, slice):
        if all(isinstance(end, int | None) for end in (selection.start, selection.stop)):
            return list(range(width))[selection]
        return None  # a slice of names: rare, and inclusive of its end
    if not isinstance(selection, list | tuple):
        return None
    items = list(selection)
    if all(isinstance(item, str) for item in items):
        if names is None or not all(item in names for item in items):
            return None
        return [names.index(item) for item in items]
    if all(isinstance(item, bool | np.bool_) for item in items):
        return (
            [index for index, chosen in enumerate(items) if chosen] if len(items) == width else None
        )
    if all(isinstance(item, int | np.integer) and -width <= item < width for item in items):
        return [int(item) % width for item in items]
    return None
