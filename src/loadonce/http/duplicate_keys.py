"""A key given twice in one JSON object of a request to loadonce's own routes is refused.

JSON parsers disagree on ``{"max_new_tokens": 1, "max_new_tokens": 1000}``: pydantic-core and
Python's ``json`` keep the last, RapidJSON and many proxies and firewalls read the first. A
filter in front of the server that checks the first value would pass a request that does
something else here (parameter smuggling). loadonce's JSON routes refuse it instead, naming
the key, where loadonce reads the key: the body's own fields, its ``parameters``, and named
inputs (``{"inputs": {"a": ..., "b": ...}}``); what a model receives inside its data is the
model's to read.

Checked at next to no cost: the parser that reads the body does not tell, and a second parse
of every body would double the work of the hot path. Every key in a JSON text is followed by
a colon, so a body with no more colons than the keys its parsed objects hold gives none twice:
one count of a byte, in C, clears the usual body (``{"inputs": [[...]]}``: one colon, one
key). Else a key can be given twice only where its quoted name appears twice in the bytes,
or where an escape spells it (``\\u0069nputs``, ``a\\/b``; a name holding a quote, a
backslash or a control character is escaped in any body): bytes searches find both. Only a
body that has one is parsed again to tell (``duplicate_key``).
"""

from __future__ import annotations

import json
from collections.abc import Collection, Iterable, Sequence
from typing import Any

from loadonce.core.errors import InvalidRequestError

__all__ = ["refuse_duplicate_keys", "repeated_key"]

_REPEATED = "given more than once: send each key once (readers differ on which one counts)"


class _Pairs(dict[str, Any]):
    """A JSON object, and the first of its keys that was given twice (None: none)."""

    repeated: str | None = None


def repeated_key(pairs: Sequence[tuple[str, Any]]) -> str | None:
    """The first key given twice among a JSON object's ``pairs`` (what ``json``'s
    ``object_pairs_hook`` is given); None if none is."""
    seen: set[str] = set()
    for key, _ in pairs:
        if key in seen:
            return key
        seen.add(key)
    return None


def _pairs(pairs: list[tuple[str, Any]]) -> _Pairs:
    built = _Pairs(pairs)
    if len(built) != len(pairs):  # rare: looked for only then
        built.repeated = repeated_key(pairs)
    return built


def quoted(names: Iterable[str]) -> tuple[bytes, ...]:
    """Each name as it appears quoted in a body's bytes (a lone surrogate, which only an
    escape spells, kept as its bytes: never an error)."""
    return tuple(b'"' + name.encode("utf-8", "surrogatepass") + b'"' for name in names)


def might_repeat(raw: bytes, held: Sequence[Collection[str]]) -> bool:
    """Whether ``raw`` may give a key twice in one of the objects whose keys are ``held``
    (the keys the parse kept, object by object)."""
    if raw.count(b":") == sum(map(len, held)):
        return False  # each colon is a key's, and each key was kept: none was given twice
    if b"\\" in raw:
        return True
    return any(raw.count(name) > 1 for keys in held for name in quoted(keys))


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
    raw: bytes, *, held: Sequence[Collection[str]] | None, members: Collection[str] = ()
) -> None:
    """Raise ``InvalidRequestError`` (422 on loadonce's routes) naming a key given twice in
    the body's object or in its ``members`` (``duplicate_key``). ``held``: the keys the
    route's parse kept in each of those objects (the body's fields given, its parameters',
    its named inputs'), so that most bodies are cleared by a count of their colons
    (``might_repeat``); None: always parse again (a route off the hot path)."""
    if held is not None and not might_repeat(raw, held):
        return
    repeated = duplicate_key(raw, members)
    if repeated is not None:
        raise InvalidRequestError([(repeated, _REPEATED)])
