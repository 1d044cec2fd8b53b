"""Runtimes: one module per model library, chosen by name or by the artifact's suffix.

The supervisor of ``--workers N`` imports this package to check each declaration and name the
fork server's preload list, and holds no array: the runtimes (and the core modules they use)
import NumPy in the functions that handle arrays, so it stays out of the supervisor.
"""

from __future__ import annotations

import difflib
import importlib.metadata

from loadonce.core.imports import import_object
from loadonce.core.spec import ModelSpec
from loadonce.runtimes._base import (
    SELECTED_OUTPUTS,
    InputSignature,
    Predictor,
    Runtime,
    TensorInfo,
)
from loadonce.runtimes.boosters import CatBoostRuntime, LightGBMRuntime, XGBoostRuntime
from loadonce.runtimes.onnx import OnnxRuntime
from loadonce.runtimes.python import PythonRuntime
from loadonce.runtimes.sklearn import SklearnRuntime
from loadonce.runtimes.torch import TorchRuntime
from loadonce.runtimes.transformers import TransformersRuntime

__all__ = [
    "SELECTED_OUTPUTS",
    "InputSignature",
    "Predictor",
    "Runtime",
    "TensorInfo",
    "check_options",
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
    XGBoostRuntime(),
    LightGBMRuntime(),
    CatBoostRuntime(),
):
    register_runtime(_builtin)


def resolve_runtime(spec: ModelSpec) -> Runtime:
    """The runtime a spec names, else the python runtime for a loader, else the one that
    claims the artifact (by suffix, or a directory's content); later registrations first."""
    if spec.runtime is not None:
        return _named_runtime(spec.runtime)
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
    if not spec.artifact.exists():
        raise ValueError(f"no such file: {spec.artifact}")
    suffix = spec.artifact.suffix.lower()
    taken_by_content = _CLAIMED_BY_CONTENT.get(suffix)
    if taken_by_content is not None:
        raise ValueError(
            f"no runtime reads {spec.artifact}: {taken_by_content}; is it damaged, or another "
            'kind of file? name its runtime with runtime = "..."'
        )
    raise ValueError(
        f"no runtime reads '{suffix or spec.artifact.name}' files; name one with runtime = \"...\""
    )


# Suffixes whose files a runtime takes by their first bytes: what it looks for.
_CLAIMED_BY_CONTENT = {
    ".json": 'a .json file is an XGBoost model when it begins with {"learner"',
    ".txt": "a .txt file is a LightGBM model when it begins with tree and version=",
    ".model": "a .model file is an XGBoost model when it is XGBoost's UBJSON",
    ".bin": "a .bin file is an XGBoost model when it is XGBoost's UBJSON",
}


# Installed plugins name their runtimes here (in their package's metadata):
#   [project.entry-points."loadonce.runtimes"]
#   linear = "mypackage.runtime:LinearRuntime"
ENTRY_POINT_GROUP = "loadonce.runtimes"


def _named_runtime(name: str) -> Runtime:
    """A registered runtime, a ``package.module:Class`` reference, or an installed plugin's
    (entry point group ``loadonce.runtimes``); the class is instantiated once."""
    found = _RUNTIMES.get(name)
    if found is not None:
        return found
    if ":" in name:
        return _register_found(import_object(name), name)
    for entry_point in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        if entry_point.name == name:
            return _register_found(entry_point.load(), name)
    known = ", ".join(sorted(_RUNTIMES))
    raise ValueError(
        f"unknown runtime {name!r}; known runtimes: {known} (or a 'package.module:Class' "
        f"reference, or a plugin installed under the entry point group {ENTRY_POINT_GROUP!r})"
    )


def _register_found(found: object, name: str) -> Runtime:
    runtime = found() if isinstance(found, type) else found
    if not isinstance(runtime, Runtime):
        raise ValueError(f"{name} is not a loadonce Runtime (a subclass of loadonce.Runtime)")
    _RUNTIMES[name] = runtime
    return runtime


def check_options(spec: ModelSpec, runtime: Runtime) -> None:
    """Refuse an option the runtime does not read, naming the closest one it does, and an
    input shape it does not read."""
    if spec.input_shape is not None and runtime.reads_input_shape is False:
        raise ValueError(
            f"input_shape is not read by the {runtime.name} runtime: its artifact records "
            "its inputs (GET /models/NAME shows them); leave input_shape out"
        )
    accepted = runtime.options
    if accepted is None:
        return
    for key in spec.options:
        if key not in accepted:
            close = difflib.get_close_matches(key, sorted(accepted), n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            listing = ", ".join(sorted(accepted)) or "none"
            raise ValueError(
                f"unknown option '{key}' for the {runtime.name} runtime{hint}; its options: "
                f"{listing}"
            )
