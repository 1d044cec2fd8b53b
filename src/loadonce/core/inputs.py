"""Reading a request's ``inputs`` into a list of examples, and checking them against a signature."""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from loadonce.core.errors import InvalidInputError
from loadonce.core.number_conversion import LossyConversionError, convert_numbers
from loadonce.core.signature import InputSignature


def split_examples(inputs: Any, signature: InputSignature | None) -> list[Any]:
    """Return the examples in ``inputs``: one example, or a list of examples.

    With a signature, the nesting depth decides: depth equal to the example's rank is one
    example, one more is a list of them. Without one, a list is a list of examples and any other
    value is a single example.
    """
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


def _nesting_depth(value: Any) -> int:
    depth = 0
    while isinstance(value, list):
        depth += 1
        if not value:
            break
        value = value[0]
    return depth


def as_typed_batch(
    examples: list[Any], signature: InputSignature, *, tensor: str | None = None
) -> npt.NDArray[Any]:
    """Stack examples into one array of the signature's dtype and check each example's shape.

    Values are converted only where nothing is lost: integers to floats, never floats to
    integers, never strings to numbers. ``tensor`` names the input in messages.
    """
    where = f"input '{tensor}': " if tensor else ""
    try:
        batch = _convert(examples, signature.dtype)
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


def _convert(examples: list[Any], dtype: str | None) -> npt.NDArray[Any]:
    if dtype == "string":
        raw = np.asarray(examples, dtype=object)
        if not all(isinstance(v, str) for v in raw.reshape(-1)):
            raise TypeError("expected strings")
        return raw
    raw = np.asarray(examples)
    if raw.dtype == object:
        raise ValueError("the examples are not a rectangular array")
    if dtype is None:
        return raw
    try:
        return convert_numbers(raw, np.dtype(dtype), examples)
    except LossyConversionError as exc:
        raise TypeError(str(exc)) from None
