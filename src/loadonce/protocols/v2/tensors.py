"""Input tensors of an inference request, read from JSON ``data`` or from the binary section.

Every check names the tensor: its element count against its shape, its values against its
datatype (nothing converted with a loss: no fraction dropped, no integer out of range, no
float overflowing to infinity), and its binary size against its shape.
"""

from __future__ import annotations

import json
import math
import reprlib
import struct
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from loadonce.core.errors import InvalidInputError, RequestTooLargeError
from loadonce.core.number_conversion import (
    LossyConversionError,
    OutOfRangeError,
    convert_numbers,
    nulls_as_nan,
    range_words,
)
from loadonce.protocols.v2.body import HEADER_LENGTH, SplitBody
from loadonce.protocols.v2.datatypes import fixed_dtype
from loadonce.protocols.v2.schemas import RequestInput, json_kind

BINARY_SIZE = "binary_data_size"
# gRPC's field of an input's bytes.
RAW_CONTENTS = "raw_input_contents"
_LENGTH_PREFIX = 4  # BYTES elements in binary: a 4-byte little-endian length, then the bytes
_LENGTH = struct.Struct("<I")
# NumPy's own limit on an array's dimensions.
MAX_DIMENSIONS = 64
# A shape's non-zero dimensions may multiply to at most this: no request carries more
# elements, and NumPy cannot even describe an empty array whose other dimensions pass it.
MAX_ELEMENTS = 2**40


def decode_inputs(
    inputs: Sequence[RequestInput], body: SplitBody, *, max_element_bytes: int | None = None
) -> dict[str, npt.NDArray[Any]]:
    """Each input as an array of its shape; BYTES elements as ``bytes`` objects, none longer
    than ``max_element_bytes`` (413)."""
    arrays: dict[str, npt.NDArray[Any]] = {}
    binary = body.binary
    offset = 0
    for tensor in inputs:
        if tensor.name in arrays:
            raise InvalidInputError(f"input '{tensor.name}' is given twice")
        check_shape(tensor)
        size = _binary_size(tensor)
        if size is None:
            arrays[tensor.name] = _from_json(tensor)
            check_element_sizes(tensor.name, arrays[tensor.name], max_element_bytes)
            continue
        if not body.has_binary_header:
            raise InvalidInputError(
                f"input '{tensor.name}' has parameters.{BINARY_SIZE}, but the request has no "
                f"{HEADER_LENGTH} header to say where the JSON ends and the binary data begins"
            )
        if tensor.data is not None:
            raise InvalidInputError(
                f"input '{tensor.name}' has both data and parameters.{BINARY_SIZE}: send one"
            )
        if offset + size > len(binary):
            raise InvalidInputError(
                f"input '{tensor.name}': {BINARY_SIZE} is {size} bytes, but only "
                f"{len(binary) - offset} bytes of binary data are left in the body"
            )
        arrays[tensor.name] = _from_binary(tensor, binary[offset : offset + size], BINARY_SIZE)
        check_element_sizes(tensor.name, arrays[tensor.name], max_element_bytes)
        offset += size
    if offset != len(binary):
        raise InvalidInputError(
            f"the body holds {len(binary)} bytes of binary data after the JSON, but the inputs' "
            f"{BINARY_SIZE} add up to {offset}"
        )
    return arrays


def decode_binary_input(
    tensor: RequestInput, chunk: memoryview, *, max_element_bytes: int | None = None
) -> npt.NDArray[Any]:
    """One input from its binary form alone (gRPC's ``raw_input_contents``): every check
    the binary section of a REST body gets, its size said as gRPC's field."""
    check_shape(tensor)
    array = _from_binary(tensor, chunk, RAW_CONTENTS)
    check_element_sizes(tensor.name, array, max_element_bytes)
    return array


def declared_elements(tensors: Sequence[RequestInput]) -> int:
    """How many elements the tensors' shapes say they hold (not yet checked against data)."""
    return sum(element_count(tensor) for tensor in tensors)


def check_shape(tensor: RequestInput) -> None:
    """Before anything is read or allocated: a shape NumPy can hold, of a size a request can
    carry. (That the data holds as many elements as the shape is checked as it is read.)"""
    check_dimension_count(tensor.name, len(tensor.shape))
    if math.prod(dim for dim in tensor.shape if dim) > MAX_ELEMENTS:
        raise InvalidInputError(
            f"input '{tensor.name}': shape {tensor.shape} is larger than any request can "
            f"carry (at most {MAX_ELEMENTS} elements)"
        )


