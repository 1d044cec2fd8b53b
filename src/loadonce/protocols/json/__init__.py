"""The plain JSON routes: ``/models``, ``/models/{name}``, ``/models/{name}/predict`` and
``/models/{name}/generate``."""

from loadonce.protocols.json.routes import models_router

__all__ = ["models_router"]
