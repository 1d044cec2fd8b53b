"""The runtime plug-in interface: a Runtime loads an artifact into a Predictor."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from loadonce._spec import ModelSpec


@dataclass(frozen=True, kw_only=True)
class InputSignature:
    """What one example must look like.

    ``shape`` is the shape of one example (``()`` for a scalar, ``(4,)`` for four features;
    ``None`` in a dimension accepts any size). ``dtype`` is ``"number"`` when examples must be
    numeric, or ``None`` when the predictor accepts any JSON value.
    """

    shape: tuple[int | None, ...]
    dtype: str | None = None

    def describe(self) -> str:
        kind = "numbers" if self.dtype == "number" else "values"
        if not self.shape:
            return "a single number" if self.dtype == "number" else "a single value"
        dims = ", ".join("*" if d is None else str(d) for d in self.shape)
        return f"an array of shape [{dims}] of {kind}"


class Predictor(ABC):
    """One loaded model instance, as a runtime hands it to loadonce.

    ``predict`` always receives a whole batch (what ``prepare`` returned for a list of examples)
    and returns one output per example, in order. Subclass it to plug in your own library.
    """

    signature: InputSignature | None = None

    def prepare(self, examples: list[Any]) -> Any:
        """Turn a list of validated examples into what ``predict`` takes (default: the list).

        Raise ``loadonce.InvalidInputError`` with what was expected when an input does not fit;
        loadonce answers 400 with that message.
        """
        return examples

    @abstractmethod
    def predict(self, batch: Any) -> Sequence[Any]:
        """Run the model on a batch; return one output per example."""

    def close(self) -> None:  # noqa: B027 - most predictors hold nothing to release
        """Release what the model holds; called once at shutdown, in reverse order of loading."""


class Runtime(ABC):
    """Loads one kind of artifact. Register your own with ``loadonce.register_runtime``."""

    name: ClassVar[str]
    # Artifact suffixes this runtime claims when a spec names no runtime.
    suffixes: ClassVar[tuple[str, ...]] = ()
    # The policy used when a spec does not choose one: see docs/concurrency.md for the table.
    default_concurrency: ClassVar[str] = "serialized"

    @abstractmethod
    def load(self, spec: ModelSpec) -> Predictor:
        """Load one instance of the model described by ``spec``; raise on any failure."""