def check_dimension_count(name: str, count: int) -> None:
    """Before a shape is read (gRPC's arrives as a repeated field, and copying 30 million
    dimensions took 570 MB), that it has no more dimensions than NumPy supports."""
    if count > MAX_DIMENSIONS:
        raise InvalidInputError(
            f"input '{name}': its shape has {count} dimensions; at most {MAX_DIMENSIONS} are "
            "supported"
        )


def check_element_sizes(name: str, array: npt.NDArray[Any], limit: int | None) -> None:
    if limit is None or array.dtype != object:
        return
    for index, element in enumerate(array.flat):
        if len(element) > limit:
            raise RequestTooLargeError(
                f"input '{name}': BYTES element {index} is {len(element)} bytes, over this "
                f"server's max_element_bytes ({limit})"
            )


def _binary_size(tensor: RequestInput) -> int | None:
    if not tensor.parameters or BINARY_SIZE not in tensor.parameters:
        return None
    size = tensor.parameters[BINARY_SIZE]
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise InvalidInputError(
            f"input '{tensor.name}': parameters.{BINARY_SIZE} must be a number of bytes; "
            f"got {size!r}"
        )
    return size


def element_count(tensor: RequestInput) -> int:
    return math.prod(tensor.shape)


def _describe(tensor: RequestInput) -> str:
    return f"shape {tensor.shape} of {tensor.datatype}"


def _from_binary(tensor: RequestInput, chunk: memoryview, carrier: str) -> npt.NDArray[Any]:
    """``carrier``: the field that carried the bytes, as the client knows it (REST's
    binary_data_size, gRPC's raw_input_contents)."""
    dtype = dtype_of(tensor)
    count = element_count(tensor)
    if dtype is None:
        return _bytes_elements(tensor, chunk, count).reshape(tensor.shape)
    expected = count * dtype.itemsize
    if len(chunk) != expected:
        raise InvalidInputError(
            f"input '{tensor.name}': its {carrier} is {len(chunk)} bytes, but "
            f"{_describe(tensor)} takes {expected}"
        )
    if dtype.kind == "b":
        raw = np.frombuffer(chunk, dtype=np.uint8)
        if raw.size and raw.max() > 1:
            raise InvalidInputError(f"input '{tensor.name}': BOOL bytes must be 0 or 1")
        return raw.view(np.bool_).reshape(tensor.shape)
    return np.frombuffer(chunk, dtype=dtype.newbyteorder("<")).reshape(tensor.shape)


def _bytes_elements(tensor: RequestInput, chunk: memoryview, count: int) -> npt.NDArray[Any]:
    if count * _LENGTH_PREFIX > len(chunk):
        # Checked before the array of count elements is made: the shape is the client's word,
        # the bytes are what it sent.
        raise InvalidInputError(
            f"input '{tensor.name}': shape {tensor.shape} holds {count} BYTES elements, each "
            f"at least {_LENGTH_PREFIX} bytes in binary, but its binary data is {len(chunk)} bytes"
        )
    # One copy of the chunk: a slice of bytes is the element itself, a memoryview's would be
    # copied once more (the loop below runs once per element: 3 times faster so).
    data = bytes(chunk)
    size = len(data)
    read_length = _LENGTH.unpack_from
    elements: list[bytes] = [b""] * count
    offset = 0
    for index in range(count):
        if offset + _LENGTH_PREFIX > size:
            raise InvalidInputError(
                f"input '{tensor.name}': its binary data ends after {index} of the {count} "
                "BYTES elements its shape holds"
            )
        (length,) = read_length(data, offset)
        start = offset + _LENGTH_PREFIX
        offset = start + length
        if offset > size:
            raise InvalidInputError(
                f"input '{tensor.name}': BYTES element {index} is {length} bytes long, past "
                "the end of the input's binary data"
            )
        elements[index] = data[start:offset]
    if offset != size:
        raise InvalidInputError(
            f"input '{tensor.name}': {size - offset} bytes are left after the {count} "
            f"BYTES elements its shape {tensor.shape} holds"
        )
    array = np.empty(count, dtype=object)
    array[:] = elements
    return array


def dtype_of(tensor: RequestInput) -> np.dtype[np.generic] | None:
    try:
        return fixed_dtype(tensor.datatype)
    except InvalidInputError as exc:
        raise InvalidInputError(f"input '{tensor.name}': {exc}") from None


