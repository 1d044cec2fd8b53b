"""A key given twice in one JSON object of a request to loadonce's own routes is refused.

JSON parsers disagree on ``{"max_new_tokens": 1, "max_new_tokens": 1000}``: pydantic-core and
Python's ``json`` keep the last, RapidJSON and many proxies and firewalls read the first. A
filter in front of the server that checks the first value would pass a request that does
something else here (parameter smuggling). loadonce's JSON routes refuse it instead, naming
the key, where loadonce reads the key: the body's own fields, its ``parameters``, and named
inputs (``{"inputs": {"a": ..., "b": ...}}``); what a model receives inside its data is the
model's to read.

Checked at next to no cost: the parser that reads the body does not tell, and a second parse
of every body would double the work of the hot path. A key can appear twice only where its
quoted name does, or where an escape (``\\u0069nputs``) spells it: bytes searches, in C, find
both; only a body that has one is parsed again to tell (``duplicate_key``).
"""

from __future__ import annotations

import json
from collections.abc import Collection, Iterable
from typing import Any

from loadonce.core.errors import InvalidRequestError

__all__ = ["quoted", "refuse_duplicate_keys"]

_REPEATED = "given more than once: send each key once (readers differ on which one counts)"


class _Pairs(dict[str, Any]):
    """A JSON object, and the first of its keys that was given twice (None: none)."""

    repeated: str | None = None


def _pairs(pairs: list[tuple[str, Any]]) -> _Pairs:
    built = _Pairs(pairs)
    if len(built) != len(pairs):  # rare: found only then
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                built.repeated = key
                break
            seen.add(key)
    return built


def quoted(names: Iterable[str]) -> tuple[bytes, ...]:
    """Each name as it appears quoted in a body's bytes: what ``might_repeat`` searches."""
    return tuple(b'"' + name.encode() + b'"' for name in names)


def might_repeat(raw: bytes, quoted_names: Iterable[bytes]) -> bool:
    """Whether ``raw`` may give one of the names twice in an object: one of them appears
    twice as a quoted string (``quoted``), or an escape may spell one."""
    if b"\\u" in raw:
        return True
    return any(raw.count(name) > 1 for name in quoted_names)


def duplicate_key(raw: bytes, members: Collection[str]) -> str | None:
    """The dotted path of the first key given twice in the body's object or in one of its
    ``members`` that is an object; None if there is none, or if the body is not JSON this
    parser reads (the route's own parser says what is wrong with it then)."""
    try:
        body = json.loads(raw, object_pairs_hook=_pairs)
    except (ValueError, RecursionError):
        return None
    if not isinstance(body, _Pairs):
        return None
    if body.repeated is not None:
        return f"body.{body.repeated}"
    for name in members:
        member = body.get(name)
        if isinstance(member, _Pairs) and member.repeated is not None:
            return f"body.{name}.{member.repeated}"
    return None


def refuse_duplicate_keys(
    raw: bytes, *, quoted_names: Iterable[bytes] | None, members: Collection[str] = ()
) -> None:
    """Raise ``InvalidRequestError`` (422 on loadonce's routes) naming a key given twice in
    the body's object or in its ``members`` (``duplicate_key``). ``quoted_names``: every key
    those objects may hold that the route reads (``quoted``), so that most bodies are
    cleared by bytes searches alone; None: always parse again (a route off the hot path)."""
    if quoted_names is not None and not might_repeat(raw, quoted_names):
        return
    repeated = duplicate_key(raw, members)
    if repeated is not None:
        raise InvalidRequestError([(repeated, _REPEATED)])
