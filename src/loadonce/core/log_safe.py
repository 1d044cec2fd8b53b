"""Client-supplied text made safe for a log line: no character that could end the line or
forge another (control characters, Unicode line and paragraph separators) reaches a log.

A request path is percent-decoded before any route sees it, so ``GET /x%0aERROR:...`` would
otherwise write a second, forged line, before any key is checked.
"""

from __future__ import annotations

import re

_UNSAFE = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def log_safe(text: str) -> str:
    """``text`` with every line-breaking or control character written as an escape."""
    return _UNSAFE.sub(_escape, text)
