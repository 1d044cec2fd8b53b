"""One lossless conversion of JSON numbers to a model's dtype, for every protocol.

The JSON route and the Open Inference Protocol used to convert with two policies: a float32
model answered ``1e300`` with ``["Infinity"]`` on one and 400 on the other. Here, for both:
integers become floats, never floats integers; no integer leaves its type's range; no finite
number becomes an infinity; JSON has no infinity, so one in the data is a number past FP64's
range (``1e400``), while binary data (REST's binary extension, gRPC) carries infinities as
values; ``true`` and ``false`` are not numbers.
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


def convert_numbers(
    raw: npt.NDArray[Any], target: np.dtype[Any], data: Any, *, infinities: bool = False
) -> npt.NDArray[Any]:
    """``raw`` (``np.asarray(data)``) as ``target``, or LossyConversionError.
    ``infinities``: the values came as binary numbers (REST binary data, gRPC contents),
    where an infinity is a value like any other; only one made by the conversion is lost."""
    import numpy as np

    kind = raw.dtype.kind
    if target.kind == "b":
        if kind != "b" and raw.size:
            raise LossyConversionError("must be true or false")
        return raw.astype(target, copy=False)
    if raw.size == 0:
        return raw.astype(target)
    if kind not in "iuf":
        raise LossyConversionError("must be numbers")
    if holds_booleans(data):
        raise LossyConversionError(
            "must be numbers; true and false are not (send 1 and 0, or a boolean input)"
        )
    if kind == "f" and not infinities and np.isinf(raw).any():
        # JSON has no infinity: the parser made one of a number past FP64's range.
        raise LossyConversionError(f"a value is outside the range of {target.name}")
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
    if overflowed.any() and (not infinities or (overflowed & ~np.isinf(raw)).any()):
        raise LossyConversionError(f"a value is outside the range of {target.name}")
    return converted
