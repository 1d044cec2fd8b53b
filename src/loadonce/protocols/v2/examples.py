"""From a request's input tensors to the model's examples: the first dimension is the batch.

Where the model records its inputs (ONNX, an exported PyTorch program, a declared input
shape), the request must name exactly those inputs, in their datatypes and with their fixed
dimensions; where it does not, any one tensor (or several, as objects keyed by name) is
passed on as it is, and the model's own checks answer.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from loadonce.core.errors import InvalidInputError
from loadonce.core.model import Model
from loadonce.protocols.v2.datatypes import BYTES, datatype_of_declared
from loadonce.protocols.v2.schemas import RequestInput
from loadonce.protocols.v2.shared_memory import refuse_shared_memory
from loadonce.protocols.v2.tensors import check_shape, dtype_of
from loadonce.runtimes import TensorInfo


def metadata_shape(shape: Sequence[int | None] | None) -> list[int]:
    """A declared shape as the protocol writes it: -1 for a variable dimension."""
    return [-1] if shape is None else [-1 if d is None else d for d in shape]


def examples_from_tensors(
    model: Model, arrays: Mapping[str, npt.NDArray[Any]], datatypes: Mapping[str, str]
) -> list[Any]:
    declared = list(model.inputs)
    if declared:
        shapes = {name: tuple(array.shape) for name, array in arrays.items()}
        check_declared_inputs(model, shapes, datatypes)
    batch = _batch_size(arrays)
    # Before a row is built: a tensor of shape [N, 0] carries no data, so its N comes from
    # nothing the body's bytes back (N empty rows were built, 1 GB for N = 6 million).
    model.refuse_if_too_many(batch)
    # Text, and rows of text and numbers (an "object" input, which only BYTES carries), reach
    # the model as str: bytes were never a category it learnt (its 500, "unknown categories").
    text = {t.name for t in declared if t.dtype in ("string", "object")}
    signature = model.signature
    if not declared and signature is not None and signature.dtype == "string":
        text = set(arrays)
    columns = {
        name: _text_rows(name, array) if name in text else list(array)
        for name, array in arrays.items()
    }
    if len(columns) == 1 and len(declared) <= 1:
        # One input, the model's only one (a model of several, an optional one left out,
        # takes objects keyed by input name).
        [rows] = columns.values()
        return rows
    return [{name: rows[i] for name, rows in columns.items()} for i in range(batch)]


def check_before_decoding(model: Model, inputs: Sequence[RequestInput]) -> None:
    """Each input's shape (one NumPy can hold), and the inputs against the model's declared
    ones, from the request's description of them, before any data is read."""
    for tensor in inputs:
        refuse_shared_memory("input", tensor.name, tensor.parameters)
        check_shape(tensor)
        dtype_of(tensor)  # refuses an unknown datatype, as such
    shapes = {tensor.name: tuple(tensor.shape) for tensor in inputs}
    check_declared_inputs(model, shapes, {tensor.name: tensor.datatype for tensor in inputs})


def check_declared_inputs(
    model: Model, shapes: Mapping[str, tuple[int, ...]], datatypes: Mapping[str, str]
) -> None:
    """The request's inputs against those the model declares (if it does): their names,
    datatypes and fixed dimensions. Called before the data is decoded too, from the
    request's shapes: converting a tensor of 30 million numbers held the GIL for seconds,
    only for a tensor the model could never take."""
    declared = list(model.inputs)
    if not declared:
        return
    names = [t.name for t in declared]
    missing = [t.name for t in declared if t.name not in shapes and not t.optional]
    unknown = [n for n in shapes if n not in names]
    if missing or unknown:
        problems = [f"missing input '{n}'" for n in missing]
        problems += [f"unknown input '{n}'" for n in unknown]
        raise InvalidInputError(f"{'; '.join(problems)}; the model's inputs are {', '.join(names)}")
    for tensor in declared:
        if tensor.name not in shapes:
            continue  # an optional input, left out
        expected = datatype_of_declared(tensor.dtype)
        got = datatypes[tensor.name]
        if expected is not None and got != expected:
            also = [datatype_of_declared(dtype) for dtype in tensor.also_takes]
            if got not in also:
                taken = " or ".join([expected, *(d for d in also if d is not None)])
                raise InvalidInputError(
                    f"input '{tensor.name}' is {got}, but the model takes {taken}"
                )
        _check_shape(tensor, shapes[tensor.name])


def _check_shape(tensor: TensorInfo, shape: tuple[int, ...]) -> None:
    if tensor.shape is None:
        return
    # The first dimension is the batch: requests of any size are merged and split again.
    fixed = list(tensor.shape[1:])
    given = list(shape[1:])
    if len(shape) != len(tensor.shape) or any(
        d is not None and d != g for d, g in zip(fixed, given, strict=True)
    ):
        raise InvalidInputError(
            f"input '{tensor.name}' has shape {list(shape)}, but the model takes "
            f"{metadata_shape(tensor.shape)} (-1: any size)"
        )


def _batch_size(arrays: Mapping[str, npt.NDArray[Any]]) -> int:
    if not arrays:
        # REST's schema refuses it first; gRPC's message may carry no input at all.
        raise InvalidInputError("the request has no inputs: send at least one input tensor")
    sizes: dict[str, int] = {}
    for name, array in arrays.items():
        if array.ndim == 0:
            raise InvalidInputError(
                f"input '{name}' has shape []: the first dimension is the batch, so send "
                "shape [1] for a single value"
            )
        sizes[name] = int(array.shape[0])
    if len(set(sizes.values())) > 1:
        listing = ", ".join(f"'{n}' {s}" for n, s in sizes.items())
        raise InvalidInputError(
            f"the inputs' first dimensions (the batch) differ: {listing}; they must be equal"
        )
    return next(iter(sizes.values()))


def _text_rows(name: str, array: npt.NDArray[Any]) -> list[Any]:
    """A BYTES tensor fed to a model that takes text: its elements as ``str``."""
    if array.dtype != object:
        raise InvalidInputError(f"input '{name}' must be {BYTES}: the model takes text")
    decoded = np.empty(array.shape, dtype=object)
    for index, value in np.ndenumerate(array):
        try:
            decoded[index] = value.decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidInputError(
                f"input '{name}': element {list(index)} is not UTF-8 text"
            ) from None
    return list(decoded) if decoded.ndim > 1 else decoded.tolist()
