"""Text as the UTF-8 bytes of an answer, whatever text a model returned.

A Python string can hold what UTF-8 cannot write: a lone surrogate (text decoded with
``surrogateescape``, a string cut between the halves of a pair, ``chr(0xD800)``). ``str.encode``
raises on it, and one such character failed the whole answer as "the server failed
(UnicodeEncodeError)", or cut a stream midway. It is written as U+FFFD, the replacement
character a decoder puts in place of bytes that are not UTF-8, and the rest of the answer
reaches the client.
"""

from __future__ import annotations

import re

_SURROGATE = re.compile("[\ud800-\udfff]")
REPLACEMENT = "\ufffd"


def utf8(text: str) -> bytes:
    """``text`` encoded as UTF-8, each lone surrogate written as U+FFFD."""
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:  # rare: only then is the text scanned
        return _SURROGATE.sub(REPLACEMENT, text).encode("utf-8")
