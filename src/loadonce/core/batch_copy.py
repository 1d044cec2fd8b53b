"""The combined batch a model is given, holding none of the requests' own objects.

When a batched call fails, its requests are predicted one by one so that only the culprit
fails. ``Predictor.combine`` concatenates list batches by reference, so a model that wrote into
its inputs before it raised (a list zeroed, a dict's value replaced, an array scaled in place)
changed what the retries were given: every request of the batch, the culprit's too, was
answered 200 from the damaged inputs. The combined call gets copies of whatever can be written
into, and the retries the requests' own examples. Arrays that ``combine`` concatenated own
their data already, and numbers and text cannot be written into: those are not copied, so the
common batches cost nothing more.
"""

from __future__ import annotations

from typing import Any

import numpy as np

# Values nothing can write into: shared, never copied (the exact types first: a set lookup
# is the cheapest test, for the JSON values most examples hold).
_IMMUTABLE_TYPES = frozenset({int, float, str, bool, bytes, type(None)})
_IMMUTABLE = (int, float, complex, str, bytes, bool, type(None), np.generic)


def detached(batch: Any) -> Any:
    """``batch`` (``combine``'s result) with a copy of each part a model could write into
    that the requests' own batches may hold too."""
    if isinstance(batch, np.ndarray):
        # np.concatenate's result owns its data; a view (a custom combine) may be theirs.
        return batch if batch.flags.owndata else batch.copy()
    if isinstance(batch, list):
        return [_copy(example) for example in batch]
    if isinstance(batch, dict):
        return {key: detached(value) for key, value in batch.items()}
    return batch  # another type (a runtime's own combine built it): left as it is


def _copy(value: Any) -> Any:
    """A copy of a JSON-like value or an array; anything else as it is (an object of unknown
    type may not copy, or copy at a cost nobody asked for). Exact types first: the cheapest
    tests, for the JSON values most examples are."""
    kind = type(value)
    if kind in _IMMUTABLE_TYPES:
        return value
    if kind is list:
        return _copy_list(value)
    if kind is dict:
        return {key: _copy(item) for key, item in value.items()}
    if isinstance(value, _IMMUTABLE):
        return value
    if isinstance(value, np.ndarray):
        return value.copy()
    if isinstance(value, list):
        return _copy_list(value)
    if isinstance(value, dict):
        return {key: _copy(item) for key, item in value.items()}
    if isinstance(value, tuple):
        return tuple(_copy(item) for item in value)
    if isinstance(value, bytearray):
        return bytearray(value)
    return value


def _copy_list(values: list[Any]) -> list[Any]:
    """A copy of ``values``: a slice when every item is a plain number or text (checked at
    C speed: the common example), else each item copied as it needs."""
    if _IMMUTABLE_TYPES.issuperset(map(type, values)):
        return values[:]
    return [_copy(item) for item in values]
