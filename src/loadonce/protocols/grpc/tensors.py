"""gRPC's tensors: inputs from typed ``contents`` or from ``raw_input_contents``, outputs into
typed ``contents`` or ``raw_output_contents``. Raw data is the REST binary extension's form
(little-endian; BYTES elements each a 4-byte little-endian length, then the bytes), so it is
read and written by the same code (``protocols/v2/tensors.py``, ``outputs.py``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from loadonce.core.errors import InvalidInputError
from loadonce.core.number_conversion import range_words
from loadonce.http.json_pieces import PIECE_ELEMENTS
from loadonce.protocols.grpc.messages import plain_parameters
from loadonce.protocols.v2.datatypes import BYTES
from loadonce.protocols.v2.outputs import OutputTensor
from loadonce.protocols.v2.request_counts import MAX_TENSORS, check_count
from loadonce.protocols.v2.schemas import RequestInput
from loadonce.protocols.v2.tensors import (
    check_dimension_count,
    check_element_sizes,
    check_shape,
    decode_binary_input,
    dtype_of,
    element_count,
)

# The typed field of InferTensorContents that carries each datatype (FP16 and BF16 have none:
# raw only).
CONTENTS_FIELD = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    BYTES: "bytes_contents",
}
_FIELDS = sorted(set(CONTENTS_FIELD.values()))
# Each numeric field's own protobuf type: its values are read at that type, which holds every
# one exactly (read without it, NumPy made a uint64 field with a value above 2**63 float64, and
# 2**64 - 1 came back as 0), then checked against the datatype's range.
_FIELD_DTYPE = {
    "bool_contents": np.dtype(np.bool_),
    "int_contents": np.dtype(np.int32),
    "int64_contents": np.dtype(np.int64),
    "uint_contents": np.dtype(np.uint32),
    "uint64_contents": np.dtype(np.uint64),
    "fp32_contents": np.dtype(np.float32),
    "fp64_contents": np.dtype(np.float64),
}


# What a parsed ModelInferRequest holds besides its bytes, on the high side of what was
# measured (protobuf's upb, one message of 4-8 MB parsed, the process's RSS): a packed
# number of one byte becomes 14.3 bytes an int64 (its 8, twice over: upb's arena grows by
# doubling), a BYTES element 28.6, a tensor message about 80.
_PARSED_TENSOR_BYTES = 256
_PARSED_ELEMENT_BYTES = 32
_CONTENTS_ITEM_BYTES = {field: 2 * dtype.itemsize for field, dtype in _FIELD_DTYPE.items()} | {
    "bytes_contents": _PARSED_ELEMENT_BYTES
}


def parsed_infer_bytes(request: Any) -> int:
    """About how many bytes the parsed ``request`` (a ModelInferRequest) holds: its message
    may be several times its bytes (a packed int64 of 1-byte varints is 8x), counted in the
    worker's body budget (``core/body_budget.py``) before its tensors are decoded. Every
    count read is kept by protobuf (no element is walked); past MAX_TENSORS tensors only
    theirs (the call is refused for them)."""
    inputs, outputs = request.inputs, request.outputs
    total = (len(inputs) + len(outputs)) * _PARSED_TENSOR_BYTES
    total += len(request.raw_input_contents) * _PARSED_ELEMENT_BYTES
    if len(inputs) > MAX_TENSORS:
        return total
    for tensor in inputs:
        total += len(tensor.shape) * _CONTENTS_ITEM_BYTES["int64_contents"]
        if tensor.HasField("contents"):
            contents = tensor.contents
            for field, size in _CONTENTS_ITEM_BYTES.items():
                total += len(getattr(contents, field)) * size
    return total


def decode_grpc_inputs(
    request: Any, *, max_element_bytes: int | None
) -> tuple[dict[str, npt.NDArray[Any]], dict[str, str]]:
    """The request's inputs as arrays of their shapes, and their datatypes, by name."""
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise InvalidInputError(
            f"raw_input_contents holds {len(raw)} tensors, but the request has "
            f"{len(request.inputs)} inputs: send one per input, in order"
        )
    arrays: dict[str, npt.NDArray[Any]] = {}
    datatypes: dict[str, str] = {}
    for index, tensor in enumerate(request.inputs):
        if tensor.name in arrays:
            raise InvalidInputError(f"input '{tensor.name}' is given twice")
        described = _described(tensor)
        if raw:
            if tensor.HasField("contents"):
                raise InvalidInputError(
                    f"input '{tensor.name}' has contents, but the request uses "
                    "raw_input_contents: send each input one way"
                )
            array = decode_binary_input(
                described, memoryview(raw[index]), max_element_bytes=max_element_bytes
            )
        else:
            array = _from_contents(described, tensor.contents)
            check_element_sizes(tensor.name, array, max_element_bytes)
        arrays[tensor.name] = array
        datatypes[tensor.name] = tensor.datatype
    return arrays, datatypes


