"""Turning model outputs (NumPy arrays and scalars, tuples, dicts, bytes) into JSON values.

Nothing is lost: NumPy numbers become Python numbers of the same value; floats that JSON
cannot carry become the strings "NaN", "Infinity" and "-Infinity" (as in protobuf's JSON
mapping); bytes become text when they are UTF-8, else {"base64": ...}. What JSON has no type
for is written as what it stands for: a date or time (Python's, NumPy's datetime64, pandas'
Timestamp) as ISO 8601 text, a duration as seconds, a Decimal as a number, a set as a list,
a tensor or anything else with ``__array__`` as its array, pandas' missing values as null.
Anything else (a complex number, an arbitrary object) is the model's error, said with its type:
the same on every route (the JSON route answered "the server failed", /v2 the object's
``str()``, memory address and all).
"""

from __future__ import annotations

import base64
import contextlib
import datetime
import decimal
import math
from typing import Any

import numpy as np

from loadonce.core.errors import ModelRaisedError


def to_jsonable(value: Any) -> Any:
    """``value`` as JSON values; ModelRaisedError for what JSON cannot carry (a complex
    number, an arbitrary object, an output that contains itself)."""
    try:
        return _jsonable(value)
    except RecursionError:
        raise _unwritable("nests too deeply (or contains itself)") from None


def _jsonable(value: Any) -> Any:
    if isinstance(value, str | int | bool) or value is None:
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else _non_finite(value)
    if isinstance(value, np.ndarray):
        return _array(value)
    if isinstance(value, np.generic):
        return _numpy_scalar(value)
    if isinstance(value, bytes):
        return _bytes(value)
    if isinstance(value, list | tuple):
        return [_jsonable(item) for item in value]
    if isinstance(value, dict):
        return {str(key): _jsonable(item) for key, item in value.items()}
    return _other(value)


def _array(value: np.ndarray[Any, Any]) -> Any:
    kind = value.dtype.kind
    exact = kind in "biu" or (kind == "f" and np.isfinite(value).all())
    if exact and value.dtype.itemsize <= 8:
        return value.tolist()
    if kind == "M":
        return np.datetime_as_string(value).tolist()
    if kind == "m":  # seconds; a missing duration (NaT) as NaN is, "NaN"
        return _array(value / np.timedelta64(1, "s"))
    if kind == "c":
        raise _unwritable("holds complex numbers")
    if kind == "f" and value.dtype.itemsize > 8:  # long double: float64's nearest
        value = value.astype(np.float64)
    listed = value.tolist()  # a 0-d array's is its one value, not a list
    return [_jsonable(item) for item in listed] if isinstance(listed, list) else _jsonable(listed)


def _numpy_scalar(value: np.generic) -> Any:
    if isinstance(value, np.datetime64):
        return str(np.datetime_as_string(value))
    if isinstance(value, np.timedelta64):
        return _jsonable(float(value / np.timedelta64(1, "s")))
    if isinstance(value, np.complexfloating):
        raise _unwritable("holds complex numbers")
    if isinstance(value, np.floating):
        return _jsonable(float(value))  # a long double's item() is itself
    return _jsonable(value.item())


def _other(value: Any) -> Any:
    if isinstance(value, datetime.datetime | datetime.date | datetime.time):
        if _is_pandas(value, "NaTType"):
            return None
        return value.isoformat()
    if isinstance(value, datetime.timedelta):
        return value.total_seconds()
    if isinstance(value, decimal.Decimal):
        return "NaN" if value.is_nan() else _jsonable(float(value))  # sNaN refuses float()
    if isinstance(value, set | frozenset):
        items = list(value)
        with contextlib.suppress(TypeError):  # items of kinds that do not compare: as they are
            items.sort()  # a set has no order; sorted, the answer is the same every time
        return [_jsonable(item) for item in items]
    if _is_pandas(value, "NAType") or _is_pandas(value, "NaTType"):
        return None
    if isinstance(value, complex):
        raise _unwritable("holds complex numbers")
    if hasattr(value, "__array__"):  # a tensor, a pandas Series, an array-like
        return _array(np.asarray(value))
    raise _unwritable(f"holds a {type(value).__name__}")


def _is_pandas(value: Any, name: str) -> bool:
    kind = type(value)
    return kind.__name__ == name and kind.__module__.startswith("pandas")


def _unwritable(what: str) -> ModelRaisedError:
    return ModelRaisedError(TypeError(f"the model's output {what}, which JSON cannot carry"))


def _non_finite(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    return "Infinity" if value > 0 else "-Infinity"


def _bytes(value: bytes) -> Any:
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        return {"base64": base64.b64encode(value).decode("ascii")}
