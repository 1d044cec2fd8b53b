"""Whether a request goes to one of loadonce's own routes or to a route of the app's own.

The browser guard refuses a browser's cross-origin request to loadonce's inference routes
(``browser_guard.py``), never to a route of the user's app (an OAuth provider's ``form_post``
callback is a cross-site POST by design). A path alone does not say whose route it is: the
user's app may put its own routes anywhere, before or after loadonce's routers, under
prefixes and mounts. So the app's routes are walked once per app, in the order Starlette's
router tries them, and a request is loadonce's when the route that router would pick (the
first whose path and method match, else the first whose path matches: the 405) is. Only a
request a browser marked as coming from another origin asks; others pay nothing.
"""

from __future__ import annotations

import re
import weakref
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from starlette.routing import Mount, compile_path
from starlette.types import Scope

from loadonce.http.request_info import route_path
from loadonce.http.route_walk import once_per_app, walk_routes
from loadonce.http.wrapping import unwrapped


@dataclass(frozen=True)
class _Route:
    pattern: re.Pattern[str]
    methods: frozenset[str] | None  # None: any method (a mounted app)
    loadonce: bool


_found: weakref.WeakKeyDictionary[Any, tuple[_Route, ...]] = weakref.WeakKeyDictionary()


def serves_loadonce_route(scope: Scope) -> bool:
    """Whether the route the app would pick for this request is one of loadonce's."""
    routes = once_per_app(_found, scope.get("app"), _walk)
    path, method = route_path(scope), scope.get("method", "GET")
    by_path = None
    for route in routes:
        if route.pattern.match(path) is None:
            continue
        if route.methods is None or method in route.methods:
            return route.loadonce
        by_path = by_path or route
    return by_path is not None and by_path.loadonce


def _walk(app: Any) -> tuple[_Route, ...]:
    return tuple(_routes(list(getattr(app, "routes", None) or []), ""))


def _routes(routes: list[Any], prefix: str) -> Iterator[_Route]:
    for walked in walk_routes(routes):
        route = getattr(walked, "original_route", walked)
        path = getattr(walked, "path", None)
        if isinstance(route, Mount):
            mounted_at = prefix + (path or route.path)
            inner = getattr(unwrapped(route.app), "routes", None) or route.routes
            if inner:
                yield from _routes(list(inner), mounted_at)
            else:  # an app without routes of its own (StaticFiles): everything under it
                pattern = compile_path(mounted_at.rstrip("/") + "/{path:path}")[0]
                yield _Route(pattern, None, False)
            continue
        if not isinstance(path, str):
            continue  # a Host route: its apps are the user's
        module = getattr(getattr(walked, "endpoint", None), "__module__", "") or ""
        methods = getattr(route, "methods", None)
        yield _Route(
            compile_path(prefix + path)[0],
            None if methods is None else frozenset(methods),
            module.startswith("loadonce."),
        )
