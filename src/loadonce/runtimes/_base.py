"""The runtime plug-in interface: a Runtime loads an artifact into a Predictor."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

from loadonce.core.generation import GenerationEngine, GenerationRequest, IteratorEngine
from loadonce.core.inputs import as_typed_batch
from loadonce.core.signature import InputSignature, TensorInfo
from loadonce.core.spec import ModelSpec

__all__ = ["InputSignature", "Predictor", "Runtime", "TensorInfo"]


class Predictor(ABC):
    """One loaded model instance, as a runtime hands it to loadonce.

    ``predict`` always receives a whole batch (what ``prepare`` returned for a list of examples)
    and returns one output per example, in order. Subclass it to plug in your own library.
    """

    signature: InputSignature | None = None
    inputs: Sequence[TensorInfo] = ()
    outputs: Sequence[TensorInfo] = ()
    # The request parameters (Open Inference Protocol ``parameters``) this predictor takes in
    # ``predict_with``; any other parameter a client sends is not passed on.
    request_parameters: frozenset[str] = frozenset()
    # True when the weights are mapped read-only from the artifact (shared by every worker
    # through the page cache) rather than copied into this process.
    shares_weights: bool = False
    # True when each example is a text and its output the text's vectors (one per token, or
    # one for the text): the model answers OpenAI's /v1/embeddings.
    embeds_text: bool = False
    # True when a batched call gives each example what a call of its own gives (the rows are
    # computed independently): loadonce batches the model unless its spec says otherwise
    # (ModelSpec.batching). README's runtime table says which runtimes do, and why.
    batches_exactly: bool = False
    # A generating predictor: the most new tokens one request may ask for (more is a 400).
    max_new_tokens: int = 256
    # True when NaN is a missing value to the model (trees, imputers): JSON's null in a float
    # input is then NaN instead of a 400.
    missing_as_nan: bool = False

    def prepare(self, examples: list[Any]) -> Any:
        """Turn a list of examples into what ``predict`` takes.

        By default: with a ``signature`` that has a dtype, one NumPy array of that dtype, each
        example's shape checked; otherwise the list itself. Raise
        ``loadonce.InvalidInputError`` with what was expected when an input does not fit;
        loadonce answers 400 with that message.
        """
        if self.signature is None or self.signature.dtype is None:
            return examples
        return as_typed_batch(examples, self.signature, missing_as_nan=self.missing_as_nan)

    def combine(self, batches: list[Any]) -> Any:
        """Merge what ``prepare`` returned for several requests into one batch, in order.

        The default handles lists, NumPy arrays and dicts of them. If it raises (say, arrays
        whose variable dimension differs), those requests are predicted one by one instead.
        """
        import numpy as np

        first = batches[0]
        if isinstance(first, np.ndarray):
            return np.concatenate(batches)
        if isinstance(first, list):
            return [example for batch in batches for example in batch]
        if isinstance(first, dict):
            return {key: self.combine([batch[key] for batch in batches]) for key in first}
        raise TypeError(f"cannot combine batches of {type(first).__name__}")

    @abstractmethod
    def predict(self, batch: Any) -> Sequence[Any]:
        """Run the model on a batch; return one output per example."""

    def predict_with(self, batch: Any, parameters: Mapping[str, Any]) -> Sequence[Any]:
        """Predict with request parameters (only names in ``request_parameters``; requests
        are batched together only when their parameters are equal). Without any, ``predict``."""
        if parameters:
            raise TypeError(f"{type(self).__name__} takes no request parameters")
        return self.predict(batch)

    def check_parameters(self, parameters: Mapping[str, Any]) -> None:  # noqa: B027
        """Refuse request parameters this predictor cannot honour (raise
        ``loadonce.InvalidInputError``: a 400), before the request waits for the model.
        Called with the names in ``request_parameters`` only. By default, any value is taken."""

    def generate(self, request: GenerationRequest) -> Iterator[str]:
        """Define it to serve a model that generates text: yield the request's text a piece
        (a token) at a time. Each piece streams to the client as it is yielded; concurrent
        requests take turns, one piece each; a client that goes away, a deadline, a stop
        string or ``max_new_tokens`` pieces end the iteration early (the generator is closed).
        Raise ``loadonce.InvalidInputError`` before the first yield for a 400."""
        raise NotImplementedError

    def generation_engine(self) -> GenerationEngine | None:
        """What generates this model's text token by token (the generate and OpenAI routes);
        None for a model that does not generate. By default, ``generate`` where a subclass
        defines it. A runtime that batches the steps of many sequences returns its own."""
        if type(self).generate is Predictor.generate:
            return None
        return IteratorEngine(
            self.generate,
            default_new_tokens=self.max_new_tokens,
            max_new_tokens=self.max_new_tokens,
        )

    def close(self) -> None:  # noqa: B027 - most predictors hold nothing to release
        """Release what the model holds; called once at shutdown, in reverse order of loading."""


# The request parameter naming the outputs a request picks, for a predictor that computes
# them on request (it lists this name in ``request_parameters``): each example's output is then
# ``{name: value}`` for those names.
SELECTED_OUTPUTS = "outputs"


class Runtime(ABC):
    """Loads one kind of artifact. Register your own with ``loadonce.register_runtime``."""

    name: ClassVar[str]
    # Artifact suffixes this runtime claims when a spec names no runtime.
    suffixes: ClassVar[tuple[str, ...]] = ()
    # The policy used when a spec does not choose one (README: the runtime table says why).
    default_concurrency: ClassVar[str] = "serialized"
    # Modules the workers of ``loadonce serve`` import once, in the process they are forked
    # from, so that the libraries' memory is shared by every worker instead of held by each.
    # Only modules that are safe to import before a fork belong here: no thread started at
    # import that could hold a lock across the fork (BLAS thread pools handle forks).
    libraries: ClassVar[tuple[str, ...]] = ()
    # The keys of ``ModelSpec.options`` it reads; any other is refused before anything loads,
    # naming the closest one (a misspelt option would otherwise be silently ignored). None:
    # not declared (a runtime of your own may leave it so), every key is accepted.
    options: ClassVar[frozenset[str] | None] = None
    # Whether it reads ``ModelSpec.input_shape``; False: its artifacts record their inputs,
    # and a declared shape is refused (it was ignored: a wrong shape then checked nothing).
    # None: not said (a runtime of your own).
    reads_input_shape: ClassVar[bool | None] = None

    @abstractmethod
    def load(self, spec: ModelSpec) -> Predictor:
        """Load one instance of the model described by ``spec``; raise on any failure."""

    def libraries_for(self, spec: ModelSpec) -> tuple[str, ...]:
        """The libraries loading ``spec`` needs, imported once before the workers are forked
        (``libraries`` unless the artifact's format decides: importing one a model does not
        use costs its memory and start-up time for nothing)."""
        return self.libraries

    def code_modules(self, spec: ModelSpec) -> tuple[str, ...]:
        """The modules of the model's own code that ``spec`` names (a loader, a factory):
        ``loadonce serve`` imports them once, like ``libraries``, in the process its workers
        are forked from, so that what they import is shared too (an import that fails there
        is skipped: the worker's load reports it)."""
        return ()

    def runs_code(self, spec: ModelSpec) -> bool:
        """Whether loading the spec's artifact may run code stored in it (a pickle). Asked
        before a control request's new artifact is opened: only a model the operator
        trusts may load such a file on request. Decide from names and metadata only."""
        return False

    def claims(self, spec: ModelSpec) -> bool:
        """Whether this runtime reads the spec's artifact when no runtime is named."""
        return spec.artifact is not None and spec.artifact.suffix.lower() in self.suffixes


def thread_count(spec: ModelSpec, option: str, *, least: int = 1) -> int | None:
    """The whole number of threads ``options.<option>`` gives, at least ``least``; None when
    unset. Refused at load (``threads = 0`` loaded, and CatBoost failed every predict with
    it; ``1.5`` and ``true`` were taken as 1)."""
    value = spec.options.get(option)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < least:
        raise ValueError(f"options.{option} must be a whole number, {least} or more; got {value!r}")
    return value


def model_file(path: Path | None) -> Path:
    """``path``, a regular file a runtime can read, or the error that says what it is
    instead: a directory or a FIFO was "no such file", though the path was there."""
    if path is None or not path.exists():
        if path is not None and path.is_symlink():
            raise FileNotFoundError(f"{path} is a symbolic link to no file (a loop, or gone)")
        raise FileNotFoundError(f"no such file: {path}")
    if not path.is_file():
        kind = "a directory" if path.is_dir() else "not a regular file"
        raise FileNotFoundError(f"{path} is {kind}, not a model file")
    return path
