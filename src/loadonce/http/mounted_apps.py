"""The apps mounted inside an app (``app.mount``, a ``Host`` route, at any depth). Starlette
runs the lifespan of the app it serves, never a mounted app's: a mounted app serves from the
state of the app it is mounted in (``lifespan.py`` puts it there)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from starlette.routing import Host, Mount

from loadonce.http.wrapping import unwrapped


@dataclass(frozen=True)
class MountedApp:
    """An app mounted inside another, and where: its path (``/sub``), or its host's name."""

    where: str
    app: object


def mounted_apps(app: object, where: str = "") -> Iterator[MountedApp]:
    """The apps mounted inside ``app``, outermost first. A ``Mount`` of routes (a router, no
    app of its own) is walked through for the apps mounted in it. A mounted app wrapped in
    middleware objects (``app.mount("/sub", CORSMiddleware(sub_app))``) is the app inside
    them: one with its own lifespan or loadonce's routes behind a CORS middleware was not
    seen (its lifespan never ran without a word, its admin routes were taken for inference
    routes)."""
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
