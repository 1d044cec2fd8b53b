"""One lossless conversion of JSON numbers to a model's dtype, for every protocol.

The JSON route and the Open Inference Protocol used to convert with two policies: a float32
model answered ``1e300`` with ``["Infinity"]`` on one and 400 on the other. Here, for both:
integers become floats, never floats integers (an integer past int64's range, which NumPy keeps
as a Python object, too); every integer type takes its whole range exactly (NumPy reads
``2**63`` among other integers as a float: the JSON's own integers are converted then), and a
value outside it is refused with the range said; no finite number becomes an infinity; ``true``
and ``false`` are not numbers. An infinity in the data is a value, as NaN is: JSON's common
extension writes them ``Infinity`` and ``NaN`` (Python's ``json``, tritonclient's JSON tensors,
loadonce's own answers), and binary data (REST's binary extension, gRPC) carries them as any
other value. (A literal past FP64's range, ``1e400``, is read as an infinity too, as every JSON
parser reads it: the parsed data cannot tell them apart.) A ``null`` among numbers is a missing
value, NaN, where the dtype has one (``nulls_as_nan``): the JSON route's missing values, and
how KServe's clients (orjson) write NaN.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt


class LossyConversionError(ValueError):
    """The values cannot become the dtype without loss; the message says why (no subject:
    the caller names the input)."""


class OutOfRangeError(LossyConversionError):
    """A value is outside the range of ``dtype``; a protocol may name the type its own way
    (``range_words``)."""

    def __init__(self, dtype: np.dtype[Any]) -> None:
        super().__init__(range_words(dtype.name, dtype))
        self.dtype = dtype


def range_words(name: str, dtype: np.dtype[Any]) -> str:
    """The words for a value outside ``dtype``'s range: an integer type's bounds said, so
    that a client can tell a wrong value from a wrong type ("... uint8 (0 to 255)")."""
    import numpy as np

    if dtype.kind not in "iu":
        return f"a value is outside the range of {name}"
    info = np.iinfo(dtype)
    return f"a value is outside the range of {name} ({info.min} to {info.max})"


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
    if target.kind in "iu" and kind in "fO":
        # NumPy reads 2**63 among other integers as a float, and an integer past uint64's
        # range as an object: the JSON's own values decide, exactly.
        return _exact_integers(data, target)
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
    if target.kind in "iu":  # integers here (floats and objects were converted above)
        info = np.iinfo(target)
        if int(raw.min()) < info.min or int(raw.max()) > info.max:
            raise OutOfRangeError(target)
        return raw.astype(target, copy=False)
    if kind == "f" and target.itemsize >= raw.dtype.itemsize:
        return raw.astype(target, copy=False)  # as wide or wider: nothing can overflow
    with np.errstate(over="ignore"):  # an overflow is found just below, and named
        converted = raw.astype(target)
    overflowed = np.isinf(converted)
    if overflowed.any() and (overflowed & ~np.isinf(raw)).any():
        raise OutOfRangeError(target)
    return converted


def _exact_integers(data: Any, target: np.dtype[Any]) -> npt.NDArray[Any]:
    """The JSON's values as ``target`` if all are integers within its range, else
    LossyConversionError saying which rule they break."""
    import numpy as np

    pending = [data]
    while pending:
        value = pending.pop()
        if type(value) is list:
            pending.extend(value)
        elif type(value) is bool:
            raise LossyConversionError(
                "must be numbers; true and false are not (send 1 and 0, or a boolean input)"
            )
        elif isinstance(value, float):
            raise LossyConversionError("must be integers; got numbers with a fraction or exponent")
        elif not isinstance(value, int):
            raise LossyConversionError("must be numbers")
    try:
        return np.asarray(data, dtype=target)
    except OverflowError:  # NumPy's "Python integer 256 out of bounds for uint8"
        raise OutOfRangeError(target) from None


def numbers_only(raw: npt.NDArray[Any]) -> bool:
    """Whether an object array holds numbers only (not booleans): then one of them is an
    integer past int64's range."""
    values = raw.reshape(-1)
    return bool(values.size) and all(type(v) in (int, float) for v in values)


def _past_int64(raw: npt.NDArray[Any], target: np.dtype[Any]) -> npt.NDArray[Any]:
    """An object array of numbers (an integer past int64's range among them) as float64, for
    a float target; OutOfRangeError for a value past FP64's."""
    import numpy as np

    try:
        return raw.astype(np.float64)
    except OverflowError:  # Python's "int too large to convert to float"
        raise OutOfRangeError(target) from None


def nulls_as_nan(raw: npt.NDArray[Any]) -> npt.NDArray[Any]:
    """A rectangular object array of numbers and nulls as float64, null as NaN; anything
    else (text, booleans) is refused as it would be without nulls (ValueError)."""
    import numpy as np

    values = raw.reshape(-1)
    for value in values:
        if value is not None and (type(value) is bool or not isinstance(value, int | float)):
            raise LossyConversionError("must be numbers (or null for a missing value)")
    converted = np.array([np.nan if v is None else float(v) for v in values], dtype=np.float64)
    if np.isinf(converted).any():
        raise LossyConversionError("a value is outside the range of float64")
    return converted.reshape(raw.shape)
