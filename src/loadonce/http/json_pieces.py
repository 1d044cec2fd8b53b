"""Large JSON answers, written a piece at a time off the event loop.

Python's JSON encoder holds the GIL for a whole call, and so does ``tolist``: an answer of a
thousand rows of 30,000 numbers (57 MiB of JSON) held the event loop for 5.7 s, health probes
and every other request of the worker waiting (a batch of 1,024 embeddings of 768 numbers, a
second). An answer past ``ON_THE_LOOP_ELEMENTS`` numbers is written in a thread, and in
pieces of at most ``PIECE_ELEMENTS``: between two pieces the GIL goes back to the loop. A
piece is whole rows of the answer (an array is cut along its first dimension), so the text is
the one a single call writes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

# Up to this many values, an answer is written on the loop (a few milliseconds at most).
ON_THE_LOOP_ELEMENTS = 65_536
# Values per encoder call in a thread: the longest the loop then waits for the GIL.
PIECE_ELEMENTS = 65_536


def weight(value: Any, depth: int = 0) -> int:
    """About how many values ``value`` holds: exact for arrays and rectangular lists, from
    the first element of each list (cheap on every answer, whatever its size). Looked at
    no deeper than JSON nests sensibly (an output may even contain itself)."""
    if depth > _DEEPEST:
        return 1
    if isinstance(value, np.ndarray):
        return int(value.size)
    if isinstance(value, list | tuple):
        if len(value) <= _SUMMED:  # a few outputs: each counted (a small one may come first)
            return sum(weight(item, depth + 1) for item in value) or 1
        return len(value) * weight(value[0], depth + 1)
    if isinstance(value, dict):
        return sum(weight(item, depth + 1) for item in value.values()) or 1
    return 1


_DEEPEST = 32
# Up to this many elements, a list's weight is the sum of theirs; past it, from its first.
_SUMMED = 8


def json_in_pieces(
    value: Any, encode: Callable[[Any], str], convert: Callable[[Any], Any] = lambda v: v
) -> str:
    """``encode(convert(value))``'s text, made by calls of at most about ``PIECE_ELEMENTS``
    values each: ``convert`` (to JSON values: ``to_jsonable``) is applied to each piece."""
    pieces: list[str] = []
    _write(value, pieces, encode, convert, 0)
    return "".join(pieces)


def _write(
    value: Any,
    out: list[str],
    encode: Callable[[Any], str],
    convert: Callable[[Any], Any],
    depth: int,
) -> None:
    if depth > _DEEPEST or weight(value) <= PIECE_ELEMENTS:
        # (Past that depth, one call: ``convert`` says what cannot be written.)
        out.append(encode(convert(value)))
    elif isinstance(value, dict):
        # Keys as the text they are written as, the last value of keys that collide (1 and
        # "1") kept at the first's place, as one call (``to_jsonable``) writes them.
        value = {str(key): item for key, item in value.items()}
        out.append("{")
        for index, (key, item) in enumerate(value.items()):
            out.append(("," if index else "") + encode(str(key)) + ":")
            _write(item, out, encode, convert, depth + 1)
        out.append("}")
    elif isinstance(value, list | tuple) or (isinstance(value, np.ndarray) and value.ndim):
        rows = len(value)
        per_row = max(1, weight(value[0]))
        step = max(1, PIECE_ELEMENTS // per_row)
        out.append("[")
        for start in range(0, rows, step):
            if start:
                out.append(",")
            if step == 1 and per_row > PIECE_ELEMENTS:
                _write(value[start], out, encode, convert, depth + 1)
            else:
                out.append(encode(convert(value[start : start + step]))[1:-1])
        out.append("]")
    else:
        out.append(encode(convert(value)))
