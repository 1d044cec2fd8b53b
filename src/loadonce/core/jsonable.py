"""Turning model outputs (NumPy arrays and scalars, tuples, dicts, bytes) into JSON values.

Nothing is lost: NumPy numbers become Python numbers of the same value; floats that JSON
cannot carry become the strings "NaN", "Infinity" and "-Infinity" (as in protobuf's JSON
mapping); bytes become text when they are UTF-8, else {"base64": ...}.
"""

from __future__ import annotations

import base64
import math
from typing import Any

import numpy as np


def to_jsonable(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        if value.dtype.kind == "f" and not np.isfinite(value).all():
            return to_jsonable(value.tolist())
        if value.dtype.kind in "OSV":
            return to_jsonable(value.tolist())
        return value.tolist()
    if isinstance(value, np.generic):
        return to_jsonable(value.item())
    if isinstance(value, float):
        return value if math.isfinite(value) else _non_finite(value)
    if isinstance(value, bytes):
        return _bytes(value)
    if isinstance(value, list | tuple):
        return [to_jsonable(item) for item in value]
    if isinstance(value, dict):
        return {str(key): to_jsonable(item) for key, item in value.items()}
    return value


def _non_finite(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    return "Infinity" if value > 0 else "-Infinity"


def _bytes(value: bytes) -> Any:
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        return {"base64": base64.b64encode(value).decode("ascii")}
