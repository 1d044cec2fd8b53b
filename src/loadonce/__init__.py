"""loadonce: serve machine-learning models from FastAPI, each loaded once per worker at startup."""

from __future__ import annotations

from loadonce._version import __version__
from loadonce.app import create_app
from loadonce.core.control import ControlRequest, ModelControl, WorkerOutcome
from loadonce.core.errors import (
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
from loadonce.core.generation import Delta, Finished, GenerationRequest
from loadonce.core.limits import Limits
from loadonce.core.model import Model, ModelState
from loadonce.core.registry import Registry
from loadonce.core.spec import Batching, Concurrency, ModelSpec
from loadonce.http.access_keys import AccessKeys
from loadonce.http.admin import admin_router
from loadonce.http.dependencies import ModelDependency, get_registry
from loadonce.http.health import health_router
from loadonce.http.lifespan import LoadedHook, LoadGate, LoadonceLifespan, UserLifespan, lifespan
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

# Public names show as loadonce.X (in reprs, tracebacks, the docs), not as the private module
# that defines them, as HTTPX does.
for _name in __all__:
    if not _name.startswith("_"):
        _member = globals()[_name]
        if getattr(_member, "__module__", "").startswith("loadonce."):
            _member.__module__ = "loadonce"
