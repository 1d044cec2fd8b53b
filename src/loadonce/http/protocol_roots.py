"""Which protocol a path belongs to, for the errors answered before any route runs (API keys,
the body limit, the browser guard, a drain's end, a path no route has): OpenAI's body under
its routes' ``/v1``, the Open Inference Protocol's under ``/v2``, wherever the app put them.

Told from the literal ``/v1`` and ``/v2`` alone, a user's app that included
``openai_router()`` under a prefix (``/llm/v1/...``) had those errors answered in loadonce's
JSON body, which OpenAI's clients cannot read (``error`` is a string there, not an object).
The app's routes now say where each protocol is: each route class names its protocol's root
(``protocol_root``), and each app's routes are walked once (included routers and mounted
apps, with their prefixes). Only an error pays for it, once per app.
"""

from __future__ import annotations

import weakref
from typing import Any

from starlette.types import Scope

from loadonce.http.request_info import route_path
from loadonce.http.route_walk import loadonce_routes, once_per_app

__all__ = ["OPENAI_ROOT", "V2_ROOT", "protocol_root"]

OPENAI_ROOT = "/v1"
V2_ROOT = "/v2"
# Where the protocols are in loadonce's own app (create_app), and in any app whose routes
# hold none of their routers (where a path cannot be told from the app's routes).
_USUAL: tuple[tuple[str, str], ...] = ((OPENAI_ROOT, OPENAI_ROOT), (V2_ROOT, V2_ROOT))

_found: weakref.WeakKeyDictionary[Any, tuple[tuple[str, str], ...]] = weakref.WeakKeyDictionary()


def protocol_root(scope: Scope) -> str | None:
    """The root (``OPENAI_ROOT``, ``V2_ROOT``) of the protocol whose routes the request's path
    is under in the app that serves it, or None (loadonce's JSON routes, a user's own)."""
    path = route_path(scope)
    for where, root in _roots_in(scope.get("app")):
        if path == where or path.startswith(where + "/"):
            return root
    return None


def _roots_in(app: Any) -> tuple[tuple[str, str], ...]:
    if app is None:
        return _USUAL
    return once_per_app(_found, app, _walk)


def _walk(app: Any) -> tuple[tuple[str, str], ...]:
    """(where, root): the path each protocol's routes are under, the longest first (the
    innermost of nested prefixes wins)."""
    found: set[tuple[str, str]] = set()
    for path, route in loadonce_routes(getattr(app, "routes", [])):
        root = getattr(route, "protocol_root", None)
        if not isinstance(root, str):
            continue
        # A protocol's templates begin with its root, which they hold once: what is before
        # its last occurrence is the prefix the router was included under.
        at = path.rfind(root)
        if at >= 0 and path[at + len(root) :][:1] in ("", "/"):
            found.add((path[: at + len(root)], root))
    if not found:
        return _USUAL
    return tuple(sorted(found, key=lambda pair: len(pair[0]), reverse=True))
