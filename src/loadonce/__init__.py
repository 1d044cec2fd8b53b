"""loadonce: serve machine-learning models from FastAPI, each loaded once per worker at startup."""

from __future__ import annotations

import contextlib as _contextlib
import importlib as _importlib
import inspect as _inspect
import sys as _sys
import typing as _typing

from loadonce._version import __version__

# The public names are imported when first used (PEP 562), not with the package: `import
# loadonce` (as the command line and the supervisor of `--workers N` do) then costs no FastAPI,
# NumPy or model library, which a worker imports, and the supervisor never needs (about 25 MiB
# of its memory). For type checkers, the imports below say what each name is.
if _typing.TYPE_CHECKING:
    from loadonce.app import create_app
    from loadonce.core.control import ControlRequest, ModelControl, WorkerOutcome
    from loadonce.core.errors import (
        ClientDisconnectedError,
        ConfigError,
        ContextLengthError,
        DeadlineExceededError,
        InvalidInputError,
        LoadonceError,
        ModelLoadError,
        ModelNotFoundError,
        ModelNotReadyError,
        ModelRaisedError,
        QueueFullError,
        RequestTooLargeError,
    )
    from loadonce.core.generation import Delta, Finished, GenerationRequest
    from loadonce.core.limits import Limits
    from loadonce.core.model import Model, ModelState
    from loadonce.core.registry import Registry
    from loadonce.core.spec import Batching, Concurrency, ModelSpec
    from loadonce.http.access_keys import AccessKeys
    from loadonce.http.admin import admin_router
    from loadonce.http.dependencies import ModelDependency, get_registry
    from loadonce.http.health import health_router
    from loadonce.http.lifespan import (
        LoadedHook,
        LoadGate,
        LoadonceLifespan,
        UserLifespan,
        lifespan,
    )
    from loadonce.http.metrics_route import metrics_router
    from loadonce.http.middleware import install_middleware
    from loadonce.http.state import LoadonceState
    from loadonce.protocols.json import models_router
    from loadonce.protocols.openai import openai_router
    from loadonce.protocols.v2 import v2_router
    from loadonce.runtimes import InputSignature, Predictor, Runtime, TensorInfo, register_runtime
    from loadonce.tracing import TracingOptions

__all__ = [
    "AccessKeys",
    "Batching",
    "ClientDisconnectedError",
    "Concurrency",
    "ConfigError",
    "ContextLengthError",
    "ControlRequest",
    "DeadlineExceededError",
    "Delta",
    "Finished",
    "GenerationRequest",
    "InputSignature",
    "InvalidInputError",
    "Limits",
    "LoadGate",
    "LoadedHook",
    "LoadonceError",
    "LoadonceLifespan",
    "LoadonceState",
    "Model",
    "ModelControl",
    "ModelDependency",
    "ModelLoadError",
    "ModelNotFoundError",
    "ModelNotReadyError",
    "ModelRaisedError",
    "ModelSpec",
    "ModelState",
    "Predictor",
    "QueueFullError",
    "Registry",
    "RequestTooLargeError",
    "Runtime",
    "TensorInfo",
    "TracingOptions",
    "UserLifespan",
    "WorkerOutcome",
    "__version__",
    "admin_router",
    "create_app",
    "get_registry",
    "health_router",
    "install_middleware",
    "lifespan",
    "metrics_router",
    "models_router",
    "openai_router",
    "register_runtime",
    "v2_router",
]

# Where each public name lives.
_HOMES = {
    "AccessKeys": "loadonce.http.access_keys",
    "Batching": "loadonce.core.spec",
    "ClientDisconnectedError": "loadonce.core.errors",
    "Concurrency": "loadonce.core.spec",
    "ConfigError": "loadonce.core.errors",
    "ControlRequest": "loadonce.core.control",
    "DeadlineExceededError": "loadonce.core.errors",
    "Delta": "loadonce.core.generation",
    "Finished": "loadonce.core.generation",
    "GenerationRequest": "loadonce.core.generation",
    "InputSignature": "loadonce.runtimes",
    "InvalidInputError": "loadonce.core.errors",
    "ContextLengthError": "loadonce.core.errors",
    "Limits": "loadonce.core.limits",
    "LoadGate": "loadonce.http.lifespan",
    "LoadedHook": "loadonce.http.lifespan",
    "LoadonceError": "loadonce.core.errors",
    "LoadonceLifespan": "loadonce.http.lifespan",
    "LoadonceState": "loadonce.http.state",
    "Model": "loadonce.core.model",
    "ModelControl": "loadonce.core.control",
    "ModelDependency": "loadonce.http.dependencies",
    "ModelLoadError": "loadonce.core.errors",
    "ModelNotFoundError": "loadonce.core.errors",
    "ModelNotReadyError": "loadonce.core.errors",
    "ModelRaisedError": "loadonce.core.errors",
    "ModelSpec": "loadonce.core.spec",
    "ModelState": "loadonce.core.model",
    "Predictor": "loadonce.runtimes",
    "QueueFullError": "loadonce.core.errors",
    "Registry": "loadonce.core.registry",
    "RequestTooLargeError": "loadonce.core.errors",
    "Runtime": "loadonce.runtimes",
    "TensorInfo": "loadonce.runtimes",
    "TracingOptions": "loadonce.tracing",
    "UserLifespan": "loadonce.http.lifespan",
    "WorkerOutcome": "loadonce.core.control",
    "admin_router": "loadonce.http.admin",
    "create_app": "loadonce.app",
    "get_registry": "loadonce.http.dependencies",
    "health_router": "loadonce.http.health",
    "install_middleware": "loadonce.http.middleware",
    "lifespan": "loadonce.http.lifespan",
    "metrics_router": "loadonce.http.metrics_route",
    "models_router": "loadonce.protocols.json",
    "openai_router": "loadonce.protocols.openai",
    "register_runtime": "loadonce.runtimes",
    "v2_router": "loadonce.protocols.v2",
}


def __getattr__(name: str) -> _typing.Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'loadonce' has no attribute {name!r}")
    member = getattr(_importlib.import_module(home), name)
    # Public names show as loadonce.X (in reprs, tracebacks, the docs), not as the private
    # module that defines them, as HTTPX does.
    if getattr(member, "__module__", "").startswith("loadonce."):
        if isinstance(member, type):
            _annotations_evaluated(member)
        member.__module__ = "loadonce"
    globals()[name] = member
    return member


def _annotations_evaluated(cls: type) -> None:
    """The class's own annotations as the objects they name, read now in its defining
    module: ``typing.get_type_hints`` reads string annotations in the namespace of
    ``__module__``, which "loadonce" no longer is (NameError on the class, and on a user's
    subclass of Predictor). One that cannot be read here (a name imported for type checkers
    only) stays a string, as in its own module."""
    home = vars(_sys.modules[cls.__module__])
    evaluated = {}
    for name, hint in _inspect.get_annotations(cls).items():
        if isinstance(hint, str):
            # A name imported for type checkers only cannot be read: left as written.
            with _contextlib.suppress(Exception):
                hint = eval(hint, home, dict(vars(cls)))  # noqa: S307 - the class's own source
        evaluated[name] = hint
    if evaluated:
        cls.__annotations__ = evaluated


def __dir__() -> list[str]:
    return sorted({*globals(), *_HOMES})


# The errors now, whoever raises them first: their names (loadonce.ConfigError) show in logs
# and spans, and their module imports nothing heavy.
for _name, _home in _HOMES.items():
    if _home == "loadonce.core.errors":
        __getattr__(_name)
