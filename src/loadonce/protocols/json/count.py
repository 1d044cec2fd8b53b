"""Counting the examples of a large JSON body before parsing it.

Parsing a 30 MB body of 1.4 million examples holds the GIL for over a second (pydantic-core
builds every number as a Python object), whether on the event loop or in a thread: every
other request of the worker waits, health probes included, only to answer 413 because the
model takes at most ``max_request_examples`` per request. A scan of the raw bytes with NumPy,
1 MiB at a time (the GIL is free between chunks), counts the top-level elements of
``"inputs"`` in a few milliseconds per megabyte, so such a request is refused before anything
is materialised.

The scan is exact for what it answers and answers only when it is sure: a body with escaped
characters (a ``\\``), a key that appears twice, or a shape it does not expect gives None,
and the body is then parsed as before.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

_CHUNK = 1 << 20
_QUOTE, _COMMA = ord('"'), ord(",")
_OPENS = (ord("["), ord("{"))
_CLOSES = (ord("]"), ord("}"))
_SPACE = b" \t\r\n"


def _depth_and_parity(raw: bytes, end: int) -> tuple[int, int]:
    """Bracket depth (outside strings) and quote parity just before ``end``."""
    depth, parity = 0, 0
    for start in range(0, end, _CHUNK):
        chunk = np.frombuffer(raw, dtype=np.uint8, count=min(_CHUNK, end - start), offset=start)
        quotes = chunk == _QUOTE
        inside = (np.cumsum(quotes, dtype=np.int64) + parity) & 1
        outside = (inside == 0) & ~quotes
        opens = int(np.count_nonzero(((chunk == _OPENS[0]) | (chunk == _OPENS[1])) & outside))
        closes = int(np.count_nonzero(((chunk == _CLOSES[0]) | (chunk == _CLOSES[1])) & outside))
        depth += opens - closes
        parity = int(inside[-1]) if len(inside) else parity
    return depth, parity


@dataclass(frozen=True)
class JsonArray:
    """Where an array lies in a JSON document's bytes."""

    count: int  # its elements
    nesting: int  # how deeply its first element is nested: 1 a scalar, 2 an array of them...
    start: int  # just after its "["
    end: int  # its "]"
    commas: npt.NDArray[np.int64]  # the commas between its elements, in order

    def pieces(self, size: int) -> list[tuple[int, int]]:
        """Byte ranges of about ``size`` bytes, each holding whole elements, in order."""
        bounds = [self.start - 1, *self.commas.tolist(), self.end]
        ranges: list[tuple[int, int]] = []
        begin = 0
        for index in range(1, len(bounds)):
            if bounds[index] - bounds[begin] >= size or index == len(bounds) - 1:
                ranges.append((bounds[begin] + 1, bounds[index]))
                begin = index
        return ranges


def top_level_elements(raw: bytes, key: bytes = b"inputs") -> JsonArray | None:
    """For a JSON object whose ``key`` holds an array: where that array lies, how many
    elements it has and how deeply its first one is nested. None when the scan cannot be
    sure."""
    if b"\\" in raw:
        return None
    quoted = b'"' + key + b'"'
    at = raw.find(quoted)
    if at < 0 or raw.find(quoted, at + 1) >= 0:
        return None
    if _depth_and_parity(raw, at) != (1, 0):
        return None  # not a key of the top-level object
    position = at + len(quoted)
    while position < len(raw) and raw[position] in _SPACE:
        position += 1
    if position >= len(raw) or raw[position] != ord(":"):
        return None
    position += 1
    while position < len(raw) and raw[position] in _SPACE:
        position += 1
    if position >= len(raw) or raw[position] != _OPENS[0]:
        return None
    nesting, probe = 0, position
    while probe < len(raw) and (raw[probe] == _OPENS[0] or raw[probe] in _SPACE):
        nesting += raw[probe] == _OPENS[0]
        probe += 1
    if probe < len(raw) and raw[probe] == _CLOSES[0] and nesting == 1:
        return JsonArray(0, 1, position + 1, probe, np.empty(0, dtype=np.int64))  # empty
    found = _elements(raw, position + 1)
    if found is None:
        return None
    end, commas = found
    return JsonArray(len(commas) + 1, nesting, position + 1, end, commas)


def _elements(raw: bytes, start: int) -> tuple[int, npt.NDArray[np.int64]] | None:
    """The end (its "]") and the commas at its own depth of the array whose content starts
    at ``start``; None if it never ends."""
    depth, parity = 1, 0
    commas: list[npt.NDArray[np.int64]] = []
    for offset in range(start, len(raw), _CHUNK):
        chunk = np.frombuffer(
            raw, dtype=np.uint8, count=min(_CHUNK, len(raw) - offset), offset=offset
        )
        quotes = chunk == _QUOTE
        inside = (np.cumsum(quotes, dtype=np.int64) + parity) & 1
        outside = (inside == 0) & ~quotes
        steps = (((chunk == _OPENS[0]) | (chunk == _OPENS[1])) & outside).astype(np.int32)
        steps -= (((chunk == _CLOSES[0]) | (chunk == _CLOSES[1])) & outside).astype(np.int32)
        depths = depth + np.cumsum(steps, dtype=np.int64)
        closed = np.flatnonzero(depths == 0)
        limit = int(closed[0]) if len(closed) else len(chunk)
        at_depth = (chunk[:limit] == _COMMA) & outside[:limit] & (depths[:limit] == 1)
        commas.append(np.flatnonzero(at_depth).astype(np.int64) + offset)
        if len(closed):
            return offset + limit, np.concatenate(commas)
        depth, parity = int(depths[-1]), int(inside[-1])
    return None  # unterminated: the parser will say so
