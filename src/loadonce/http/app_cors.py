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
"""

from __future__ import annotations

import functools

from starlette.datastructures import Headers
from starlette.middleware.cors import CORSMiddleware
from starlette.types import Scope, Send

from loadonce.http.access import is_cors_preflight
from loadonce.http.wrapping import layers


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
