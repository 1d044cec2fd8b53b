"""FastAPI dependencies that hand a handler the registry or one model, from ``app.state``."""

from __future__ import annotations

import difflib
from collections.abc import Iterator
from typing import Any

from fastapi.dependencies.models import Dependant
from starlette.requests import HTTPConnection

from loadonce.core.model import Model
from loadonce.core.registry import Registry
from loadonce.http.mounted_apps import mounted_apps
from loadonce.http.route_walk import walk_routes
from loadonce.http.state import LoadonceState


async def get_registry(connection: HTTPConnection) -> Registry:
    """The registry of the state the loadonce lifespan put on ``app.state``.

    ``async`` on purpose, like ``ModelDependency.__call__``: FastAPI runs a plain ``def``
    dependency in its threadpool, a thread hop on every request for a dictionary lookup.
    """
    return registry_of(connection)


def registry_of(connection: HTTPConnection) -> Registry:
    return LoadonceState.of(connection).registry


class ModelDependency:
    """A dependency that returns the loaded model called ``name``.

    Use it as ``model: Annotated[loadonce.Model, Depends(ModelDependency("iris"))]``. Two
    instances with the same name are equal, so a test can replace it with
    ``app.dependency_overrides[ModelDependency("iris")] = lambda: fake``.
    """

    def __init__(self, name: str) -> None:
        self.name = name

    async def __call__(self, connection: HTTPConnection) -> Model:
        return registry_of(connection).get(self.name)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ModelDependency) and other.name == self.name

    def __hash__(self) -> int:
        return hash((ModelDependency, self.name))

    def __repr__(self) -> str:
        return f"ModelDependency({self.name!r})"


def undeclared_model_dependencies(app: object, registry: Registry) -> list[str]:
    """One line for each ``ModelDependency`` a route of ``app`` uses whose model is not
    declared (a typo would otherwise be a 500 at the route's first request). A dependency the
    app overrides (a test's fake) is left alone."""
    overridden = getattr(app, "dependency_overrides", {})
    declared = [model.name for model in registry.models]
    problems = []
    for route in routes_with_mounted(app):
        for name in _model_names(getattr(route, "dependant", None), overridden):
            if name not in registry:
                close = difflib.get_close_matches(name, declared, n=1)
                hint = f" (did you mean '{close[0]}'?)" if close else ""
                methods = ",".join(sorted(getattr(route, "methods", None) or ()))
                problems.append(
                    f"{methods} {getattr(route, 'path', '?')} depends on "
                    f"ModelDependency('{name}'), but no model of that name is declared{hint}; "
                    f"declared: {', '.join(repr(d) for d in declared)}"
                )
    return problems


def routes_with_mounted(app: object) -> Iterator[Any]:
    """Every route of ``app`` and of the apps mounted inside it."""
    for owner in (app, *(mounted.app for mounted in mounted_apps(app))):
        yield from walk_routes(list(getattr(owner, "routes", [])))


def _model_names(dependant: Dependant | None, overridden: object) -> Iterator[str]:
    if dependant is None:
        return
    call = dependant.call
    if isinstance(call, ModelDependency) and call not in overridden:  # type: ignore[operator]
        yield call.name
    for sub in dependant.dependencies:
        yield from _model_names(sub, overridden)
