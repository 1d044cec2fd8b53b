"""The apps mounted inside an app (``app.mount``, a ``Host`` route, at any depth). Starlette
runs the lifespan of the app it serves, never a mounted app's: a mounted app serves from the
state of the app it is mounted in (``lifespan.py`` puts it there)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from starlette.routing import Host, Mount

# How many wrapping middlewares are looked through around one mounted app: far more than an
# app stacks, and a bound for an object whose ``.app`` leads back to itself.
_DEEPEST_WRAPPING = 64


@dataclass(frozen=True)
class MountedApp:
    """An app mounted inside another, and where: its path (``/sub``), or its host's name."""

    where: str
    app: object


def mounted_apps(app: object, where: str = "") -> Iterator[MountedApp]:
    """The apps mounted inside ``app``, outermost first. A ``Mount`` of routes (a router, no
    app of its own) is walked through for the apps mounted in it, and so is a mounted app
    wrapped in middleware (``unwrapped``)."""
    for route in getattr(app, "routes", None) or []:
        if isinstance(route, Mount):
            place = where + route.path
        elif isinstance(route, Host):
            place = f"{where} host {route.host}".strip()
        else:
            continue
        inner = unwrapped(route.app)
        if hasattr(inner, "state") and hasattr(inner, "routes"):  # an app, not a router
            yield MountedApp(place or "/", inner)
        yield from mounted_apps(inner, place)


def unwrapped(app: object) -> object:
    """The app or router inside the middleware objects wrapping ``app``: each holds the next
    as ``.app``, as Starlette composes them (``Mount(..., middleware=[...])``,
    ``app.mount("/sub", CORSMiddleware(sub_app))``). A mounted app with its own lifespan or
    loadonce's routes behind a CORS middleware was not seen: its lifespan never ran without
    a word, and its admin routes were taken for inference routes."""
    for _ in range(_DEEPEST_WRAPPING):
        if hasattr(app, "routes"):
            return app
        inner = getattr(app, "app", None)
        if inner is None or inner is app:
            return app
        app = inner
    return app
