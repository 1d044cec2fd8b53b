"""Zero-shot classification reads each text paired with one hypothesis per candidate label
("This example is {label}."): the pair, not the text alone, must fit the model's context.

A text that fit alone but not beside a long label's hypothesis, or a label whose hypothesis
alone filled the context, went into the model past its positions (a 500) when the tokenizer
sets no ``model_max_length`` (the pipeline truncates the text, never the hypothesis, to that
length). Each pair is counted here, without tokenizing it: the text's tokens (counted once),
the longest hypothesis of its labels (each label tokenized once per request), and what the
tokenizer adds to a pair beyond a single text (BERT's second [SEP]).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from loadonce.core.errors import ContextLengthError, InvalidInputError
from loadonce.runtimes.transformers.text_length import exceeds

# The zero-shot pipeline's own default.
DEFAULT_HYPOTHESIS = "This example is {}."


def hypothesis_lengths(
    tokenizer: Any, template: str, labels: Iterable[str], most_characters: int | None
) -> dict[str, int]:
    """Each label's hypothesis length in tokens, without the special tokens a pair adds."""
    unique = list(dict.fromkeys(labels))
    hypotheses = [template.format(label) for label in unique]
    for label, hypothesis in zip(unique, hypotheses, strict=True):
        if exceeds(hypothesis, most_characters):
            # Refused before the tokenizer reads a label of megabytes.
            raise ContextLengthError(
                f"the candidate label {_shown(label)} is {len(label)} characters long: more "
                "than this model reads"
            )
    ids = tokenizer(hypotheses, add_special_tokens=False)["input_ids"]
    return {label: len(tokens) for label, tokens in zip(unique, ids, strict=True)}


def check_pairs(
    tokenizer: Any,
    texts: Sequence[int],
    labels: Sequence[Sequence[str]],
    lengths: dict[str, int],
    *,
    context: int,
    truncation: bool,
) -> None:
    """Refuse (400) an example whose text and longest hypothesis exceed ``context`` tokens;
    with truncation, only one whose hypothesis leaves no room for a token of text. ``texts``:
    each text's tokens, its special tokens included."""
    added = _pair_extra(tokenizer)
    single = _special_tokens(tokenizer, pair=False)
    for index, (text_tokens, own) in enumerate(zip(texts, labels, strict=True)):
        label = max(own, key=lambda name: lengths[name])
        total = text_tokens + lengths[label] + added
        if total <= context:
            continue
        if truncation and single + added + lengths[label] < context:
            continue  # the pipeline cuts the text (only_first) to fit
        raise ContextLengthError(
            f"example {index}: its text and the hypothesis of the label {_shown(label)} are "
            f"{total} tokens long; this model takes at most {context}"
            + (
                ""
                if truncation
                else " (truncation = true in options.call cuts longer texts instead)"
            )
        )


def template_of(options: Mapping[str, Any]) -> str:
    """The hypothesis template the pipeline will use: the one given, else its default. One
    the pipeline would fail on (it formats the label into it) is an InvalidInputError."""
    template = options.get("hypothesis_template", DEFAULT_HYPOTHESIS)
    try:
        if isinstance(template, str) and template.format("label") != template:
            return template
    except (IndexError, KeyError, ValueError):
        pass
    raise InvalidInputError(
        "hypothesis_template must be a string with one {} where the label goes; got "
        f"{template!r}"[:200]
    )


def _special_tokens(tokenizer: Any, *, pair: bool) -> int:
    try:
        return int(tokenizer.num_special_tokens_to_add(pair=pair))
    except Exception:  # a tokenizer that cannot say: counted as adding none
        return 0


def _pair_extra(tokenizer: Any) -> int:
    return max(0, _special_tokens(tokenizer, pair=True) - _special_tokens(tokenizer, pair=False))


def _shown(label: str) -> str:
    return repr(label) if len(label) <= 40 else repr(label[:40]) + "..."
