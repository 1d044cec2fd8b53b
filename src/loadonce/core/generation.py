"""Generating text token by token: what a request asks for, what it is answered, and the
interface a model's generator implements.

A ``GenerationEngine`` advances every sequence it holds by one token per call of ``advance``
(one forward pass for all of them, where the runtime can batch them); the model's
``GenerationQueue`` (core/generation_queue.py) decides which sequences join and leave between
two calls. A predictor of your own that yields text from ``Predictor.generate`` is driven by
``IteratorEngine``: one chunk per sequence per call, so concurrent streams take turns.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from loadonce.core.errors import (
    InvalidInputError,
    NewTokensLimitError,
    TextInputError,
    as_exception,
)

__all__ = [
    "Delta",
    "FinishReason",
    "Finished",
    "GenerationEngine",
    "GenerationRequest",
    "IteratorEngine",
    "Step",
]

# Why a generation ended. "stop": the model ended it (its end-of-sequence token) or a stop
# string was reached; "length": the new-token limit; "deadline": the request's deadline passed
# while it was generating (what it generated until then is kept).
FinishReason = Literal["stop", "length", "deadline"]


@dataclass(frozen=True, kw_only=True)
class GenerationRequest:
    """What one request asks a generating model for: a prompt, or chat messages the model's
    template turns into one, and how to sample. ``None``: the model's own default."""

    prompt: str | None = None
    messages: tuple[Mapping[str, Any], ...] | None = None
    max_new_tokens: int | None = None
    # Without max_new_tokens: at most this many (a protocol's own default, OpenAI's 16 for
    # completions), never more than the model's default nor than its context has room for.
    # None: the model's default.
    default_new_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    seed: int | None = None
    repetition_penalty: float | None = None
    # Text that ends the generation where it first appears (it is not part of the answer).
    stop: tuple[str, ...] = ()


@dataclass(frozen=True)
class Delta:
    """Text a generation adds, as it is generated (what a stream sends)."""

    text: str


@dataclass(frozen=True, kw_only=True)
class Finished:
    """The last event of a generation: why it ended and what it counted."""

    reason: FinishReason
    prompt_tokens: int
    completion_tokens: int


@dataclass(frozen=True, kw_only=True)
class Step:
    """One sequence's outcome of one ``advance``: the text its new token adds (possibly
    empty: a token that completes no character yet, or an end-of-sequence token).
    ``prompt_tokens``: set on the sequence's first step. ``finish``: the sequence ended with
    this step ("stop" or "length"); the engine has let it go."""

    text: str
    tokens: int = 1
    prompt_tokens: int | None = None
    finish: FinishReason | None = None


class GenerationEngine(ABC):
    """The generator of one loaded model; every call comes from one thread at a time."""

    # False: sequences join only when none is being generated (static batching: the batch
    # runs until its last sequence ends). True: they join between any two steps.
    joins_mid_flight: bool = True

    def check(self, request: GenerationRequest) -> None:  # noqa: B027 - nothing by default
        """Refuse (``InvalidInputError``: a 400) what the request asks that this model cannot
        do, before it waits: cheap checks only; the prompt itself is read in ``advance``."""

    @abstractmethod
    def advance(
        self, joining: Mapping[int, GenerationRequest], leaving: Collection[int]
    ) -> dict[int, Step | Exception]:
        """Let the ``leaving`` sequences go, take the ``joining`` ones in (their first token,
        or an exception for a request the model cannot take, such as a prompt over its
        context), and give every other sequence held its next token. Keys: the ids the
        queue gave the sequences. An exception raised (not returned) fails every sequence."""

    def reset(self) -> None:  # noqa: B027 - nothing held by default
        """Forget every sequence (after ``advance`` raised)."""


