"""The Open Inference Protocol's own errors: a model or a version it does not serve, and a
request's parameters or requested outputs it does not take."""

from __future__ import annotations

from loadonce.core.errors import InvalidInputError, LoadonceError, ModelNotFoundError
from loadonce.core.log_safe import quoted
from loadonce.core.model import Model
from loadonce.core.registry import Registry

# Triton's words for it, which clients written against Triton look for (its own examples
# check that the message starts with them).
_UNKNOWN_MODEL = "Request for unknown model"


class RequestOptionError(InvalidInputError):
    """A request's parameters or requested outputs are not what the protocol takes (HTTP 400,
    gRPC INVALID_ARGUMENT), said as they are: they were answered "invalid inputs: output 'o'
    ...", which sent a client looking at its input tensors."""

    def client_message(self) -> str:
        return str(self)


class VersionNotFoundError(ModelNotFoundError):
    """The model is served, but not in the version the path names (HTTP 404)."""

    def __init__(self, name: str, version: str, served: str) -> None:
        self.name = name
        LoadonceError.__init__(
            self, f"model '{name}' has no version {quoted(version)}; it serves version '{served}'"
        )


class UnknownModelError(ModelNotFoundError):
    """No model of that name (HTTP 404), said as Triton says it, then as loadonce does."""

    def __init__(self, name: str, known: list[str]) -> None:
        self.name = name
        listing = ", ".join(repr(k) for k in known) or "none"
        LoadonceError.__init__(
            self, f"{_UNKNOWN_MODEL}: {quoted(name)} is not served here; models served: {listing}"
        )


class UnknownLoadError(ModelNotFoundError):
    """A load of a model that is not declared (HTTP 404), said as Triton says a load failed
    ("failed to load": its gRPC model-control example looks for it)."""

    def __init__(self, name: str, known: list[str]) -> None:
        self.name = name
        listing = ", ".join(repr(k) for k in known) or "none"
        LoadonceError.__init__(
            self,
            f"failed to load {quoted(name)}: no model of that name is declared here (loadonce "
            f"loads only the models declared at startup); models declared: {listing}",
        )


def find_model(registry: Registry, name: str, version: str | None = None) -> Model:
    """The model of that name (in that version, if one is named), else a 404."""
    if name not in registry:
        raise UnknownModelError(name, [model.name for model in registry.models])
    model = registry.get(name)
    if version is not None and version != model.version:
        raise VersionNotFoundError(model.name, version, model.version)
    return model


def model_to_load(registry: Registry, name: str) -> Model:
    """The declared model a repository load names, else a 404 in Triton's words for a load."""
    if name not in registry:
        raise UnknownLoadError(name, [model.name for model in registry.models])
    return registry.get(name)


class LoadRefusedError(LoadonceError):
    """A repository load asked for what loadonce cannot do (HTTP 400); said as Triton says a
    load failed ("failed to load"), which its clients look for."""

    status = 400

    def __init__(self, name: str, why: str) -> None:
        super().__init__(f"failed to load '{name}': {why}")
