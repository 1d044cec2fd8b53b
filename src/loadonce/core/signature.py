"""InputSignature and TensorInfo: what a model says about its inputs and outputs."""

from __future__ import annotations

from dataclasses import dataclass

# The name of a model's one output where the model names none: its tensor under /v2.
DEFAULT_OUTPUT = "output"

_KIND_WORDS = {"f": "numbers", "i": "integers", "u": "non-negative integers", "b": "booleans"}


def dtype_words(dtype: str | None) -> str:
    """How a message names the values of a dtype: 'numbers', 'integers', 'strings'..."""
    import numpy as np

    if dtype is None:
        return "values"
    if dtype == "string":
        return "strings"
    return _KIND_WORDS.get(np.dtype(dtype).kind, dtype)


@dataclass(frozen=True, kw_only=True)
class InputSignature:
    """What one example must look like.

    ``shape`` is the shape of one example (``()`` for a scalar, ``(4,)`` for four features;
    ``None`` in a dimension accepts any size). ``dtype`` is the NumPy dtype the predictor gets
    (``"float64"``, ``"float32"``, ``"int64"``, ``"bool"``), ``"string"``, or ``None`` when the
    predictor accepts any JSON value as it is.

    ``columns``: for an example that is a row whose columns differ in kind (text and numbers,
    what a scikit-learn ColumnTransformer fitted on an object array takes), each column's
    dtype (``"string"``, a number dtype, or None for any value); ``dtype`` is then
    ``"object"``, the NumPy array the predictor gets.
    """

    shape: tuple[int | None, ...]
    dtype: str | None = None
    columns: tuple[str | None, ...] | None = None

    def describe(self) -> str:
        if self.columns is not None:
            kinds = ", ".join(_column_words(dtype) for dtype in self.columns)
            return f"an array of shape [{len(self.columns)}] whose columns are: {kinds}"
        words = dtype_words(self.dtype)
        if not self.shape:
            return f"a single value ({words})"
        dims = ", ".join("*" if d is None else str(d) for d in self.shape)
        return f"an array of shape [{dims}] of {words}"


def _column_words(dtype: str | None) -> str:
    return {"string": "text", None: "any value"}.get(dtype) or dtype_words(dtype)[:-1]


@dataclass(frozen=True, kw_only=True)
class TensorInfo:
    """One named input or output as the model format describes it, for /models/{name}.

    ``shape`` includes the batch dimension first; ``None`` marks a variable dimension.
    ``also_takes``: dtypes an input takes besides ``dtype`` (a DataFrame column whose dtype
    the model did not record takes booleans as well as numbers).
    ``optional``: an input the model runs without (an ONNX graph's ``optional(tensor)``
    input): a request may leave it out, for all of its examples.
    """

    name: str
    dtype: str | None
    shape: tuple[int | None, ...] | None
    also_takes: tuple[str, ...] = ()
    optional: bool = False
