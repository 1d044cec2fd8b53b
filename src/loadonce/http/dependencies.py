"""FastAPI dependencies that hand a handler the registry or one model, from ``app.state``."""

from __future__ import annotations

import difflib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from fastapi.dependencies.models import Dependant
from fastapi.routing import APIWebSocketRoute
from starlette.requests import HTTPConnection
from starlette.routing import Host, Mount, WebSocketRoute

from loadonce.core.model import Model
from loadonce.core.registry import Registry
from loadonce.http.route_walk import walk_routes
from loadonce.http.state import LoadonceState
from loadonce.http.wrapping import unwrapped

# FastAPI's WebSocket route and Starlette's: they have no methods to name them by.
WEBSOCKET_ROUTES = (APIWebSocketRoute, WebSocketRoute)
# How deep mounts are followed: far more than an app nests, and a bound for a cycle.
_DEEPEST_MOUNT = 32


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
    app overrides (a test's fake), or one that only an overridden dependency uses, is left
    alone: FastAPI never calls it."""
    declared = [model.name for model in registry.models]
    problems = []
    for routed in routes_with_mounted(app):
        for name in _model_names(getattr(routed.route, "dependant", None), routed.overrides):
            if name not in registry:
                close = difflib.get_close_matches(name, declared, n=1)
                hint = f" (did you mean '{close[0]}'?)" if close else ""
                problems.append(
                    f"{routed.describe()} depends on ModelDependency('{name}'), but no model "
                    f"of that name is declared{hint}; declared: "
                    f"{', '.join(repr(d) for d in declared)}"
                )
    return problems


@dataclass(frozen=True)
class RoutedEndpoint:
    """A route of an app or of an app mounted inside it: where it answers, and the
    ``dependency_overrides`` FastAPI solves its dependencies with (those of the app the route
    was declared in: a mounted app keeps its own)."""

    route: Any
    prefix: str
    host: str
    overrides: Mapping[Any, Any]

    def describe(self) -> str:
        """``GET /sub/classify``, ``WebSocket /ws``, with the mount's prefix and host: the
        route as a client reaches it (a mounted app's was named by its own path alone)."""
        methods = ",".join(sorted(getattr(self.route, "methods", None) or ()))
        original = getattr(self.route, "original_route", self.route)
        kind = methods or ("WebSocket" if isinstance(original, WEBSOCKET_ROUTES) else "route")
        path = self.prefix + str(getattr(self.route, "path", "?"))
        return f"{kind} {path}" + (f" on host {self.host}" if self.host else "")


def routes_with_mounted(app: object) -> Iterator[RoutedEndpoint]:
    """Every route of ``app`` and of what is mounted inside it (apps, routers, at any depth,
    behind middleware of their own), with the prefix it is reached under."""
    yield from _routes_in(app, "", "", getattr(app, "dependency_overrides", {}), depth=0)


def _routes_in(
    owner: object, prefix: str, host: str, overrides: Mapping[Any, Any], depth: int
) -> Iterator[RoutedEndpoint]:
    if depth > _DEEPEST_MOUNT:
        return
    for walked in walk_routes(list(getattr(owner, "routes", None) or [])):
        # Newer FastAPI walks an included router's routes as contexts around them.
        route = getattr(walked, "original_route", walked)
        if isinstance(route, Mount | Host):
            inner = unwrapped(route.app)
            # A mounted FastAPI app solves its routes' dependencies with its own overrides.
            inner_overrides = getattr(inner, "dependency_overrides", overrides)
            if isinstance(route, Host):
                inner_prefix, inner_host = prefix, route.host
            else:
                inner_prefix = prefix + (getattr(walked, "path", None) or route.path)
                inner_host = host
            yield from _routes_in(inner, inner_prefix, inner_host, inner_overrides, depth + 1)
        else:
            yield RoutedEndpoint(walked, prefix, host, overrides)


def _model_names(dependant: Dependant | None, overridden: Mapping[Any, Any]) -> Iterator[str]:
    if dependant is None:
        return
    call = dependant.call
    if overridden and _overridden(call, overridden):
        return  # FastAPI calls the override instead, and solves its dependencies, not these
    if isinstance(call, ModelDependency):
        yield call.name
    for sub in dependant.dependencies:
        yield from _model_names(sub, overridden)


def _overridden(call: object, overridden: Mapping[Any, Any]) -> bool:
    try:
        return call in overridden
    except TypeError:  # an unhashable callable: FastAPI cannot look it up either
        return False
