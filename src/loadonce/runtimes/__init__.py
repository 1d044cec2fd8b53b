"""Runtimes: one module per model library, chosen by name or by the artifact's suffix."""

from __future__ import annotations

from loadonce.core.spec import ModelSpec
from loadonce.runtimes._base import InputSignature, Predictor, Runtime, TensorInfo
from loadonce.runtimes.onnx import OnnxRuntime
from loadonce.runtimes.python import PythonRuntime
from loadonce.runtimes.sklearn import SklearnRuntime
from loadonce.runtimes.torch import TorchRuntime
from loadonce.runtimes.transformers import TransformersRuntime

__all__ = [
    "InputSignature",
    "Predictor",
    "Runtime",
    "TensorInfo",
    "register_runtime",
    "resolve_runtime",
]

_RUNTIMES: dict[str, Runtime] = {}


def register_runtime(runtime: Runtime) -> None:
    """Make a runtime available by its name and its suffixes (a later one wins a suffix)."""
    _RUNTIMES[runtime.name] = runtime


for _builtin in (
    PythonRuntime(),
    SklearnRuntime(),
    OnnxRuntime(),
    TorchRuntime(),
    TransformersRuntime(),
):
    register_runtime(_builtin)


def resolve_runtime(spec: ModelSpec) -> Runtime:
    """The runtime a spec names, else the python runtime for a loader, else the one that
    claims the artifact (by suffix, or a directory's content); later registrations first."""
    if spec.runtime is not None:
        try:
            return _RUNTIMES[spec.runtime]
        except KeyError:
            known = ", ".join(sorted(_RUNTIMES))
            raise ValueError(f"unknown runtime {spec.runtime!r}; known runtimes: {known}") from None
    if spec.loader is not None:
        return _RUNTIMES["python"]
    assert spec.artifact is not None  # ModelSpec guarantees a loader or an artifact
    for runtime in reversed(_RUNTIMES.values()):
        if runtime.claims(spec):
            return runtime
    if spec.artifact.is_dir():
        raise ValueError(
            f"no runtime reads the directory {spec.artifact} (a transformers model directory "
            'holds config.json); name one with runtime = "..."'
        )
    suffix = spec.artifact.suffix.lower()
    raise ValueError(
        f"no runtime reads '{suffix or spec.artifact.name}' files; name one with runtime = \"...\""
    )