class IteratorEngine(GenerationEngine):
    """Drives ``generate`` iterators (a predictor of your own): one chunk of text per
    sequence per ``advance``; the sequence ends when its iterator does."""

    def __init__(
        self,
        generate: Callable[[GenerationRequest], Iterator[str]],
        *,
        default_new_tokens: int,
        max_new_tokens: int,
    ) -> None:
        self._generate = generate
        self._default = default_new_tokens
        self._cap = max_new_tokens
        self._running: dict[int, _Running] = {}

    def check(self, request: GenerationRequest) -> None:
        check_new_tokens(request, self._cap)
        if request.prompt is None:
            raise TextInputError("this model takes a prompt, not chat messages")

    def advance(
        self, joining: Mapping[int, GenerationRequest], leaving: Collection[int]
    ) -> dict[int, Step | Exception]:
        for sequence in leaving:
            running = self._running.pop(sequence, None)
            if running is not None:
                running.close()
        outcomes: dict[int, Step | Exception] = {}
        for sequence, request in joining.items():
            try:
                chunks = self._generate(request)
            except BaseException as exc:  # this request's failure only, not its neighbours'
                outcomes[sequence] = as_exception(exc)
                continue
            limit = request.max_new_tokens or unasked_limit(request, self._default)
            self._running[sequence] = _Running(chunks=chunks, limit=limit)
        for sequence, running in list(self._running.items()):
            try:
                step: Step | Exception = running.next(first=sequence in joining)
            except BaseException as exc:  # one generator failing ends its own sequence only
                step = as_exception(exc)
            outcomes[sequence] = step
            if not isinstance(step, Step) or step.finish is not None:
                del self._running[sequence]
                running.close()
        return outcomes

    def reset(self) -> None:
        for running in self._running.values():
            running.close()
        self._running.clear()


@dataclass
class _Running:
    chunks: Iterator[str]
    limit: int
    made: int = field(default=0)

    def next(self, *, first: bool) -> Step:
        prompt_tokens = 0 if first else None
        try:
            text = next(self.chunks)
        except StopIteration:
            return Step(text="", tokens=0, prompt_tokens=prompt_tokens, finish="stop")
        if not isinstance(text, str):
            raise TypeError(f"generate must yield str, not {type(text).__name__}")
        self.made += 1
        finish: FinishReason | None = "length" if self.made >= self.limit else None
        return Step(text=text, prompt_tokens=prompt_tokens, finish=finish)

    def close(self) -> None:
        close = getattr(self.chunks, "close", None)
        if close is not None:
            close()


# Stop strings are searched for after every token: their number and length bound that work.
MOST_STOP_STRINGS = 8
LONGEST_STOP_STRING = 128


def check_request(request: GenerationRequest) -> None:
    """What any model refuses (a 400): stop strings too many, empty or too long."""
    if len(request.stop) > MOST_STOP_STRINGS:
        raise InvalidInputError(
            f"stop holds {len(request.stop)} strings; at most {MOST_STOP_STRINGS} are taken"
        )
    for stop in request.stop:
        if not isinstance(stop, str) or not 0 < len(stop) <= LONGEST_STOP_STRING:
            raise InvalidInputError(
                f"each stop string must be 1 to {LONGEST_STOP_STRING} characters long"
            )


def unasked_limit(request: GenerationRequest, model_default: int) -> int:
    """The new tokens a request that names no ``max_new_tokens`` may generate: the model's
    default, or less where the request's protocol has a default of its own."""
    if request.default_new_tokens is None:
        return model_default
    return min(model_default, request.default_new_tokens)


def check_new_tokens(request: GenerationRequest, cap: int) -> None:
    """A request's new-token limit above the model's cap is a 400, never hours of work."""
    asked = request.max_new_tokens
    if asked is not None and not 1 <= asked <= cap:
        raise NewTokensLimitError(
            f"the new tokens asked for (max_tokens, max_new_tokens) must be from 1 to {cap} for "
            f"this model; got {asked}"
        )


def held_back(text: str, stops: Sequence[str]) -> int:
    """How many characters at the end of ``text`` could begin a stop string: they are held
    back from a stream until the next tokens show whether the stop string follows."""
    longest = 0
    for stop in stops:
        for size in range(min(len(stop) - 1, len(text)), longest, -1):
            if text.endswith(stop[:size]):
                longest = size
                break
    return longest
