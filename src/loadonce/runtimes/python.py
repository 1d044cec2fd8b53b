"""The plain Python runtime: a loader callable that returns a model object or a function."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any

from loadonce.core.imports import import_object
from loadonce.core.spec import ModelSpec
from loadonce.runtimes._base import InputSignature, Predictor, Runtime
from loadonce.runtimes._columns import features_in
from loadonce.runtimes.sklearn_forests import tree_by_tree_methods


class CallablePredictor(Predictor):
    """Wraps what a loader returned: an object with ``predict(batch)``, or a callable.

    The batch it receives is the list of examples (or a float array when the model's input
    shape is declared as numeric). It must return one output per example.
    """

    def __init__(self, model: Any, *, signature: InputSignature | None) -> None:
        # A scikit-learn forest tree by tree, as the sklearn runtime calls it (sklearn_forests.py).
        predict = tree_by_tree_methods(model).get("predict") or getattr(model, "predict", None)
        if _is_web_app(model):
            # Callable, but an ASGI app, not a model: `loadonce serve pkg.mod:make_app` without
            # --factory took the app's factory for a loader, was ready, and every predict
            # failed with a TypeError.
            raise TypeError(
                f"the loader returned a web app ({type(model).__name__}), not a model: to serve "
                "an app its function returns, run loadonce serve with --factory"
            )
        if predict is None and not callable(model):
            raise TypeError(
                f"the loader returned {type(model).__name__}, which has no predict method "
                "and is not callable"
            )
        self.model = model
        self._predict: Callable[[Any], Sequence[Any]] = predict if predict is not None else model
        self.signature = signature
        # Batched by default only when the object says its rows are computed independently
        # (``batches_exactly = True``), or is a scikit-learn estimator (see sklearn.py).
        self.batches_exactly = getattr(model, "batches_exactly", False) is True or type(
            model
        ).__module__.startswith("sklearn.")

    def predict(self, batch: Any) -> Sequence[Any]:
        return self._predict(batch)

    def close(self) -> None:
        close = getattr(self.model, "close", None)
        if callable(close):
            close()


def _signature_of(model: Any, spec: ModelSpec) -> InputSignature | None:
    if spec.input_shape is not None:
        dtype = str(spec.options.get("input_dtype", "float64"))
        return InputSignature(shape=spec.input_shape, dtype=None if dtype == "any" else dtype)
    # A fitted scikit-learn estimator knows how many features it takes.
    n_features = features_in(model)
    if n_features is not None:
        return InputSignature(shape=(n_features,), dtype="float64")
    return None


class PythonRuntime(Runtime):
    """Calls the spec's loader (with the artifact path, when one is declared)."""

    name = "python"
    reads_input_shape = True
    options = frozenset({"input_dtype"})
    # A user's object makes no thread-safety promise, so calls are serialized unless the spec
    # says `shared` or `pool:N`.
    default_concurrency = "serialized"

    def code_modules(self, spec: ModelSpec) -> tuple[str, ...]:
        return (spec.loader.partition(":")[0],) if isinstance(spec.loader, str) else ()

    def load(self, spec: ModelSpec) -> Predictor:
        if spec.loader is None:
            raise ValueError("the python runtime needs a loader ('package.module:function')")
        loader = import_object(spec.loader) if isinstance(spec.loader, str) else spec.loader
        if not callable(loader):
            raise TypeError(f"loader {spec.loader!r} is not callable")
        model = loader(spec.artifact) if spec.artifact is not None else loader()
        _refuse_unfinished(model)
        if isinstance(model, Predictor):
            return _with_declared_shape(model, spec)
        return CallablePredictor(model, signature=_signature_of(model, spec))


def _refuse_unfinished(model: Any) -> None:
    """A loader that is an ``async def`` or a generator returned no model but the work still
    to do: it was refused as "coroutine, which has no predict method", and Python warned at
    exit that the coroutine was never awaited. Say what to change; close it unrun."""
    if inspect.iscoroutine(model) or inspect.isasyncgen(model):
        what = "an async function" if inspect.iscoroutine(model) else "an async generator"
        fix = "run its async steps inside it with asyncio.run(...)"
    elif inspect.isgenerator(model):
        what, fix = "a generator function", "return the model instead of yielding it"
    else:
        return
    close = getattr(model, "close", None) if not inspect.isasyncgen(model) else None
    if close is not None:
        close()
    raise TypeError(
        f"the loader is {what}: loadonce calls it in a worker thread and needs the model "
        f"itself back; make it a plain def that returns the model ({fix})"
    )


def _with_declared_shape(predictor: Predictor, spec: ModelSpec) -> Predictor:
    """A loader's own Predictor, checked against the spec's ``input_shape`` as a plain object
    would be: the spec's shape applies where the predictor declares none, and one declared in
    both places must agree (it was silently ignored: a list of three features became three
    examples)."""
    declared = _signature_of(object(), spec)
    if declared is None:
        return predictor
    if predictor.inputs:
        raise ValueError(
            f"the loader's {type(predictor).__name__} declares named inputs; input_shape "
            "describes a single unnamed input: leave it out of the model's configuration"
        )
    if predictor.signature is None:
        predictor.signature = declared
    elif predictor.signature != declared:
        raise ValueError(
            f"the loader's {type(predictor).__name__} takes {predictor.signature.describe()}, "
            f"but the configuration says {declared.describe()}: declare it in one place"
        )
    return predictor


def _is_web_app(model: Any) -> bool:
    """Whether ``model`` is a Starlette (or FastAPI) app, without importing Starlette here."""
    return any(
        cls.__module__ == "starlette.applications" and cls.__name__ == "Starlette"
        for cls in type(model).__mro__
    )
