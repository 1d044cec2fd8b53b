"""The plain JSON routes: ``/models``, ``/models/{name}`` and ``/models/{name}/predict``."""

from loadonce.protocols.json.routes import models_router

__all__ = ["models_router"]
