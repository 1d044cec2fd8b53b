"""A model's outputs, one per example, as named output tensors, encoded in JSON or binary."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from loadonce.core.errors import InvalidInputError, unfit_output
from loadonce.core.jsonable import to_jsonable
from loadonce.core.signature import DEFAULT_OUTPUT
from loadonce.core.utf8 import utf8
from loadonce.protocols.v2.datatypes import BYTES, datatype_of, datatype_of_declared, fixed_dtype
from loadonce.runtimes import TensorInfo


class OutputNotTextError(InvalidInputError):
    """A BYTES output the request asked for in JSON holds bytes that JSON cannot carry as
    text (HTTP 400): the model answered, in bytes binary carries; JSON was the client's
    choice. A client's mistake, so no failure in the model's statistics (it was a 500)."""

    def client_message(self) -> str:
        return str(self)  # about the answer asked for, not the inputs


@dataclass(frozen=True)
class OutputTensor:
    name: str
    datatype: str
    array: npt.NDArray[Any]  # BYTES: an object array of ``bytes``

    @property
    def shape(self) -> list[int]:
        return list(self.array.shape)

    def json_data(self) -> list[Any]:
        flat = self.array.reshape(-1)
        if self.datatype != BYTES:
            data: list[Any] = flat.tolist()
            return data
        try:
            return [element.decode("utf-8") for element in flat]
        except UnicodeDecodeError:
            raise OutputNotTextError(
                f"output '{self.name}' holds bytes that are not UTF-8 text, which JSON cannot "
                "carry: request it in binary (parameters.binary_data = true)"
            ) from None

    def binary_data(self) -> bytes:
        if self.datatype != BYTES:
            little = self.array.astype(self.array.dtype.newbyteorder("<"), copy=False)
            return np.ascontiguousarray(little).tobytes()
        return b"".join(
            len(element).to_bytes(4, "little") + element for element in self.array.reshape(-1)
        )


def output_tensors(declared: Sequence[TensorInfo], outputs: list[Any]) -> list[OutputTensor]:
    """Stack the per-example outputs into tensors, batch first.

    One output per example: a tensor named after the model's first declared output (or
    "output").
    An object per example (a model with several outputs, a pipeline's ``{"label", "score"}``):
    one tensor per key, in the declared order where the model declares its outputs.
    """
    first = outputs[0]
    by_name = {t.name: t for t in declared}
    if isinstance(first, Mapping):
        known = [t.name for t in declared if t.name in first]
        if len(declared) == 1 and not known:
            # The one output the model declares is a mapping itself (ZipMap's {label:
            # probability}): one tensor of JSON documents, not a tensor per key.
            return [_stack(declared[0].name, outputs, declared[0])]
        # A tensor's name is text; the example's key may not be ({0: p0, 1: p1}): each
        # tensor is read by the key it is named after (by its text, it was a 500).
        keys = known + [key for key in first if key not in known]
        return [
            _stack(str(key), [_field(o, key) for o in outputs], by_name.get(str(key)))
            for key in keys
        ]
    # One value per example is the model's first declared output (its default one).
    if not declared:
        return [_stack(DEFAULT_OUTPUT, outputs, None)]
    return [_stack(declared[0].name, outputs, declared[0])]


def _field(output: Any, key: Any) -> Any:
    if not isinstance(output, Mapping) or key not in output:
        raise unfit_output(f"the model's outputs differ between examples: one lacks '{key}'")
    return output[key]


def _stack(name: str, values: list[Any], declared: TensorInfo | None) -> OutputTensor:
    if declared is not None and _one_text_per_example(declared):
        # As declared whatever the values: texts, or JSON documents (token classification's
        # entities, of which a batch may hold none at all: they stacked as FP64 [n, 0]).
        return _documents(name, values)
    try:
        array = np.asarray(values)
    except ValueError:
        array = None  # examples of different shapes: each becomes one JSON document
    if array is not None:
        array = _as_declared(name, array, declared)
        datatype = datatype_of(array.dtype)
        if datatype is not None and datatype != BYTES:
            return OutputTensor(name, datatype, array)
        if array.dtype.kind in "US":
            # NumPy makes text of everything beside a string: ("setosa", 0.5, True) became
            # "0.5" and "True". Only values that were all text are a text tensor.
            originals = np.asarray(values, dtype=object)
            if _all_text(originals):
                return OutputTensor(name, BYTES, _as_bytes(array))
        elif _all_text(array):
            return OutputTensor(name, BYTES, _as_bytes(array))
    return _documents(name, values)


def _one_text_per_example(declared: TensorInfo) -> bool:
    """Whether the model declares the output as one BYTES element per example."""
    shape = declared.shape
    return datatype_of_declared(declared.dtype) == BYTES and shape is not None and len(shape) == 1


def _documents(name: str, values: list[Any]) -> OutputTensor:
    documents = np.empty(len(values), dtype=object)
    documents[:] = [_document(value) for value in values]
    return OutputTensor(name, BYTES, documents)


def _as_declared(
    name: str, array: npt.NDArray[Any], declared: TensorInfo | None
) -> npt.NDArray[Any]:
    """Numbers in the numeric datatype the model declares for the output: metadata promises
    it, and clients size their buffers by it (a model declaring FP32 that answers Python
    floats would otherwise send FP64). A value the declared type cannot hold is the model's
    error, never a silently different number."""
    datatype = datatype_of_declared(declared.dtype) if declared is not None else None
    target = fixed_dtype(datatype) if datatype is not None else None
    if target is None or array.dtype == target or array.dtype.kind not in "biuf":
        return array
    with np.errstate(all="ignore"):
        converted = array.astype(target)
    if target.kind == "f":
        kept = np.isfinite(converted) | ~np.isfinite(array)
    else:
        kept = converted == array
    if not kept.all():
        raise unfit_output(
            f"the model's output '{name}' holds values its declared datatype, {datatype}, "
            "cannot hold"
        )
    return converted


def _all_text(array: npt.NDArray[Any]) -> bool:
    return array.dtype.kind == "O" and all(isinstance(v, str | bytes) for v in array.flat)


def _as_bytes(array: npt.NDArray[Any]) -> npt.NDArray[Any]:
    encoded = np.empty(array.shape, dtype=object)
    for index, value in np.ndenumerate(array):
        encoded[index] = value if isinstance(value, bytes) else utf8(str(value))
    return encoded


def _document(value: Any) -> bytes:
    """One example's output that is not a rectangular array: text as is, else JSON."""
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return utf8(value)
    return utf8(json.dumps(to_jsonable(value), separators=(",", ":")))