def _from_json(tensor: RequestInput) -> npt.NDArray[Any]:
    dtype = dtype_of(tensor)
    if tensor.data is None:
        raise InvalidInputError(
            f"input '{tensor.name}' has no data: send its elements in 'data', or in binary "
            f"with parameters.{BINARY_SIZE}"
        )
    count = element_count(tensor)
    budget = _list_budget(tensor, count)
    if dtype is None:
        flat = _flatten_text(tensor, budget)
        _check_count(tensor, len(flat), count)
        elements = np.empty(count, dtype=object)
        elements[:] = flat
        return elements.reshape(tensor.shape)
    _check_lists(tensor, budget)
    try:
        raw = np.asarray(tensor.data)
    except ValueError:
        raise InvalidInputError(
            f"input '{tensor.name}': data is nested unevenly; send it flat or as a "
            "rectangular array, row-major"
        ) from None
    _check_count(tensor, raw.size, count)
    return _convert(tensor, raw, dtype).reshape(tensor.shape)


def _list_budget(tensor: RequestInput, count: int) -> int:
    """The most lists the data may hold: as many as the shape nests (one, then one per entry
    of each dimension but the last), or as its elements (nested otherwise: a 2x3 tensor
    sent as [[1, 2, 3], [4, 5, 6]] for a shape [1, 6], taken as Triton takes it), and one.
    A [1, 0] tensor whose data was 16 million empty lists was built whole (its element
    count, 0, matched): lists hold no element, so only the shape can back them."""
    lists = entries = 1
    for dim in tensor.shape[:-1]:
        entries *= dim
        lists += entries
    return max(lists, count) + 1


def _over_the_budget(tensor: RequestInput) -> InvalidInputError:
    return InvalidInputError(
        f"input '{tensor.name}': its data holds more lists than its shape {list(tensor.shape)} "
        "can nest (send it flat, or nested as the shape, row-major)"
    )


def _leaves(tensor: RequestInput, budget: int, *, into_rows: bool) -> Iterator[Any]:
    """The data's values that are not lists, in order, reading at most ``budget`` lists,
    one at a time, never copying one. ``into_rows`` False: a list whose first value is not a
    list (a row of numbers) is not entered (the conversion reads it, and refuses a list in
    it); its values are not given."""
    lists = 0
    walking = [iter((tensor.data,))]
    while walking:
        for value in walking[-1]:
            if not isinstance(value, list):
                yield value
                continue
            lists += 1
            if lists > budget:
                raise _over_the_budget(tensor)
            if into_rows or (value and isinstance(value[0], list)):
                walking.append(iter(value))
                break
        else:
            walking.pop()


def _check_lists(tensor: RequestInput, budget: int) -> None:
    """Before numbers are converted: the data holds at most ``budget`` lists."""
    for _ in _leaves(tensor, budget, into_rows=False):
        pass


def _check_count(tensor: RequestInput, got: int, expected: int) -> None:
    if got != expected:
        raise InvalidInputError(
            f"input '{tensor.name}': shape {tensor.shape} holds {expected} elements, but data "
            f"holds {got}"
        )


def _flatten_text(tensor: RequestInput, budget: int) -> list[bytes]:
    """The strings, in order, reading at most ``budget`` lists."""
    flat: list[bytes] = []
    for value in _leaves(tensor, budget, into_rows=True):
        if not isinstance(value, str):
            raise InvalidInputError(
                f"input '{tensor.name}': BYTES data must be strings; got {_excerpt(value)}"
            )
        flat.append(value.encode("utf-8"))
    return flat


def _excerpt(value: Any) -> str:
    """A JSON value as its client wrote it (null, true, a number 1): never Python's words."""
    if value is None or isinstance(value, bool):
        return json.dumps(value)
    return f"{json_kind(value)} {reprlib.repr(value)}"  # an excerpt: it may be huge


def _convert(
    tensor: RequestInput, raw: npt.NDArray[Any], dtype: np.dtype[np.generic]
) -> npt.NDArray[Any]:
    where = f"input '{tensor.name}': {tensor.datatype} data"
    try:
        if raw.dtype.kind == "O" and _has_nan(dtype) and any(v is None for v in raw.flat):
            # null among numbers: NaN, as KServe's clients write it (orjson) and its server
            # reads it, and as the JSON route reads a missing value.
            raw = nulls_as_nan(raw)
        return convert_numbers(raw, dtype, tensor.data)
    except LossyConversionError as exc:
        phrase = _phrase(exc, tensor.datatype)
        joined = f"{where}{phrase}" if phrase.startswith(":") else f"{where} {phrase}"
        raise InvalidInputError(joined) from None


def _has_nan(dtype: np.dtype[np.generic]) -> bool:
    """Whether the dtype holds NaN: FP16, FP32, FP64, BF16 (ml_dtypes' bfloat16)."""
    return dtype.kind == "f" or dtype.name == "bfloat16"


def _phrase(exc: LossyConversionError, datatype: str) -> str:
    # The converter names NumPy's dtype; a client of this protocol knows its datatype.
    if isinstance(exc, OutOfRangeError):
        return f": {range_words(datatype, exc.dtype)}"
    return str(exc)
