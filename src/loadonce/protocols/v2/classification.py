"""Triton's classification extension: a requested output whose ``parameters.classification``
is N is answered, instead of its values, by each example's N highest values, as BYTES
``"<value>:<index>"`` strings, highest first (shape ``[batch, min(N, values per example)]``).

What tritonclient's ``InferRequestedOutput(name, class_count=N)`` asks for, on REST and gRPC
alike. As Triton writes them: a float as C's ``%f`` (``0.750000``), an integer as is, the index
into the example's values read row-major. Equal values keep the order of their indices, and a
NaN ranks below every number. No ``:<label>``: loadonce has no label files.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from loadonce.core.errors import InvalidInputError
from loadonce.protocols.v2.datatypes import BYTES, datatype_of_declared
from loadonce.protocols.v2.outputs import OutputTensor
from loadonce.protocols.v2.schemas import RequestOutput
from loadonce.runtimes import TensorInfo

EXTENSION = "classification"
CLASSIFICATION = "classification"
# Triton's own refusal: a boolean or a text has no order of classes.
_UNCLASSIFIABLE = ("BOOL", BYTES)
_FLOATS = ("FP16", "FP32", "FP64", "BF16")


class ClassificationError(InvalidInputError):
    """A classification the output cannot give (HTTP 400, gRPC INVALID_ARGUMENT): the
    client's request, not the model's failure, even where only the answer tells."""

    def client_message(self) -> str:
        return str(self)  # about the output asked for, not the inputs


def class_counts(requested: Sequence[RequestOutput]) -> dict[str, int]:
    """By output name, the classes each requested output asks for (0 asks for none, as in
    Triton: the output itself)."""
    counts: dict[str, int] = {}
    for output in requested:
        count = (output.parameters or {}).get(CLASSIFICATION, 0)
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            raise ClassificationError(
                f"output '{output.name}': parameters.{CLASSIFICATION} must be the number of "
                f"classes to answer (a non-negative integer); got {count!r}"
            )
        if count:
            counts[output.name] = count
    return counts


def check_declared(counts: Mapping[str, int], declared: Sequence[TensorInfo]) -> None:
    """Before the model runs: no classification of an output it declares as text or
    booleans."""
    if not counts:  # most requests: nothing to check
        return
    for tensor in declared:
        if tensor.name in counts:
            _check_datatype(tensor.name, datatype_of_declared(tensor.dtype))


def classified(tensor: OutputTensor, count: int) -> OutputTensor:
    """The tensor's top ``count`` classes per example, as BYTES."""
    _check_datatype(tensor.name, tensor.datatype)
    array = tensor.array
    batch = array.shape[0]
    rows = array.reshape(batch, -1)
    kept = min(count, rows.shape[1])
    floats = tensor.datatype in _FLOATS
    top = _top_indices(rows, kept, floats=floats)
    values = np.take_along_axis(rows, top, axis=1)
    write = _float_text if floats else _integer_text
    classes = np.empty((batch, kept), dtype=object)
    for position, (value, index) in enumerate(zip(values.flat, top.flat, strict=True)):
        classes.flat[position] = f"{write(value)}:{index}".encode("ascii")
    return OutputTensor(tensor.name, BYTES, classes)


def _check_datatype(name: str, datatype: str | None) -> None:
    if datatype in _UNCLASSIFIABLE:
        raise ClassificationError(
            f"output '{name}' is {datatype}: the classification extension ranks numbers; "
            "request it without parameters.classification"
        )


def _top_indices(rows: npt.NDArray[Any], kept: int, *, floats: bool) -> npt.NDArray[np.intp]:
    """Each row's indices of its ``kept`` highest values, highest first, equal values by
    index. (A stable ascending sort of the reversed row, read backwards: negating values
    would wrap unsigned integers.)"""
    if floats:
        # As FP64, which holds every FP16, BF16 and FP32 value exactly, with NaN as the
        # lowest: NumPy sorts it above every number, which made it the top class.
        wide = rows.astype(np.float64)
        rows = np.where(np.isnan(wide), -np.inf, wide)
    width = rows.shape[1]
    ascending: npt.NDArray[np.intp] = np.argsort(rows[:, ::-1], axis=1, kind="stable")
    top: npt.NDArray[np.intp] = (width - 1 - ascending[:, ::-1])[:, :kept]
    return top


def _float_text(value: Any) -> str:
    return f"{float(value):f}"


def _integer_text(value: Any) -> str:
    return str(int(value))
