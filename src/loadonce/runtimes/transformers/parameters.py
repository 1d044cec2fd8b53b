"""Request parameters of Transformers models: what a client may set, checked before it waits.

A generating model takes the generation parameters below from each request (capped by the
operator's ``max_new_tokens``); other pipeline arguments only when the operator lists them in
``options.request_parameters``. Every value is checked here, so a wrong one is a 400 that
names it, never an error from inside ``generate``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from loadonce.core.errors import InvalidInputError

# The most new tokens one request may ask for when the operator sets no other cap: a
# request's length decides how long the model is busy with it (and its batch).
DEFAULT_MAX_NEW_TOKENS = 256


@dataclass(frozen=True)
class Rule:
    """What one parameter accepts, said the way the 400 says it."""

    accepts: Callable[[Any], bool]
    expected: str


def _integer(low: int, high: int | None = None) -> Callable[[Any], bool]:
    def accepts(value: Any) -> bool:
        if isinstance(value, bool) or not isinstance(value, int):
            return False
        return value >= low and (high is None or value <= high)

    return accepts


def _number(low: float, high: float, *, low_included: bool = False) -> Callable[[Any], bool]:
    def accepts(value: Any) -> bool:
        if isinstance(value, bool) or not isinstance(value, int | float):
            return False
        if not math.isfinite(value):
            return False
        return (value >= low if low_included else value > low) and value <= high

    return accepts


def _boolean(value: Any) -> bool:
    return isinstance(value, bool)


def generation_rules(cap: int) -> dict[str, Rule]:
    """The generation parameters a generating model takes per request, and their bounds."""
    return {
        "max_new_tokens": Rule(_integer(1, cap), f"an integer from 1 to {cap}"),
        "min_new_tokens": Rule(_integer(0, cap), f"an integer from 0 to {cap}"),
        # 0 is the greedy choice, as the generate routes take it (and OpenAI's range allows).
        "temperature": Rule(
            _number(0.0, 100.0, low_included=True), "a number from 0 (greedy) to 100"
        ),
        "top_p": Rule(_number(0.0, 1.0, low_included=True), "a number from 0 to 1"),
        "top_k": Rule(_integer(0), "an integer, 0 or more"),
        "do_sample": Rule(_boolean, "true or false"),
        "repetition_penalty": Rule(_number(0.0, 100.0), "a number above 0, at most 100"),
    }


def _one_of(*names: str) -> Callable[[Any], bool]:
    # The pipelines read these names case-insensitively (an enum looked up by name.upper()).
    return lambda value: isinstance(value, str) and value.lower() in names


def pipeline_rules(vocabulary: int) -> dict[str, Rule]:
    """Rules for pipeline arguments an operator may allow on a task that does not generate.
    A value the pipeline cannot take failed inside it (a KeyError or TypeError: a 500)."""
    return {
        "top_k": Rule(
            lambda value: value is None or _integer(1, vocabulary)(value),
            f"an integer from 1 to {vocabulary}, or null",
        ),
        "truncation": Rule(_boolean, "true or false"),
        # Text classification's function over the scores.
        "function_to_apply": Rule(
            _one_of("sigmoid", "softmax", "none"), "one of 'sigmoid', 'softmax', 'none'"
        ),
        # Token classification's grouping of tokens into words and entities.
        "aggregation_strategy": Rule(
            _one_of("none", "simple", "first", "average", "max"),
            "one of 'none', 'simple', 'first', 'average', 'max'",
        ),
        # Fill-mask's candidate words (one, here: a list is not a single value).
        "targets": Rule(
            lambda value: isinstance(value, str) and bool(value.strip()), "a non-empty word"
        ),
    }


def _scalar(value: Any) -> bool:
    return (
        value is None or isinstance(value, bool | int | str) or _number(-math.inf, math.inf)(value)
    )


def check_parameters(parameters: Mapping[str, Any], rules: Mapping[str, Rule]) -> None:
    """Refuse (400) a value its rule does not accept; a parameter without a rule (one the
    operator allowed) must at least be a single JSON value."""
    for name, value in parameters.items():
        rule = rules.get(name)
        if rule is None:
            if not _scalar(value):
                raise InvalidInputError(
                    f"parameter '{name}' must be a single value (a number, a string, true, "
                    "false or null)"
                )
        elif not rule.accepts(value):
            raise InvalidInputError(
                f"parameter '{name}' must be {rule.expected}; got {value!r}"[:300]
            )
    low, high = parameters.get("min_new_tokens"), parameters.get("max_new_tokens")
    if isinstance(low, int) and isinstance(high, int) and low > high:
        raise InvalidInputError(
            f"parameter 'min_new_tokens' ({low}) is more than 'max_new_tokens' ({high})"
        )
