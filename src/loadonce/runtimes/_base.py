"""The runtime plug-in interface: a Runtime loads an artifact into a Predictor."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from loadonce._spec import ModelSpec

_KIND_WORDS = {"f": "numbers", "i": "integers", "u": "non-negative integers", "b": "booleans"}


def dtype_words(dtype: str | None) -> str:
    """How a message names the values of a dtype: 'numbers', 'integers', 'strings'..."""
    if dtype is None:
        return "values"
    if dtype == "string":
        return "strings"
    import numpy as np

    return _KIND_WORDS.get(np.dtype(dtype).kind, dtype)


@dataclass(frozen=True, kw_only=True)
class InputSignature:
    """What one example must look like.

    ``shape`` is the shape of one example (``()`` for a scalar, ``(4,)`` for four features;
    ``None`` in a dimension accepts any size). ``dtype`` is the NumPy dtype the predictor gets
    (``"float64"``, ``"float32"``, ``"int64"``, ``"bool"``), ``"string"``, or ``None`` when the
    predictor accepts any JSON value as it is.
    """

    shape: tuple[int | None, ...]
    dtype: str | None = None

    def describe(self) -> str:
        words = dtype_words(self.dtype)
        if not self.shape:
            return f"a single value ({words})"
        dims = ", ".join("*" if d is None else str(d) for d in self.shape)
        return f"an array of shape [{dims}] of {words}"


@dataclass(frozen=True, kw_only=True)
class TensorInfo:
    """One named input or output as the model format describes it, for /models/{name}.

    ``shape`` includes the batch dimension first; ``None`` marks a variable dimension.
    """

    name: str
    dtype: str | None
    shape: tuple[int | None, ...] | None


class Predictor(ABC):
    """One loaded model instance, as a runtime hands it to loadonce.

    ``predict`` always receives a whole batch (what ``prepare`` returned for a list of examples)
    and returns one output per example, in order. Subclass it to plug in your own library.
    """

    signature: InputSignature | None = None
    inputs: Sequence[TensorInfo] = ()
    outputs: Sequence[TensorInfo] = ()

    def prepare(self, examples: list[Any]) -> Any:
        """Turn a list of examples into what ``predict`` takes (default: the list itself).

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
    # The policy used when a spec does not choose one (README: the runtime table says why).
    default_concurrency: ClassVar[str] = "serialized"

    @abstractmethod
    def load(self, spec: ModelSpec) -> Predictor:
        """Load one instance of the model described by ``spec``; raise on any failure."""

    def claims(self, spec: ModelSpec) -> bool:
        """Whether this runtime reads the spec's artifact when no runtime is named."""
        return spec.artifact is not None and spec.artifact.suffix.lower() in self.suffixes
