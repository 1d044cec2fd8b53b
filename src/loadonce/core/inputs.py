"""Reading a request's ``inputs`` into a list of examples, and checking them against a signature."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from loadonce.core.errors import InvalidInputError
from loadonce.core.number_conversion import (
    LossyConversionError,
    convert_numbers,
    nulls_as_nan,
    numbers_only,
)
from loadonce.core.signature import InputSignature, TensorInfo

if TYPE_CHECKING:
    import numpy.typing as npt


def split_examples(
    inputs: Any, signature: InputSignature | None, named: Sequence[TensorInfo] = ()
) -> list[Any]:
    """Return the examples in ``inputs``: one example, or a list of examples.

    With a signature, the nesting depth decides: depth equal to the example's rank is one
    example, one more is a list of them. Without one, a list is a list of examples and any other
    value is a single example, except for a model whose ``named`` inputs each take one value
    per example (the columns of a table): an object of lists is then its columns, one list per
    input, and row i of every list is example i.
    """
    if signature is None and _takes_columns(named) and _is_columns(inputs):
        return _rows_of_columns(inputs)
    if signature is None:
        if not isinstance(inputs, list):
            return [inputs]
        if not inputs:
            raise InvalidInputError("inputs is an empty list: send at least one example")
        return list(inputs)
    rank = len(signature.shape)
    depth = _nesting_depth(inputs)
    if depth == rank:
        return [inputs]
    if depth == rank + 1:
        if not inputs:
            raise InvalidInputError("inputs is an empty list: send at least one example")
        return list(inputs)
    raise InvalidInputError(
        f"inputs must be one example ({signature.describe()}) or a list of such examples; "
        + ("got a single value" if depth == 0 else f"got lists nested {depth} deep")
    )


def _takes_columns(named: Sequence[TensorInfo]) -> bool:
    """Whether every named input takes one value per example (its shape is the batch only)."""
    return bool(named) and all(t.shape is not None and len(t.shape) == 1 for t in named)


def _is_columns(inputs: Any) -> bool:
    return (
        isinstance(inputs, dict) and bool(inputs) and all(type(v) is list for v in inputs.values())
    )


def _rows_of_columns(columns: dict[str, list[Any]]) -> list[dict[str, Any]]:
    """Columns of equal length as one object per row (the examples a multi-input model takes)."""
    lengths = {name: len(values) for name, values in columns.items()}
    if len(set(lengths.values())) > 1:
        # A few columns are enough to show the mismatch; the names are the client's own.
        listing = ", ".join(f"'{name[:64]}' {length}" for name, length in list(lengths.items())[:5])
        raise InvalidInputError(
            f"the columns differ in length: {listing}; every column must hold one value per row"
        )
    names = list(columns)
    rows = [dict(zip(names, row, strict=True)) for row in zip(*columns.values(), strict=True)]
    if not rows:
        raise InvalidInputError("the columns are empty: send at least one row")
    return rows


def _nesting_depth(value: Any) -> int:
    depth = 0
    while isinstance(value, list):
        depth += 1
        if not value:
            break
        value = value[0]
    return depth


# An example of up to this many elements is converted before its shape is checked.
_CONVERTED_AT_ONCE = 4096


def _list_shape(value: list[Any]) -> list[int]:
    """A nested list's shape as NumPy would read it, from the first element at each depth."""
    shape: list[int] = []
    while type(value) is list:
        shape.append(len(value))
        if not value:
            break
        value = value[0]
    return shape


def as_typed_batch(
    examples: list[Any],
    signature: InputSignature,
    *,
    tensor: str | None = None,
    missing_as_nan: bool = False,
) -> npt.NDArray[Any]:
    """Stack examples into one array of the signature's dtype and check each example's shape.

    Values are converted only where nothing is lost: integers to floats, never floats to
    integers, never strings to numbers. ``tensor`` names the input in messages. With
    ``missing_as_nan`` (a model that takes NaN as a missing value), JSON's ``null`` among the
    numbers of a float input is NaN: JSON has no other way to say "missing".
    """
    where = f"input '{tensor}': " if tensor else ""
    # A long example whose first dimension is not the signature's is refused before NumPy
    # converts it: converting a list holds the GIL throughout (30 million numbers in one
    # example held the event loop 2.5 s, only to be refused). (A short one is converted:
    # a ragged batch is said as such.)
    first = signature.shape[0] if signature.shape else None
    for example in examples if first is not None else ():
        if type(example) is not list or len(example) <= _CONVERTED_AT_ONCE:
            continue
        if len(example) != first:
            shape = ", ".join(map(str, _list_shape(example)))
            raise InvalidInputError(
                f"{where}each example must be {signature.describe()}; got shape [{shape}]"
            )
    try:
        if signature.columns is not None:
            batch = _rows_of_kinds(examples, signature.columns, missing_as_nan)
        else:
            batch = _convert(examples, signature.dtype, missing_as_nan)
    except (ValueError, TypeError, OverflowError) as exc:
        raise InvalidInputError(
            f"{where}each example must be {signature.describe()}, all of the same shape: {exc}"
        ) from None
    got = batch.shape[1:]
    expected = signature.shape
    if len(got) != len(expected) or any(
        e is not None and e != g for e, g in zip(expected, got, strict=True)
    ):
        shape = ", ".join(map(str, got))
        raise InvalidInputError(
            f"{where}each example must be {signature.describe()}; got shape [{shape}]"
        )
    return batch


