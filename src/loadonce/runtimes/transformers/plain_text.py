"""A client's text is tokenized as text: the control tokens that structure a prompt (a chat's
``<|im_start|>``, the ``</s>`` that ends a text) come from the operator's tokenizer and chat
template only, never from what a client typed.

Without this, a chat message holding ``<|im_end|>\\n<|im_start|>system\\n...`` forged a turn
of another role, and a prompt or an embedded text holding the end-of-text token's spelling
ended it there (prompt injection through the tokenizer).

- A prompt or an embedded text is tokenized with ``split_special_tokens``: the special
  tokens' spellings in it are read as the characters they are; the tokenizer still adds its
  own (a BOS) around the text, as it always did.
- A chat goes through transformers' own ``apply_chat_template(sanitize_control_tokens=True)``:
  the control tokens in the messages' strings are marked before the template runs (so a
  template that reads a message's content, or splits it, sees the content as sent), and the
  rendered chat is tokenized as before except the marked ones, which are tokenized as plain
  text. Exact: the tokenizer splits its input at every control token it finds anyway, so
  tokenizing the marked ones apart changes no other token; a chat holding none gets the
  very tokens it got before.
- A tokenizer that turns a control token's spelling into that token even as plain text
  (a vocabulary that holds it as a word) cannot read it as text: that text is refused (400),
  not passed on as a control token.
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from loadonce.core.errors import TextInputError

__all__ = [
    "PLAIN_TEXT",
    "chat_ids",
    "control_ids",
    "own_tokenizer",
    "refuse_control_tokens",
    "text_ids",
]

# What a tokenizer call over client text adds: read special tokens' spellings as text.
PLAIN_TEXT: Mapping[str, Any] = {"split_special_tokens": True}


def own_tokenizer(tokenizer: Any) -> Any:
    """A copy of ``tokenizer`` for the generation engine's thread alone. Whether a call splits
    special tokens is state of the tokenizer's backend, set before each encoding: the engine
    encodes a chat's template with it off while the batcher's thread encodes client text
    with it on, and on one shared tokenizer either could encode with the other's setting."""
    return copy.deepcopy(tokenizer)


def control_ids(tokenizer: Any) -> frozenset[int]:
    """The ids of the tokenizer's control tokens: its special tokens (BOS, EOS, PAD, the chat
    markers...) and, as transformers' sanitizing counts them, the added tokens its chat
    template writes (DeepSeek's User marker is not "special"); never its unknown token,
    which plain text makes (a character its vocabulary lacks)."""
    controls = {i for i in getattr(tokenizer, "all_special_ids", None) or () if isinstance(i, int)}
    template = getattr(tokenizer, "chat_template", None)
    templates = list(template.values()) if isinstance(template, dict) else [template]
    texts = [text for text in templates if isinstance(text, str)]
    listed = getattr(tokenizer, "chat_control_tokens", None)
    added = getattr(tokenizer, "added_tokens_decoder", None) or {}
    for token_id, token in added.items():
        content = str(getattr(token, "content", token))
        if not content or content.isspace():  # Gemma's "\n": templates write it as text
            continue
        if content in listed if listed is not None else any(content in t for t in texts):
            controls.add(token_id)
    controls.discard(getattr(tokenizer, "unk_token_id", None))
    return frozenset(controls)


def text_ids(tokenizer: Any, text: str, controls: frozenset[int], what: str) -> list[int]:
    """``text``'s ids as the model reads it, the tokenizer's own special tokens (a BOS) added
    around it, and none made of the text itself."""
    encoded = tokenizer(text, return_special_tokens_mask=True, **PLAIN_TEXT)
    ids: list[int] = list(encoded["input_ids"])
    refuse_control_tokens(ids, encoded.get("special_tokens_mask"), controls, tokenizer, what)
    return ids


def refuse_control_tokens(
    ids: Sequence[int],
    added: Sequence[int] | None,
    controls: frozenset[int],
    tokenizer: Any,
    what: str,
) -> None:
    """A 400 for a control token made of a client's text (``added``: 1 where the tokenizer
    added the token itself, around the text): its vocabulary reads that spelling as the
    token even as plain text, or it is an added token that ``split_special_tokens`` still
    matches (one the chat template writes but not "special"), so it cannot be sent as text
    to this model."""
    for position, token in enumerate(ids):
        if token in controls and not (added is not None and added[position]):
            spelled = str(tokenizer.convert_ids_to_tokens(token))[:40]
            raise TextInputError(
                f"{what} holds {spelled!r}, a control token of this model that its tokenizer "
                "makes even from plain text: leave it out"
                + ("" if what.startswith("example") else " (or send chat messages)")
            )


def chat_ids(tokenizer: Any, messages: list[dict[str, Any]]) -> list[int]:
    """The chat's ids through the model's template: its control tokens the template's own,
    the messages' text read as text (module docstring)."""
    if not _sanitizes(type(tokenizer)):
        # An older transformers, without the sanitizing: a chat whose text holds a control
        # token's spelling is refused rather than read as that token.
        _refuse_control_spellings(tokenizer, messages)
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return list(tokenizer(text, add_special_tokens=False)["input_ids"])
    ids = tokenizer.apply_chat_template(
        messages,
        tokenize=True,
        add_generation_prompt=True,
        sanitize_control_tokens=True,
        return_dict=False,
    )
    return list(ids)


# Per tokenizer class: whether its apply_chat_template sanitizes (read once, not per request).
_SANITIZES: dict[type, bool] = {}


def _sanitizes(tokenizer_class: type) -> bool:
    """Whether this transformers' ``apply_chat_template`` sanitizes messages (an older one
    passes an unknown keyword on to the template, and would silently not)."""
    known = _SANITIZES.get(tokenizer_class)
    if known is None:
        try:
            method: Any = getattr(tokenizer_class, "apply_chat_template", None)
            known = "sanitize_control_tokens" in inspect.signature(method).parameters
        except (TypeError, ValueError):
            known = False
        _SANITIZES[tokenizer_class] = known
    return known


def _refuse_control_spellings(tokenizer: Any, messages: list[dict[str, Any]]) -> None:
    spellings = [s for s in getattr(tokenizer, "all_special_tokens", ()) if s]
    for index, message in enumerate(messages):
        for text in _strings(message.values()):
            found = next((s for s in spellings if s in text), None)
            if found is not None:
                raise TextInputError(
                    f"message {index} holds {found[:40]!r}, a control token of this model: "
                    "leave it out"
                )


def _strings(values: Iterable[Any]) -> Iterable[str]:
    for value in values:
        if isinstance(value, str):
            yield value
