"""How long a text can be, in characters, and still fit a model's context: a bound known
without tokenizing it.

A token stands for at most as many characters as its longest entry in the vocabulary spells
(a byte-level entry spells one character per byte it stands for; ``##ab`` or ``▁ab`` stand
for fewer). So a text longer than ``context x longest`` characters holds more tokens than the
context takes, whatever its content. Tokenizing a prompt of 20 MB took 18 s on the model's
thread, and every other stream of that model waited, only to refuse it at the end; it is now
refused (or, with truncation, cut) before the tokenizer sees it.
"""

from __future__ import annotations

from typing import Any

from loadonce.core.errors import ContextLengthError

# When the vocabulary cannot be read: a bound that still refuses megabytes at once.
_UNKNOWN_LONGEST = 64


def longest_token_characters(tokenizer: Any) -> int:
    """The most characters one token of ``tokenizer`` stands for (its longest entry)."""
    try:
        vocabulary = tokenizer.get_vocab()
    except Exception:  # a tokenizer without a readable vocabulary
        return _UNKNOWN_LONGEST
    return max((len(entry) for entry in vocabulary), default=_UNKNOWN_LONGEST) or 1


def most_characters(context: int | None, longest_token: int) -> int | None:
    """The most characters a text fitting ``context`` tokens can have (None: no bound)."""
    return None if context is None else context * longest_token


def refuse_if_longer(text: str, most: int | None, context: int | None, what: str) -> None:
    """A ContextLengthError for a text that cannot fit, said without tokenizing it."""
    if most is not None and len(text) > most:
        raise ContextLengthError(
            f"{what} is {len(text)} characters long: more tokens than this model's context of "
            f"{context} (no token of its vocabulary is longer than {most // (context or 1)} "
            "characters)"
        )
