"""API keys per route family, checked before a request reaches any route (the keys and the
families: ``access_keys.py``).

A CORS preflight is the exception: a browser sends it on its own, before a cross-origin
request that carries a key, and never with credentials (Fetch standard), so refusing it for
want of a key refused every call from a browser front end, through the app's own
``CORSMiddleware`` (which answers preflights) too. A preflight passes the check in front of
the app's middlewares, and is checked again just before the routes: only the app's
middlewares (its CORS middleware) may answer it without a key, never a route (an ``OPTIONS``
route running a model).
"""

from __future__ import annotations

from starlette.responses import Response
from starlette.types import Scope

from loadonce.http.access_keys import AccessKeys, presented_key, refusal
from loadonce.http.errors import raw_error_response
from loadonce.http.route_families import family_in

_ORIGIN = b"origin"
_PREFLIGHT_METHOD = b"access-control-request-method"


def access_refusal(scope: Scope, keys: AccessKeys) -> Response | None:
    """The 401 (no key, or an unknown one) or 403 (a key of the wrong scope) answer, as JSON,
    or None when the request may go on."""
    refused = refusal(keys, family_in(scope), presented_key(scope["headers"]))
    if refused is None:
        return None
    status, message = refused
    headers = {"WWW-Authenticate": 'Bearer realm="loadonce"'} if status == 401 else {}
    return raw_error_response(status, message, scope, headers)


def is_cors_preflight(scope: Scope) -> bool:
    """An ``OPTIONS`` request with ``Origin`` and ``Access-Control-Request-Method``: what a
    browser sends before a cross-origin request, and what Starlette's ``CORSMiddleware``
    answers itself."""
    if scope["type"] != "http" or scope["method"] != "OPTIONS":
        return False
    names = {name for name, _ in scope["headers"]}
    return _ORIGIN in names and _PREFLIGHT_METHOD in names
