"""Client-supplied text made safe for a log line: no character that could end the line or
forge another (control characters, Unicode line and paragraph separators) reaches a log, nor
one that changes how the line reads without being seen (Unicode's invisible format
characters: bidirectional overrides and isolates, which show ``/models/ohce/predict`` for
another path, zero-width characters).

A request path is percent-decoded before any route sees it, so ``GET /x%0aERROR:...`` would
otherwise write a second, forged line, before any key is checked.
"""

from __future__ import annotations

import re

_UNSAFE = re.compile(
    r"[\x00-\x1f\x7f-\x9f\xad\u061c\u180e\u200b-\u200f\u2028-\u202e\u2060-\u2064"
    r"\u2066-\u206f\ufeff\ufff9-\ufffb\U000e0000-\U000e007f]"
)


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    if code < 0x100:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def log_safe(text: str) -> str:
    """``text`` with every line-breaking or control character written as an escape."""
    return _UNSAFE.sub(_escape, text)


# Client-supplied text in a log line (a request's path, an exception's message that quotes
# the request) is cut past this many characters, escapes included: a 30 KB path wrote a 40 KB
# access line (80 KB in JSON, which has it twice), and a model's exception quoting a 1 MB
# input wrote 1 MB of traceback, per request.
MOST_LOGGED_CHARACTERS = 2000
# The longest escape ``log_safe`` writes (``\U000e0001``), less one.
_ESCAPE_TAIL = 9


def log_safe_cut(text: str, most: int = MOST_LOGGED_CHARACTERS) -> str:
    """``text`` made ``log_safe`` and cut after ``most`` characters of that, never inside an
    escape (the cut says how long ``text`` was), so one request's log stays bounded whatever
    it sent. Only the part kept is escaped: no work in proportion to what is cut."""
    safe = _UNSAFE.sub(_escape, text[:most])
    if len(safe) <= most and len(text) <= most:
        return safe
    kept = safe[:most]
    backslash = kept.rfind("\\", max(0, most - _ESCAPE_TAIL))
    if backslash != -1:  # maybe an escape the cut would split: cut before it
        kept = kept[:backslash]
    return f"{kept}... (cut: {len(text):,} characters in all)"


# A name a client sent, quoted in an answer, is cut past this: an error quoting a
# 20,000-character name was mostly that name, and gRPC cut it before the useful part.
MOST_QUOTED_CHARACTERS = 100


def quoted(text: str) -> str:
    """``text``, a name the client sent, as an answer quotes it: in single quotes, made
    ``log_safe`` (a newline in a model's name reached the client's log as a line break)
    and cut past ``MOST_QUOTED_CHARACTERS``."""
    if len(text) > MOST_QUOTED_CHARACTERS:
        text = text[:MOST_QUOTED_CHARACTERS] + "\u2026"
    return f"'{log_safe(text)}'"
