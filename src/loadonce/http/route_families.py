"""Which family a request's path is in (``access_keys.RouteFamily``), wherever the app put
loadonce's routes.

The families were told from the literal paths loadonce's routers use (``/admin/...``,
``/v2/repository/...``, ``/livez``): a user's app that included ``admin_router()`` under a
prefix (``/ops/admin/models/m/reload``) had its control routes taken for inference routes:
any inference key, or none with only admin keys set, reloaded and unloaded models, and a
browser's cross-site request passed the guard; a prefixed ``health_router()`` wanted a key.
The app's own routes now say where loadonce's control, health, metrics and statistics routes
are: each app's routes are walked once (included routers and mounted apps, with their
prefixes), and a request's path is matched against those that are not at their usual place.
An app that keeps them there pays nothing more per request.
"""

from __future__ import annotations

import re
import weakref
from dataclasses import dataclass
from typing import Any

from starlette.routing import compile_path
from starlette.types import Scope

from loadonce.http.access_keys import RouteFamily, family_of
from loadonce.http.request_info import route_path
from loadonce.http.route_walk import loadonce_routes, once_per_app

# A control route's template, at the end of wherever it is included.
_CONTROL = re.compile(r"/(admin/.*|v2/repository/models/\{[^}/]+\}/(load|unload))$")
_HEALTH = ("/livez", "/readyz", "/v2/health/live", "/v2/health/ready")
_STATISTICS = re.compile(r"/v2/models(/\{[^}/]+\}(/versions/\{[^}/]+\})?)?/stats$")
_METRICS = "/metrics"


@dataclass(frozen=True)
class _Moved:
    """loadonce's control and health routes that are not at their usual paths."""

    control: tuple[re.Pattern[str], ...]
    health: tuple[re.Pattern[str], ...]
    statistics: tuple[re.Pattern[str], ...] = ()
    metrics: tuple[re.Pattern[str], ...] = ()


_NOTHING_MOVED = _Moved((), ())
_found: weakref.WeakKeyDictionary[Any, _Moved] = weakref.WeakKeyDictionary()


def family_in(scope: Scope) -> RouteFamily:
    """The family of the request's path in the app that serves it (``scope["app"]``)."""
    path = route_path(scope)
    family = family_of(path)
    if family is not RouteFamily.INFERENCE:
        return family
    moved = _moved_in(scope.get("app"))
    if any(pattern.match(path) for pattern in moved.control):
        return RouteFamily.ADMIN
    if any(pattern.match(path) for pattern in moved.health):
        return RouteFamily.OPEN
    if any(pattern.match(path) for pattern in moved.statistics):
        return RouteFamily.STATISTICS
    if any(pattern.match(path) for pattern in moved.metrics):
        return RouteFamily.METRICS
    return family


def _moved_in(app: Any) -> _Moved:
    if app is None:
        return _NOTHING_MOVED
    return once_per_app(_found, app, _walk)


def _walk(app: Any) -> _Moved:
    control: list[re.Pattern[str]] = []
    health: list[re.Pattern[str]] = []
    statistics: list[re.Pattern[str]] = []
    metrics: list[re.Pattern[str]] = []
    for path, _ in loadonce_routes(getattr(app, "routes", [])):
        if family_of(path) is not RouteFamily.INFERENCE:
            continue  # at its usual path: told without looking
        if _CONTROL.search(path):
            control.append(compile_path(path)[0])
        elif path.endswith(_HEALTH):
            health.append(compile_path(path)[0])
        elif _STATISTICS.search(path):
            statistics.append(compile_path(path)[0])
        elif path.endswith(_METRICS):
            metrics.append(compile_path(path)[0])
    return _Moved(tuple(control), tuple(health), tuple(statistics), tuple(metrics))
