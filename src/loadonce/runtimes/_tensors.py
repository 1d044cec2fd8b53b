"""Helpers for runtimes whose models take and return batch-first arrays (ONNX, PyTorch)."""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from loadonce.core.errors import InvalidInputError
from loadonce.core.inputs import as_typed_batch
from loadonce.runtimes._base import InputSignature, TensorInfo

if TYPE_CHECKING:
    import numpy.typing as npt


def example_signature(tensor: TensorInfo) -> InputSignature:
    """The shape of one example of a batch-first tensor: its shape without the batch dim."""
    shape = tensor.shape or (None,)
    return InputSignature(shape=tuple(shape[1:]), dtype=tensor.dtype)


def stack_named_inputs(
    examples: list[Any], tensors: Sequence[TensorInfo], *, missing_as_nan: bool = False
) -> dict[str, npt.NDArray[Any]]:
    """Examples of a multi-input model are objects keyed by input name; stack each input.
    An optional input (``TensorInfo.optional``) left out of every example is left out of the
    batch (the model runs without it); given for some examples only, it is refused."""
    names = [t.name for t in tensors]
    left_out = {
        t.name
        for t in tensors
        if t.optional and not any(isinstance(e, Mapping) and t.name in e for e in examples)
    }
    for index, example in enumerate(examples):
        if not isinstance(example, Mapping):
            raise InvalidInputError(
                f"this model has several inputs ({', '.join(names)}): each example must be an "
                f"object with one value per input; example {index} is not"
            )
        missing = [n for n in names if n not in example and n not in left_out]
        extra = [k for k in example if k not in names]
        if missing or extra:
            raise InvalidInputError(
                f"example {index}: "
                + (f"missing input(s) {', '.join(missing)}" if missing else "")
                + ("; " if missing and extra else "")
                + (f"unknown input(s) {', '.join(map(str, extra))}" if extra else "")
                + f"; the model's inputs are {', '.join(names)}"
                + _optional_note(tensors, missing)
            )
    return {
        t.name: as_typed_batch(
            [e[t.name] for e in examples],
            example_signature(t),
            tensor=t.name,
            missing_as_nan=missing_as_nan,
        )
        for t in tensors
        if t.name not in left_out
    }


def _optional_note(tensors: Sequence[TensorInfo], missing: list[str]) -> str:
    optional = [t.name for t in tensors if t.optional and t.name in missing]
    if not optional:
        return ""
    return (
        f" ({', '.join(optional)} optional: give it for every example of the request, or for none)"
    )


def batch_rows(named: Sequence[tuple[str, Any]], count: int) -> list[tuple[Any, ...]]:
    """Row i of every batch-first array, for each example i; an array without a batch
    dimension of ``count`` is the model's error, said with the array's name."""
    import numpy as np

    for name, array in named:
        if np.ndim(array) == 0 or len(array) != count:
            raise RuntimeError(
                f"output '{name}' has shape {list(np.shape(array))}, not a batch of {count}"
            )
    return list(zip(*(array for _, array in named), strict=True))


def split_batch_outputs(
    named: Sequence[tuple[str, Any]], count: int, *, whole: Collection[str] = ()
) -> list[Any]:
    """One output per example: the row alone when the model has one output, an object keyed
    by output name when it has several. ``whole``: outputs without a batch dimension (a
    constant, a scalar), given whole to every example rather than cut into rows."""
    batched = [(name, array) for name, array in named if name not in whole]
    rows: list[tuple[Any, ...]] = batch_rows(batched, count) if batched else [()] * count
    if len(named) == 1:
        [(name, array)] = named
        return [array] * count if name in whole else [row[0] for row in rows]
    examples = []
    for row in rows:
        values = iter(row)
        examples.append({name: array if name in whole else next(values) for name, array in named})
    return examples
