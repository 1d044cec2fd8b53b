"""loadonce: serve machine-learning models from FastAPI, each loaded once per worker at startup."""

from __future__ import annotations

from loadonce._app import create_app
from loadonce._control import ControlRequest, ModelControl, WorkerOutcome
from loadonce._dependencies import ModelDependency, get_registry
from loadonce._errors import (
    ClientDisconnectedError,
    ConfigError,
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
from loadonce._health import health_router
from loadonce._lifespan import LoadedHook, LoadGate, UserLifespan, lifespan
from loadonce._limits import Limits
from loadonce._model import Model, ModelState
from loadonce._registry import Registry
from loadonce._security import AccessKeys
from loadonce._spec import Batching, Concurrency, ModelSpec
from loadonce._version import __version__
from loadonce.protocols.rest import models_router
from loadonce.protocols.v2 import v2_router
from loadonce.runtimes import InputSignature, Predictor, Runtime, TensorInfo, register_runtime

__all__ = [
    "AccessKeys",
    "Batching",
    "ClientDisconnectedError",
    "Concurrency",
    "ConfigError",
    "ControlRequest",
    "DeadlineExceededError",
    "InputSignature",
    "InvalidInputError",
    "Limits",
    "LoadGate",
    "LoadedHook",
    "LoadonceError",
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
    "UserLifespan",
    "WorkerOutcome",
    "__version__",
    "create_app",
    "get_registry",
    "health_router",
    "lifespan",
    "models_router",
    "register_runtime",
    "v2_router",
]

# Public names show as loadonce.X (in reprs, tracebacks, the docs), not as the private module
# that defines them, as HTTPX does.
for _name in __all__:
    if not _name.startswith("_"):
        _member = globals()[_name]
        if getattr(_member, "__module__", "").startswith("loadonce."):
            _member.__module__ = "loadonce"
