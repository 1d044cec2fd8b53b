"""The Open Inference Protocol's own error: a version the model is not served in."""

from __future__ import annotations

from loadonce.core.errors import LoadonceError, ModelNotFoundError


class VersionNotFoundError(ModelNotFoundError):
    """The model is served, but not in the version the path names (HTTP 404)."""

    def __init__(self, name: str, version: str, served: str) -> None:
        self.name = name
        LoadonceError.__init__(
            self, f"model '{name}' has no version '{version}'; it serves version '{served}'"
        )
