"""Reading a request's ``inputs`` into a list of examples, and checking them against a signature."""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from loadonce._errors import InvalidInputError
from loadonce.runtimes._base import InputSignature


def split_examples(inputs: Any, signature: InputSignature | None) -> list[Any]:
    """Return the examples in ``inputs``: one example, or a list of examples.

    With a signature, the nesting depth decides: depth equal to the example's rank is one
    example, one more is a list of them. Without one, a list is a list of examples and any other
    value is a single example.
    """
    if signature is None:
        return list(inputs) if isinstance(inputs, list) else [inputs]
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


def as_numeric_batch(examples: list[Any], signature: InputSignature) -> npt.NDArray[np.float64]:
    """Stack numeric examples into one float64 array, or say exactly what does not fit."""
    try:
        batch = np.asarray(examples, dtype=np.float64)
    except (ValueError, TypeError) as exc:
        raise InvalidInputError(
            f"each example must be {signature.describe()}, all of the same shape: {exc}"
        ) from None
    got = batch.shape[1:]
    expected = signature.shape
    if len(got) != len(expected) or any(
        e is not None and e != g for e, g in zip(expected, got, strict=True)
    ):
        shape = ", ".join(map(str, got))
        raise InvalidInputError(f"each example must be {signature.describe()}; got shape [{shape}]")
    if not np.all(np.isfinite(batch)):
        raise InvalidInputError("inputs contain NaN or infinity; send finite numbers")
    return batch
