"""What the generate routes of every protocol share: a request's sampling parameters read into
a ``GenerationRequest``, and its generation answered whole or as Server-Sent Events.

A generation runs in the model's generation queue (``core/generation_queue.py``), not its
batcher: its errors before the first token are ordinary HTTP answers (``first_then_rest``),
after it a last event; a client that goes away closes the generation, which takes its sequence
out of the model's batch at the next step.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.requests import Request

from loadonce.core.errors import InvalidInputError, InvalidRequestError
from loadonce.core.generation import (
    LONGEST_STOP_STRING,
    MOST_STOP_STRINGS,
    Delta,
    Finished,
    GenerationRequest,
)
from loadonce.http.disconnect import unless_disconnected
from loadonce.http.request_info import request_id_of
from loadonce.http.streaming import EventStreamResponse, StreamOutcome, first_then_rest, guarded

__all__ = [
    "SAMPLING_PARAMETERS",
    "collect",
    "event_stream",
    "read_sampling",
    "refuse_unknown",
]

GenerationEvent = Delta | Finished

# Stop strings are searched for after every token, and the end of the text is compared with
# each one's beginnings (``held_back``): work that grows with their number and square of their
# length, on every step of the whole batch. A client's list is bounded so its cost is too.
MAX_STOP_STRINGS = MOST_STOP_STRINGS
MAX_STOP_CHARS = LONGEST_STOP_STRING

_Stop = Annotated[str, Field(min_length=1, max_length=MAX_STOP_CHARS)]


class _Sampling(BaseModel):
    """The sampling parameters as ``GenerationRequest`` names them. Strict: ``"5"`` or
    ``true`` is not a number of tokens. The model's cap on ``max_new_tokens`` is its own
    check (``GenerationEngine.check``)."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    max_new_tokens: Annotated[int, Field(ge=1)] | None = None
    temperature: Annotated[float, Field(ge=0, le=100, allow_inf_nan=False)] | None = None
    top_p: Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)] | None = None
    # 0: no top-k filter, as Hugging Face's and TensorRT-LLM's clients send it.
    top_k: Annotated[int, Field(ge=0)] | None = None
    seed: Annotated[int, Field(ge=0, lt=2**63)] | None = None
    repetition_penalty: Annotated[float, Field(gt=0, le=100, allow_inf_nan=False)] | None = None
    stop: Annotated[list[_Stop], Field(max_length=MAX_STOP_STRINGS)] | None = None


# What a client may set, in GenerationRequest's words.
SAMPLING_PARAMETERS = tuple(_Sampling.model_fields)


def read_sampling(
    prompt: str,
    values: Mapping[str, Any],
    *,
    under: str,
    spelled: Mapping[str, str] | None = None,
) -> GenerationRequest:
    """A generation request of ``prompt`` and ``values`` (``SAMPLING_PARAMETERS`` names; none
    else). An invalid value raises ``InvalidRequestError`` located ``under.<name>``, with the
    name as the client spelled it (``spelled``: ours to theirs, for a protocol that names
    them its own way)."""
    given = dict(values)
    if isinstance(given.get("stop"), str):
        given["stop"] = [given["stop"]]  # one stop string, as a list of one
    try:
        sampling = _Sampling.model_validate(given)
    except ValidationError as exc:
        names = spelled or {}
        raise InvalidRequestError(
            [(_located(under, error["loc"], names), error["msg"]) for error in exc.errors()]
        ) from None
    stop = sampling.stop
    return GenerationRequest(
        prompt=prompt,
        max_new_tokens=sampling.max_new_tokens,
        temperature=sampling.temperature,
        top_p=sampling.top_p,
        top_k=sampling.top_k or None,
        seed=sampling.seed,
        repetition_penalty=sampling.repetition_penalty,
        stop=() if stop is None else tuple(stop),
    )


def _located(under: str, loc: tuple[int | str, ...], names: Mapping[str, str]) -> str:
    """Where an invalid value is, dotted, with the parameter's name as the client wrote it."""
    parts = [str(part) for part in loc]
    if parts:
        parts[0] = names.get(parts[0], parts[0])
    return ".".join(part for part in (under, *parts) if part)


def refuse_unknown(names: Mapping[str, Any], accepted: list[str], what: str) -> None:
    """A 400 for the first name not ``accepted``, listing those that are (as the predict
    route's parameters)."""
    for name in names:
        if name not in accepted:
            raise InvalidInputError(
                f"unknown {what} '{name[:100]}'; accepted: {', '.join(accepted)}"
            )


async def collect(events: AsyncIterator[GenerationEvent]) -> tuple[str, Finished]:
    """A whole generation: its text and its ``Finished``. The generation is closed however
    this ends (a client gone cancels it here)."""
    pieces: list[str] = []
    async with contextlib.aclosing(events):  # type: ignore[type-var]
        async for event in events:
            if isinstance(event, Finished):
                return "".join(pieces), event
            pieces.append(event.text)
    raise RuntimeError("the generation ended without saying why")  # pragma: no cover


async def event_stream(
    request: Request,
    events: AsyncIterator[GenerationEvent],
    encode: Callable[[GenerationEvent], bytes | None],
    on_error: Callable[[int, str], bytes],
) -> EventStreamResponse:
    """The generation as Server-Sent Events, once its first event exists (what it raises
    before then raises here, for the route's error answer). ``encode``: an event's SSE bytes,
    None for none; ``on_error(status, message)``: the last event of a stream that failed.
    A client that goes away while its request waits for its first event takes it out of the
    queue at once (a 499), as a whole answer's: else its place stayed taken until its turn
    came and its first token was made for nobody."""
    every = await unless_disconnected(request, first_then_rest(events))

    async def encoded() -> AsyncIterator[bytes]:
        async with contextlib.aclosing(every):  # type: ignore[type-var]
            async for event in every:
                chunk = encode(event)
                if chunk is not None:
                    yield chunk

    outcome = StreamOutcome()
    return EventStreamResponse(
        guarded(encoded(), request, request_id_of(request), on_error, outcome), outcome
    )
