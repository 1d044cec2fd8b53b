"""loadonce's middlewares, in their order: the same stack for ``create_app``'s app and for a
user's own app (``install_middleware``). Each reads its settings from the app's
``LoadonceState`` (made by ``lifespan()``), so there is one place to configure them."""

from __future__ import annotations

from fastapi import FastAPI
from starlette.middleware import Middleware

from loadonce.core.errors import LoadonceError
from loadonce.http.access import AccessMiddleware
from loadonce.http.body_limit import BodyLimitMiddleware
from loadonce.http.browser_guard import BrowserGuardMiddleware
from loadonce.http.errors import answer_loadonce_error
from loadonce.http.inference_middleware import InferenceMiddleware
from loadonce.http.request_log import RequestLogMiddleware


def install_middleware(app: FastAPI) -> None:
    """Add loadonce's middlewares to ``app``, outermost first: the request id and log line
    (every answer carries X-Request-ID, refusals too), the browser guard (DNS rebinding,
    cross-site requests to control routes), API keys (``access``: before the body is read),
    the body size limit (``limits.max_body_bytes``), and the inference routes answered before
    FastAPI's routing; and the handler that answers loadonce's errors raised in your own
    routes (a full queue: 503 with Retry-After, a deadline: 504, inputs that do not fit: 400)
    as loadonce's routes do. Call it once, after ``FastAPI(lifespan=loadonce.lifespan(...))``;
    the settings come from that lifespan's arguments."""
    # Starlette wraps in reverse order of addition: the innermost first. The inference
    # middleware goes last of the app's whole list, innermost, just before the routing it
    # stands for: a middleware of the user's added before this call ran inside it, and was
    # skipped for every inference route (their auth, if it was one).
    app.user_middleware.append(Middleware(InferenceMiddleware))
    app.add_middleware(BodyLimitMiddleware)
    app.add_middleware(AccessMiddleware)
    app.add_middleware(BrowserGuardMiddleware)
    app.add_middleware(RequestLogMiddleware)
    # loadonce's errors from the user's own routes (``await model.predict(...)``) answered
    # as loadonce's routes answer them; a handler of the user's own, added after, wins.
    if LoadonceError not in app.exception_handlers:
        app.add_exception_handler(LoadonceError, answer_loadonce_error)


def middleware_installed(app: FastAPI) -> bool:
    """Whether ``install_middleware`` ran on ``app`` already."""
    return any(getattr(entry, "cls", None) is RequestLogMiddleware for entry in app.user_middleware)
