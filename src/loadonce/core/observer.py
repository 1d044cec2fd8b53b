"""What the metrics watch: a model's queue, its batches and its life (state, load, memory),
and the objects the worker's garbage collector leaves alone (``core/collector.py``).

A protocol, so the core (Model, Batcher) depends on no metrics library; ``_metrics.Metrics``
implements it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from loadonce.core.model import Model


class ModelObserver(Protocol):
    def queue_changed(self, model: str, queued_examples: int) -> None: ...

    # A call of the model returned, given this many examples (requests refused before the
    # call, their inputs not fitting, are not counted).
    def batch_dispatched(self, model: str, examples: int) -> None: ...

    def model_changed(self, model: Model) -> None: ...

    def collector_frozen(self, objects: int) -> None: ...
