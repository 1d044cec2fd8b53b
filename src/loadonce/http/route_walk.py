"""Walking an app's routes as FastAPI sees them: inside included routers (with the prefix
each was included under) and, for loadonce's own routes, inside mounted apps too."""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import fastapi.routing
from starlette.routing import BaseRoute, Mount

from loadonce.http.wrapping import unwrapped

__all__ = ["loadonce_routes", "once_per_app", "walk_routes"]

_Found = TypeVar("_Found")


def walk_routes(routes: list[BaseRoute]) -> Iterator[Any]:
    """Every route, inside included routers too, as FastAPI sees it (``path``, ``endpoint``,
    ``methods``, ``dependant``). Newer FastAPI keeps an included router as one route of the
    app's, and ``iter_route_contexts`` walks into it with the prefix it was included under (as
    FastAPI's OpenAPI does); older FastAPI copied the router's routes into the app's."""
    iterate = getattr(fastapi.routing, "iter_route_contexts", None)
    yield from routes if iterate is None else iterate(routes)


def loadonce_routes(routes: list[BaseRoute], prefix: str = "") -> Iterator[tuple[str, Any]]:
    """The full path of each route whose endpoint is loadonce's, inside included routers and
    mounted apps, with the route itself (its class says its protocol)."""
    for walked in walk_routes(routes):
        # Newer FastAPI walks an included router's routes as contexts around them.
        route = getattr(walked, "original_route", walked)
        if isinstance(route, Mount):
            # Through the middleware a mounted app may be wrapped in: its admin routes were
            # taken for inference routes (any inference key reloaded models).
            inner = getattr(unwrapped(route.app), "routes", None) or route.routes
            mounted_at = getattr(walked, "path", None) or route.path  # with a router's prefix
            yield from loadonce_routes(list(inner), prefix + mounted_at)
            continue
        path, endpoint = getattr(walked, "path", None), getattr(walked, "endpoint", None)
        module = getattr(endpoint, "__module__", "") or ""
        if isinstance(path, str) and module.startswith("loadonce."):
            yield prefix + path, route


def once_per_app(
    found: weakref.WeakKeyDictionary[Any, _Found], app: Any, walk: Callable[[Any], _Found]
) -> _Found:
    """``walk(app)``, kept in ``found`` for as long as the app lives (its routes are walked
    once); an app that cannot be weakly referenced is walked each time."""
    try:
        return found[app]
    except KeyError:
        pass
    except TypeError:
        return walk(app)
    result = found[app] = walk(app)
    return result
