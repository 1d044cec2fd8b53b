"""The app's own CORS headers on the answers loadonce writes in front of the app's
middlewares.

``LoadonceMiddleware`` refuses a request (a missing key: 401; a foreign Host: 403; a body
over the limit: 413; the drain's end: 503) and answers a failure of the app's own routes
(500) before the app's ``CORSMiddleware`` saw the answer: a browser front end that the app
allows got no ``Access-Control-Allow-Origin`` and could read nothing of it (a failed request,
not "an API key is required"). Such an answer now goes through the app's own CORS middleware's
``send``, which adds exactly what it adds to the app's answers for that origin: an origin the
app does not allow gets nothing more. A preflight refused there (by the browser guard) is
left without: answered by the CORS middleware, it would read as allowed.

The same CORS middlewares say which web pages may call loadonce's inference routes from
another origin (``browser_guard.py``): an origin the app's CORS middleware allows, wherever it
sits in the app's stack, is one its owner meant to call the server. ``loadonce serve`` adds one
for the operator's ``cors_allow_origins`` (``cors_origins.py``).
"""

from __future__ import annotations

import contextlib
import functools
import weakref
from typing import Any

from starlette.datastructures import Headers
from starlette.middleware.cors import CORSMiddleware
from starlette.types import Scope, Send

from loadonce.http.access import is_cors_preflight
from loadonce.http.wrapping import layers

_in_stacks: weakref.WeakKeyDictionary[Any, tuple[CORSMiddleware, ...]] = weakref.WeakKeyDictionary()


def cors_behind(app: object) -> CORSMiddleware | None:
    """The first CORS middleware among the layers of ``app`` (the app's middlewares behind
    loadonce's), or None."""
    return next((layer for layer in layers(app) if isinstance(layer, CORSMiddleware)), None)


def with_cors(cors: CORSMiddleware, scope: Scope, send: Send) -> Send:
    """``send``, adding to the answer's head the headers ``cors`` adds for the request's
    origin; ``send`` itself for a request without an Origin (not a browser's cross-origin
    request) or a preflight."""
    if scope["type"] != "http" or is_cors_preflight(scope):
        return send
    headers = Headers(scope=scope)
    if "origin" not in headers:
        return send
    return functools.partial(cors.send, send=send, request_headers=headers)


def app_allows_origin(scope: Scope, origin: bytes, around: tuple[CORSMiddleware, ...] = ()) -> bool:
    """Whether a CORS middleware in the stack of the app serving ``scope`` (in front of
    loadonce's middleware or behind it), or one of ``around`` (those wrapping the mounted app
    the request goes to), allows ``origin``. Asked only of a request a browser marked as
    coming from another origin; the stack is looked through once per app."""
    app = scope.get("app")
    try:
        found = _in_stacks[app]
    except (KeyError, TypeError):
        stack = getattr(app, "middleware_stack", None)
        found = tuple(layer for layer in layers(stack) if isinstance(layer, CORSMiddleware))
        if stack is not None:  # built at the app's first request: then it stays
            with contextlib.suppress(TypeError):  # an app that cannot be weakly referenced
                _in_stacks[app] = found
    text = origin.decode("latin-1")
    return any(cors.is_allowed_origin(text) for cors in (*found, *around))
