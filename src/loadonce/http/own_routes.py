"""Whether a request goes to one of loadonce's own routes or to a route of the app's own.

The browser guard refuses a browser's cross-origin request to loadonce's inference routes
(``browser_guard.py``), never to a route of the user's app (an OAuth provider's ``form_post``
callback is a cross-site POST by design). A path alone does not say whose route it is: the
user's app may put its own routes anywhere, before or after loadonce's routers, under
prefixes and mounts. So the app's routes are walked once per app, in the order Starlette's
router tries them, and a request is loadonce's when the route that router would pick (the
first whose path and method match, else the first whose path matches: the 405) is. Only a
request a browser marked as coming from another origin asks; others pay nothing.

A route inside a mounted app also says which CORS middlewares wrap that app
(``app.mount("/sub", CORSMiddleware(sub, ...))``, ``Mount(..., middleware=[...])``): they
are not in the stack of the app serving the request, yet they allow origins for its routes.
"""

from __future__ import annotations

import re
import weakref
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from starlette.middleware.cors import CORSMiddleware
from starlette.routing import Mount, compile_path
from starlette.types import Scope

from loadonce.http.request_info import route_path
from loadonce.http.route_walk import once_per_app, walk_routes
from loadonce.http.wrapping import layers, unwrapped


@dataclass(frozen=True)
class Route:
    """A route of the app, as the router tries it. ``cors``: the CORS middlewares wrapping
    the mounted apps it is inside."""

    pattern: re.Pattern[str]
    methods: frozenset[str] | None  # None: any method (a mounted app)
    loadonce: bool
    cors: tuple[CORSMiddleware, ...] = ()


_found: weakref.WeakKeyDictionary[Any, tuple[Route, ...]] = weakref.WeakKeyDictionary()


def loadonce_route(scope: Scope) -> Route | None:
    """The route the app would pick for this request if it is one of loadonce's, else None."""
    routes = once_per_app(_found, scope.get("app"), _walk)
    path, method = route_path(scope), scope.get("method", "GET")
    picked = None
    for route in routes:
        if route.pattern.match(path) is None:
            continue
        if route.methods is None or method in route.methods:
            picked = route
            break
        picked = picked or route  # the 405, unless a later route takes the method
    return picked if picked is not None and picked.loadonce else None


def _walk(app: Any) -> tuple[Route, ...]:
    return tuple(_routes(list(getattr(app, "routes", None) or []), "", ()))


def _routes(routes: list[Any], prefix: str, cors: tuple[CORSMiddleware, ...]) -> Iterator[Route]:
    for walked in walk_routes(routes):
        route = getattr(walked, "original_route", walked)
        path = getattr(walked, "path", None)
        if isinstance(route, Mount):
            mounted_at = prefix + (path or route.path)
            inner = getattr(unwrapped(route.app), "routes", None) or route.routes
            wrapping = tuple(
                layer for layer in layers(route.app) if isinstance(layer, CORSMiddleware)
            )
            if inner:
                yield from _routes(list(inner), mounted_at, cors + wrapping)
            else:  # an app without routes of its own (StaticFiles): everything under it
                pattern = compile_path(mounted_at.rstrip("/") + "/{path:path}")[0]
                yield Route(pattern, None, False)
            continue
        if not isinstance(path, str):
            continue  # a Host route: its apps are the user's
        module = getattr(getattr(walked, "endpoint", None), "__module__", "") or ""
        methods = getattr(route, "methods", None)
        yield Route(
            compile_path(prefix + path)[0],
            None if methods is None else frozenset(methods),
            module.startswith("loadonce."),
            cors,
        )