def inputs_described(request: Any) -> list[RequestInput]:
    """The request's inputs as described (names, datatypes, shapes), without their data;
    first, in constant time, that the request names no more tensors than any request may."""
    check_count("inputs", len(request.inputs), MAX_TENSORS)
    check_count("outputs", len(request.outputs), MAX_TENSORS)
    return [_described(tensor) for tensor in request.inputs]


def _described(tensor: Any) -> RequestInput:
    check_dimension_count(tensor.name, len(tensor.shape))
    shape = list(tensor.shape)
    if any(dim < 0 for dim in shape):
        raise InvalidInputError(f"input '{tensor.name}': shape {shape} has a negative dimension")
    described = RequestInput.model_construct(
        name=tensor.name,
        shape=shape,
        datatype=tensor.datatype,
        parameters=plain_parameters(tensor.parameters, f"inputs['{tensor.name}'].parameters"),
        data=None,
    )
    check_shape(described)
    return described


def _from_contents(tensor: RequestInput, contents: Any) -> npt.NDArray[Any]:
    dtype = dtype_of(tensor)  # refuses an unknown datatype
    field = CONTENTS_FIELD.get(tensor.datatype)
    if field is None:
        raise InvalidInputError(
            f"input '{tensor.name}': {tensor.datatype} has no typed contents field; send it "
            "in raw_input_contents"
        )
    others = [f for f in _FIELDS if f != field and len(getattr(contents, f))]
    if others:
        raise InvalidInputError(
            f"input '{tensor.name}' is {tensor.datatype}, carried in contents.{field}, but "
            f"its contents.{others[0]} holds values"
        )
    values = getattr(contents, field)
    count = element_count(tensor)
    if len(values) != count:
        raise InvalidInputError(
            f"input '{tensor.name}': shape {tensor.shape} holds {count} elements, but "
            f"contents.{field} holds {len(values)}"
        )
    if dtype is None:
        elements = np.empty(count, dtype=object)
        elements[:] = list(values)
        return elements.reshape(tensor.shape)
    wide = np.fromiter(values, dtype=_FIELD_DTYPE[field], count=count)
    if dtype.kind in "iu" and wide.size:
        info = np.iinfo(dtype)  # type: ignore[type-var]  # an integer dtype here
        # Python ints: NumPy compares int32 against uint64's bounds exactly, not as floats.
        if int(wide.min()) < info.min or int(wide.max()) > info.max:
            raise InvalidInputError(f"input '{tensor.name}': {range_words(tensor.datatype, dtype)}")
    return wide.astype(dtype, copy=False).reshape(tensor.shape)


def encode_grpc_outputs(response: Any, tensors: Sequence[OutputTensor], *, raw: bool) -> None:
    """Each tensor into the response: in ``raw_output_contents`` when ``raw`` (or when a
    datatype has no typed field, FP16 or BF16: then all are raw, as the protocol pairs raw tensors
    with outputs by position), else in each output's typed contents."""
    raw = raw or any(t.datatype not in CONTENTS_FIELD for t in tensors)
    for tensor in tensors:
        output = response.outputs.add(
            name=tensor.name, datatype=tensor.datatype, shape=tensor.shape
        )
        if raw:
            response.raw_output_contents.append(tensor.binary_data())
            continue
        values = getattr(output.contents, CONTENTS_FIELD[tensor.datatype])
        flat = tensor.array.reshape(-1)
        # A piece at a time: between two, the GIL goes back to the loop (called in a thread
        # for a large answer).
        for start in range(0, max(len(flat), 1), PIECE_ELEMENTS):
            piece = flat[start : start + PIECE_ELEMENTS]
            values.extend(list(piece) if tensor.datatype == BYTES else piece.tolist())