def _convert(examples: list[Any], dtype: str | None, missing_as_nan: bool) -> npt.NDArray[Any]:
    import numpy as np

    if dtype == "string":
        raw = np.asarray(examples, dtype=object)
        # null: a missing value, for a model that takes one (NaN, as pandas and
        # scikit-learn mark a missing category); refused by any other.
        allowed = (str, type(None)) if missing_as_nan else str
        if not all(isinstance(v, allowed) for v in raw.reshape(-1)):
            raise TypeError("expected strings" + (" (or null)" if missing_as_nan else ""))
        if missing_as_nan:
            raw[raw == None] = np.nan  # noqa: E711 - element-wise, NumPy's comparison
        return raw
    try:
        raw = np.asarray(examples)
    except ValueError:  # NumPy's "inhomogeneous shape after 1 dimensions..."
        raise ValueError("the examples are not a rectangular array") from None
    # An object array of numbers only holds an integer past int64's range (convert_numbers
    # converts or refuses it), not a ragged array.
    if raw.dtype == object and not (dtype is not None and numbers_only(raw)):
        if any(value is None for value in raw.reshape(-1)):
            if missing_as_nan and dtype is not None and np.dtype(dtype).kind == "f":
                return nulls_as_nan(raw).astype(dtype, copy=False)
            raise ValueError("got null, which is not a value")  # else misread as ragged
        raise ValueError("the examples are not a rectangular array")
    if dtype is None:
        return raw
    try:
        return convert_numbers(raw, np.dtype(dtype), examples)
    except LossyConversionError as exc:
        raise TypeError(str(exc)) from None


def _rows_of_kinds(
    examples: list[Any], columns: tuple[str | None, ...], missing_as_nan: bool
) -> npt.NDArray[Any]:
    """Rows whose columns differ in kind, as one object array: each value of its column's
    kind, a number column's as a Python number. A number column takes a number or its text:
    the Open Inference Protocol carries a row of text and numbers as BYTES only (and NumPy
    made a JSON row of them all text, "2.0", which reached the model so)."""
    import numpy as np

    width = len(columns)
    batch = np.empty((len(examples), width), dtype=object)
    for row, example in enumerate(examples):
        if not isinstance(example, list | np.ndarray) or len(example) != width:
            raise ValueError(f"example {row} is not a row of {width} values")
        for column, (value, dtype) in enumerate(zip(example, columns, strict=True)):
            try:
                batch[row, column] = _value_of_kind(value, dtype, missing_as_nan)
            except (ValueError, TypeError, OverflowError) as exc:
                raise ValueError(f"column {column}: {exc}") from None
    return batch


def _value_of_kind(value: Any, dtype: str | None, missing_as_nan: bool) -> Any:
    import numpy as np

    if isinstance(value, list | dict):
        raise TypeError(f"got a {'list' if isinstance(value, list) else 'object'}, not a value")
    if value is None:
        if missing_as_nan:
            return np.nan  # a missing value, as pandas and scikit-learn mark one
        raise TypeError("got null, which is not a value")
    if dtype is None:
        return value
    if dtype == "string":
        if not isinstance(value, str):
            raise TypeError(f"expected text, got {type(value).__name__} {str(value)[:40]}")
        return value
    kind = np.dtype(dtype).kind
    if kind == "b":
        if not isinstance(value, bool | np.bool_):
            raise TypeError(f"expected true or false, got {str(value)[:40]!r}")
        return bool(value)
    if isinstance(value, bool | np.bool_):
        raise TypeError("expected a number; true and false are not")
    if isinstance(value, str):
        value = _number_in_text(value, integer=kind in "iu")
    if not isinstance(value, int | float | np.integer | np.floating):
        raise TypeError(f"expected a number, got {type(value).__name__}")
    if kind in "iu":
        if not float(value).is_integer():
            raise ValueError(f"expected an integer, got {value}")
        return int(value)
    return float(value)


# A number's text as JSON writes one (an optional sign, ASCII digits, a fraction, an
# exponent), or the words of NaN and the infinities as JSON's common extension and Python
# write them (NaN, Infinity, nan, inf). float() and int() take more: "1_0" (10), "١٢" (12,
# in Arabic-Indic digits), spaces around the digits, none of which a client means as a number.
_NUMBER_TEXT = re.compile(
    r"[+-]?(?:(?P<integer>0|[1-9][0-9]*)(?P<more>\.[0-9]+)?(?P<exponent>[eE][+-]?[0-9]+)?"
    r"|(?i:nan|inf|infinity))"
)


def _number_in_text(text: str, *, integer: bool) -> int | float:
    """The number a text says, as the JSON number it writes would be read: an integer
    exactly, anything else a float (its checks are then the number's own)."""
    found = _NUMBER_TEXT.fullmatch(text)
    try:
        if found is None:
            raise ValueError
        if found["integer"] is not None and found["more"] is None and found["exponent"] is None:
            return int(text)
        return float(text)
    except ValueError:  # not a number's text, or more digits than int() reads
        words = "an integer" if integer else "a number"
        raise ValueError(f"expected {words}, got the text {text[:40]!r}") from None
