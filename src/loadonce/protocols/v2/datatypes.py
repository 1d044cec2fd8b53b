"""The Open Inference Protocol's tensor datatypes, and the NumPy dtypes they travel as."""

from __future__ import annotations

import functools

import ml_dtypes
import numpy as np

from loadonce.core.errors import InvalidInputError

BYTES = "BYTES"
_FIXED: dict[str, np.dtype[np.generic]] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
    # NumPy has none: ml_dtypes' bfloat16, the dtype tritonclient reads and writes BF16 as.
    "BF16": np.dtype(ml_dtypes.bfloat16),
}
_BY_NUMPY = {dtype: name for name, dtype in _FIXED.items()}
DATATYPES = (*_FIXED, BYTES)


def fixed_dtype(datatype: str) -> np.dtype[np.generic] | None:
    """The NumPy dtype of a fixed-size datatype; None for BYTES. Raises for an unknown one."""
    if datatype == BYTES:
        return None
    try:
        return _FIXED[datatype]
    except KeyError:
        raise InvalidInputError(
            f"unknown datatype '{datatype}'; the Open Inference Protocol's datatypes are "
            f"{', '.join(DATATYPES)}"
        ) from None


def datatype_of(dtype: np.dtype[np.generic]) -> str | None:
    """The datatype an array of ``dtype`` is sent as: text and objects as BYTES; None when
    the protocol has no such type (complex numbers, dates)."""
    if dtype.kind in "OSU":
        return BYTES
    return _BY_NUMPY.get(dtype.newbyteorder("=") if dtype.byteorder == ">" else dtype)


@functools.cache  # on every request's path; np.dtype() is slow next to a dict lookup
def datatype_of_declared(dtype: str | None) -> str | None:
    """The datatype of a model's declared input or output dtype (``TensorInfo.dtype``)."""
    if dtype is None:
        return None
    if dtype == "string":
        return BYTES
    return datatype_of(np.dtype(dtype))
