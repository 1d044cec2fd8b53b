"""What the metrics watch: a model's queue, its calls, its requests and its life (state,
load, memory), and the objects the worker's garbage collector leaves alone
(``core/collector.py``).

A protocol, so the core (Model, Batcher) depends on no metrics library; ``http/metrics.py``
``Metrics`` implements it. The batcher measures each call once, here, and both the Prometheus
metrics and the Open Inference Protocol's statistics are read from what it reports.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from loadonce.core.model import Model


@dataclass
class Answered:
    """The requests of a call that were given its answer, as the batcher counts them."""

    requests: int = 0
    examples: int = 0
    queued_s: float = 0.0


@dataclass(frozen=True, kw_only=True)
class CallReport:
    """One call of the model that returned, as the batcher measured it."""

    # Examples the model was given (requests refused before the call, their inputs not
    # fitting, are not counted).
    examples: int
    # Requests of the call the model answered (the others failed: their inputs, or the model
    # raised on them, or their caller had gone or their deadline passed before the answer),
    # their examples, and the seconds they waited in the queue in all.
    answered: int
    answered_examples: int
    answered_queued_s: float
    # Seconds each request of the call waited in the queue, from its arrival there to the
    # call's start.
    queued_s: tuple[float, ...]
    # The call's phases, timed in the model's thread: preparing the requests' inputs and
    # combining them into one batch, the model's predict, and splitting its outputs back
    # per example.
    input_s: float
    infer_s: float
    output_s: float
    # When it returned, in seconds since the epoch.
    finished_at: float


@dataclass(frozen=True, kw_only=True)
class GenerationReport:
    """One generation that produced at least one token, reported when it ended (however)."""

    # From its arrival in the queue to its first token, and the mean time between two of its
    # tokens after that (None for a single token).
    time_to_first_token_s: float
    time_per_output_token_s: float | None
    prompt_tokens: int
    completion_tokens: int


class ModelObserver(Protocol):
    def queue_changed(self, model: str, queued_examples: int) -> None: ...

    def call_returned(self, model: str, report: CallReport) -> None: ...

    # A request the queue accepted was answered (``ok``) or failed (the model raised, its
    # inputs did not fit, its deadline passed, its client went away), ``seconds`` after it
    # was queued.
    def request_finished(self, model: str, ok: bool, seconds: float) -> None: ...

    def model_changed(self, model: Model) -> None: ...

    def generation_finished(self, model: str, report: GenerationReport) -> None: ...

    def collector_frozen(self, objects: int) -> None: ...
