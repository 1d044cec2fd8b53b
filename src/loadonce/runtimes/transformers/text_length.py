"""How long a text may be, in characters, before its tokenizer reads it: a bound on the work a
text may cost the model's thread, known without tokenizing it.

A token stands for at most as many characters as its longest entry in the vocabulary spells
(a byte-level entry spells one character per byte it stands for; ``##ab`` or ``▁ab`` stand
for fewer), so a text that fits the context spans at most ``context x longest`` characters,
besides the whitespace its tokenizer drops: those are not counted ("good", 300 spaces, "movie"
is four tokens, and was refused as more than a context of 32), up to ``TEXT_ROOM`` times the bound
in all (the tokenizer reads them too). Tokenizing a prompt of 20 MB took 18 s on the model's
thread, and every other stream of that model waited, only to refuse it at the end; a text past
the bound is refused (or, with truncation, cut) before the tokenizer sees it.
"""

from __future__ import annotations

from typing import Any

from loadonce.core.errors import ContextLengthError

# When the vocabulary cannot be read: a bound that still refuses megabytes at once.
_UNKNOWN_LONGEST = 64
# Whitespace and all, a text may have this many times the bound's characters.
TEXT_ROOM = 8


def longest_token_characters(tokenizer: Any) -> int:
    """The most characters one token of ``tokenizer`` stands for (its longest entry)."""
    try:
        vocabulary = tokenizer.get_vocab()
    except Exception:  # a tokenizer without a readable vocabulary
        return _UNKNOWN_LONGEST
    return max((len(entry) for entry in vocabulary), default=_UNKNOWN_LONGEST) or 1


def most_characters(context: int | None, longest_token: int) -> int | None:
    """The most characters, whitespace aside, a text fitting ``context`` tokens can have
    (None: no bound)."""
    return None if context is None else context * longest_token


def exceeds(text: str, most: int | None) -> bool:
    """Whether ``text`` cannot fit: more characters than ``most`` besides its whitespace, or
    more than ``TEXT_ROOM`` times ``most`` in all. Counted in C (``str.count``), never a copy."""
    if most is None or len(text) <= most:
        return False
    if len(text) > most * TEXT_ROOM:
        return True
    return len(text) - whitespace([text]) > most


def whitespace(texts: list[str]) -> int:
    """The whitespace characters of ``texts``, which their tokenizer drops."""
    return sum(text.count(space) for text in texts for space in " \n\t\r")


def refuse_if_longer(text: str, most: int | None, context: int | None, what: str) -> None:
    """A ContextLengthError for a text that cannot fit, said without tokenizing it."""
    if exceeds(text, most):
        raise ContextLengthError(
            f"{what} is {len(text)} characters long: more than this model reads (its context "
            f"of {context} tokens, none longer than {(most or 0) // (context or 1)} characters, "
            "spans at most that, whitespace aside)"
        )
