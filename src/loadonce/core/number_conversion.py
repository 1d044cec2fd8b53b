"""One lossless conversion of JSON numbers to a model's dtype, for every protocol.

The JSON route and the Open Inference Protocol used to convert with two policies: a float32
model answered ``1e300`` with ``["Infinity"]`` on one and 400 on the other. Here, for both:
integers become floats, never floats integers (an integer past int64's range, which NumPy
keeps as a Python object, too); no integer leaves its type's range; no finite number becomes
an infinity; ``true`` and ``false`` are not numbers. An infinity in the data is a value, as
NaN is: JSON's common extension writes them ``Infinity`` and ``NaN`` (Python's ``json``,
tritonclient's JSON tensors, loadonce's own answers), and binary data (REST's binary
extension, gRPC) carries them as any other value. (A literal past FP64's range, ``1e400``, is
read as an infinity too, as every JSON parser reads it: the parsed data cannot tell them
apart.)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt


class LossyConversionError(ValueError):
    """The values cannot become the dtype without loss; the message says why (no subject:
    the caller names the input)."""


def holds_booleans(data: Any) -> bool:
    """Whether JSON ``true`` or ``false`` hides among numbers (NumPy reads them as 1 and 0)."""
    pending = [data]
    while pending:
        value = pending.pop()
        if type(value) is not list:
            if type(value) is bool:
                return True
            continue
        types = set(map(type, value))
        if bool in types:
            return True
        if list in types:
            pending.extend(item for item in value if type(item) is list)
    return False


def convert_numbers(raw: npt.NDArray[Any], target: np.dtype[Any], data: Any) -> npt.NDArray[Any]:
    """``raw`` (``np.asarray(data)``) as ``target``, or LossyConversionError."""
    import numpy as np

    kind = raw.dtype.kind
    if target.kind == "b":
        if kind != "b" and raw.size:
            raise LossyConversionError("must be true or false")
        return raw.astype(target, copy=False)
    if raw.size == 0:
        return raw.astype(target)
    if kind == "O" and numbers_only(raw):
        # NumPy keeps an integer past int64's range as a Python object (a rectangular array
        # of numbers all the same): as a float it is the number ``1e20`` is.
        raw, kind = _past_int64(raw, target), "f"
    if kind not in "iuf":
        raise LossyConversionError("must be numbers")
    if holds_booleans(data):
        raise LossyConversionError(
            "must be numbers; true and false are not (send 1 and 0, or a boolean input)"
        )
    if target.kind in "iu":
        if kind == "f":
            raise LossyConversionError("must be integers; got numbers with a fraction or exponent")
        info = np.iinfo(target)
        if int(raw.min()) < info.min or int(raw.max()) > info.max:
            raise LossyConversionError(f"a value is outside the range of {target.name}")
        return raw.astype(target, copy=False)
    if kind == "f" and target.itemsize >= raw.dtype.itemsize:
        return raw.astype(target, copy=False)  # as wide or wider: nothing can overflow
    with np.errstate(over="ignore"):  # an overflow is found just below, and named
        converted = raw.astype(target)
    overflowed = np.isinf(converted)
    if overflowed.any() and (overflowed & ~np.isinf(raw)).any():
        raise LossyConversionError(f"a value is outside the range of {target.name}")
    return converted


def numbers_only(raw: npt.NDArray[Any]) -> bool:
    """Whether an object array holds numbers only (not booleans): then one of them is an
    integer past int64's range."""
    values = raw.reshape(-1)
    return bool(values.size) and all(type(v) in (int, float) for v in values)


def _past_int64(raw: npt.NDArray[Any], target: np.dtype[Any]) -> npt.NDArray[Any]:
    """An object array of numbers (an integer past int64's range among them) as float64;
    LossyConversionError where the target is an integer type, or a value past FP64's."""
    import numpy as np

    if target.kind != "f":
        raise LossyConversionError(f"a value is outside the range of {target.name}")
    try:
        return raw.astype(np.float64)
    except OverflowError:  # Python's "int too large to convert to float"
        raise LossyConversionError(f"a value is outside the range of {target.name}") from None
