"""Choosing each sequence's next token from the model's scores, by that sequence's settings.

Sequences of one batch may each sample differently (one greedy, one at temperature 0.8 with
its own seed), so the choice is made row by row; a row with a seed draws from its own random
generator, so its text depends on its seed only, not on the batch it shared.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from loadonce.core.errors import InvalidFieldError
from loadonce.core.generation import GenerationRequest


@dataclass(frozen=True, kw_only=True)
class Sampling:
    """How one sequence picks its tokens; ``temperature`` None: greedy."""

    temperature: float | None
    top_p: float
    top_k: int
    repetition_penalty: float
    seed: int | None


def sampling_of(request: GenerationRequest, generation_config: Any) -> Sampling:
    """The request's settings, the model's generation config for what it leaves unset
    (greedy unless the model's config samples). A temperature of 0 is greedy."""

    def configured(name: str, default: Any) -> Any:
        value = getattr(generation_config, name, None)
        return default if value is None else value

    samples = bool(configured("do_sample", False))
    temperature = request.temperature
    if temperature is None:
        temperature = float(configured("temperature", 1.0)) if samples else None
    return Sampling(
        temperature=temperature or None,
        top_p=request.top_p if request.top_p is not None else float(configured("top_p", 1.0)),
        top_k=request.top_k if request.top_k is not None else int(configured("top_k", 0)),
        repetition_penalty=(
            request.repetition_penalty
            if request.repetition_penalty is not None
            else float(configured("repetition_penalty", 1.0))
        ),
        seed=request.seed,
    )


def check_sampling(request: GenerationRequest) -> None:
    """Each setting within its range (a 400 naming it), before the request waits."""
    checks: list[tuple[str, Any, bool, str]] = [
        ("temperature", request.temperature, _between(request.temperature, 0, 100), "0 to 100"),
        ("top_p", request.top_p, _between(request.top_p, 0, 1), "0 to 1"),
        (
            "repetition_penalty",
            request.repetition_penalty,
            _between(request.repetition_penalty, 0, 100, low_open=True),
            "above 0, to 100",
        ),
        ("top_k", request.top_k, request.top_k is None or request.top_k >= 0, "0 or more"),
        # OpenAI takes any int64 (-1 is a common "any"); torch's generators take them all.
        (
            "seed",
            request.seed,
            request.seed is None or -(2**63) <= request.seed < 2**63,
            "a 64-bit integer",
        ),
    ]
    for name, value, fits, expected in checks:
        if value is not None and not fits:
            raise InvalidFieldError(name, f"{name} must be {expected}; got {value!r}")


def _between(value: float | None, low: float, high: float, *, low_open: bool = False) -> bool:
    if value is None:
        return True
    return (value > low if low_open else value >= low) and value <= high


# A temperature this low picks the best token anyway; dividing by it would overflow (vLLM's
# threshold too).
_GREEDY_BELOW = 1e-5


def as_the_engine_samples(options: Mapping[str, Any]) -> dict[str, Any]:
    """A pipeline's generation options, taken as the engine takes the same values: a
    temperature too low to sample with is the greedy choice, a repetition penalty past
    what float32 can compute is the most it can, and any score still overflowing is kept
    finite by transformers' own processor; a whole number is a float. Passed as they were,
    each made ``generate`` raise: the model's 500 for values the rules accept."""
    taken = dict(options)
    for name in ("temperature", "top_p", "repetition_penalty"):
        value = taken.get(name)
        if isinstance(value, int) and not isinstance(value, bool):
            # generate's processors take a float only: a temperature of 2 was a ValueError.
            taken[name] = float(value)
    temperature = taken.get("temperature")
    if isinstance(temperature, int | float) and temperature < _GREEDY_BELOW:
        del taken["temperature"]
        taken["do_sample"] = False
    penalty = taken.get("repetition_penalty")
    if isinstance(penalty, int | float) and penalty < _LEAST_PENALTY:
        # Below this, a seen token's score passes float32's range: the order of the scores,
        # what sampling reads, is the same.
        taken["repetition_penalty"] = _LEAST_PENALTY
    taken.setdefault("remove_invalid_values", True)
    return taken


_LEAST_PENALTY = 1e-30


class RowSampler:
    """One sequence's token choice (with its own random generator when it has a seed)."""

    def __init__(self, sampling: Sampling, torch: Any, device: Any) -> None:
        self.sampling = sampling
        self._torch = torch
        self._generator = None
        if sampling.seed is not None and sampling.temperature is not None:
            self._generator = torch.Generator(device=device).manual_seed(sampling.seed)

    def choose(self, scores: Any, seen: Sequence[int]) -> int:
        """The next token from one row of scores (vocabulary-long), given the tokens the
        sequence holds so far (prompt and generated) for the repetition penalty."""
        torch, sampling = self._torch, self.sampling
        scores = scores.float()
        if sampling.repetition_penalty != 1.0 and seen:
            # As transformers' RepetitionPenaltyLogitsProcessor: seen tokens made less likely.
            ids = torch.tensor(sorted(set(seen)), device=scores.device)
            picked = scores[ids]
            penalty = sampling.repetition_penalty
            scores[ids] = torch.where(picked < 0, picked * penalty, picked / penalty)
        if sampling.temperature is None or sampling.temperature < _GREEDY_BELOW:
            return int(scores.argmax())
        # Extreme settings (a penalty of 1e-300) overflow: the largest finite score stands
        # for infinity, so a row samples from what is left rather than from NaNs.
        most = torch.finfo(scores.dtype).max
        scores = torch.nan_to_num(scores / sampling.temperature, nan=-math.inf, posinf=most)
        if 0 < sampling.top_k < scores.shape[-1]:
            kth = torch.topk(scores, sampling.top_k).values[-1]
            scores = scores.masked_fill(scores < kth, -float("inf"))
        if sampling.top_p < 1.0:
            ordered, order = torch.sort(scores, descending=True)
            cumulative = ordered.softmax(-1).cumsum(-1)
            # Keep the smallest set whose probability reaches top_p (the first token always).
            drop = cumulative - ordered.softmax(-1) >= sampling.top_p
            # Said of the first too when top_p is below float32's least (1e-300 reads 0),
            # which masked every token: sampling from nothing raised.
            drop[0] = False
            scores = scores.masked_fill(
                torch.zeros_like(drop).scatter(0, order, drop), -float("inf")
            )
        probabilities = scores.softmax(-1)
        return int(torch.multinomial(probabilities, 1, generator=self._generator))
