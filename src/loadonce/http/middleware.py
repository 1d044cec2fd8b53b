"""loadonce's middlewares: the same stack for ``create_app``'s app and for a user's own app
(``install_middleware``). Each reads its settings from the app's ``LoadonceState`` (made by
``lifespan()``), so there is one place to configure them.

Two ASGI layers, not one per check: ``LoadonceMiddleware`` in front (the request's id and log
line, then the checks that refuse a request before any route runs, each a function of its own
module) and ``InferenceMiddleware`` innermost. Each layer costs the event loop a coroutine and
a wrapped ``send`` per request, and at 64 connections on a tiny model the loop is the server's
throughput (docs/benchmarks.md).
"""

from __future__ import annotations

import asyncio

from fastapi import FastAPI
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send
from starlette.websockets import WebSocketDisconnect

from loadonce.core.errors import LoadonceError
from loadonce.http.access import access_refusal, is_cors_preflight
from loadonce.http.app_cors import cors_behind, with_cors
from loadonce.http.body_limit import CountedBody, declared_too_large
from loadonce.http.browser_guard import refusal as browser_refusal
from loadonce.http.errors import answer_loadonce_error, raw_error_response
from loadonce.http.inference_middleware import InferenceMiddleware
from loadonce.http.request_log import RequestLog
from loadonce.http.routes import count_request
from loadonce.http.state import LoadonceState
from loadonce.http.unhandled import answer_unhandled
from loadonce.http.websocket_errors import (
    can_deny_with_http,
    close_failed,
    close_unreadable,
    unreadable_message,
)


def refusal_before_routes(scope: Scope, state: LoadonceState | None) -> Response | None:
    """The answer refusing an HTTP request before any route runs, or None, in this order: a
    missing, repeated or malformed Host (400, RFC 9112), the browser guard (DNS rebinding,
    cross-site requests to control routes: 403), API keys
    (``access``, before the body is read: 401/403; a CORS preflight's are checked at the
    routes instead, ``InferenceMiddleware``, so that the app's CORS middleware can answer
    it), a declared body over ``limits.max_body_bytes`` (413)."""
    guarded = browser_refusal(scope, () if state is None else state.allowed_hosts)
    if guarded is not None:
        return raw_error_response(*guarded, scope)
    if state is None:
        return None
    if state.access is not None and not is_cors_preflight(scope):
        refused = access_refusal(scope, state.access)
        if refused is not None:
            return refused
    limit = state.limits.max_body_bytes
    return None if limit is None else declared_too_large(scope, limit)


class LoadonceMiddleware:
    """In front of every HTTP request and WebSocket handshake: its id and log line
    (``request_log.py``; every answer carries X-Request-ID, refusals too),
    ``refusal_before_routes``, the body counted as it arrives (``body_limit.py``: against
    ``max_body_bytes`` when sent without a length, and in the worker's budget of body bytes
    in flight, given back when the request ends), and the answer to an exception nothing
    inside the app answered (``unhandled.py``). What it answers itself carries the CORS
    headers the app's own CORS middleware behind it gives (``app_cors.py``)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        # The app's CORS middleware, found at the first answer written here (the app's
        # middleware stack is built by then): refusals are rare, and most apps have none.
        self._cors: CORSMiddleware | None = None
        self._cors_looked_for = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind != "http" and kind != "websocket":  # the lifespan
            await self.app(scope, receive, send)
            return
        state = LoadonceState.in_scope(scope)
        log = RequestLog(scope, state, send)
        try:
            refused = refusal_before_routes(scope, state)
            if refused is not None:
                await _answer_refusal(refused, scope, receive, self._answering(scope, log.send))
                # In the metrics as the routes' answers are, under no route or model: a
                # storm of 401s or 413s is seen on a dashboard, not only in the log.
                count_request(state, {}, "", refused.status_code, log.seconds())
                return
            log.trace(scope, state)
            if state is not None and kind == "http":
                counted = CountedBody(
                    receive, state.limits.max_body_bytes, state.body_budget, scope
                )
                try:
                    await self.app(scope, counted, log.send)
                finally:
                    counted.release()
            else:
                await self.app(scope, receive, log.send)
        except asyncio.CancelledError:
            if not await log.answer_drain_end(
                scope, receive, state, self._answering(scope, log.send)
            ):
                raise
        except WebSocketDisconnect:
            # The client left (or broke the protocol: the server closed it with its code),
            # and the open connection's receive said so: nothing is left to answer. Raised
            # on, the server logged it as the app's failure, a traceback per client that left.
            if kind != "websocket" or not log.answered:
                raise
        except Exception as exc:
            # An exception of the app's own code that nothing inside answered: Starlette's
            # ServerErrorMiddleware, outside this one, answered it without the request id.
            if kind == "websocket" and log.answered and not log.closed:
                unreadable = unreadable_message(exc)
                if unreadable is not None:  # the client's message, not the server's failure
                    await close_unreadable(log.send, *unreadable, log.request_id)
                    return
                # Open: the client is told by a close frame, not a dropped connection.
                await close_failed(log.send, exc, log.request_id)
            if kind != "http" or log.answered:
                raise
            answering = self._answering(scope, log.send)
            if await answer_unhandled(exc, scope, receive, answering, log.request_id):
                raise
        finally:
            log.end(scope)

    def _answering(self, scope: Scope, send: Send) -> Send:
        """``send`` for an answer written here, in front of the app's middlewares: with the
        headers the app's own CORS middleware adds for the request's origin."""
        if not self._cors_looked_for:
            self._cors, self._cors_looked_for = cors_behind(self.app), True
        return send if self._cors is None else with_cors(self._cors, scope, send)


async def _answer_refusal(refused: Response, scope: Scope, receive: Receive, send: Send) -> None:
    """The refusal as an HTTP answer, a WebSocket handshake's too where the server can send
    one (ASGI's denial response); else the handshake is closed (the server answers 403)."""
    if scope["type"] == "websocket" and not can_deny_with_http(scope):
        await send({"type": "websocket.close", "code": 1008})
        return
    await refused(scope, receive, send)


def install_middleware(app: FastAPI) -> None:
    """Add loadonce's middlewares to ``app``: in front, the request id and log line (every
    answer carries X-Request-ID, refusals too), the browser guard (DNS rebinding, cross-site
    requests to control routes), API keys (``access``: before the body is read) and the body
    size limit (``limits.max_body_bytes``); innermost, the inference routes answered before
    FastAPI's routing; and the handler that answers loadonce's errors raised in your own
    routes (a full queue: 503 with Retry-After, a deadline: 504, inputs that do not fit: 400)
    as loadonce's routes do. Call it after ``FastAPI(lifespan=loadonce.lifespan(...))``;
    the settings come from that lifespan's arguments. A second call (on ``create_app``'s app,
    or an app factory's twice) changes nothing: the stack was installed twice, and each
    request logged twice and checked twice."""
    if middleware_installed(app):
        return
    # Starlette wraps in reverse order of addition: the innermost first. The inference
    # middleware goes last of the app's whole list, innermost, just before the routing it
    # stands for: a middleware of the user's added before this call ran inside it, and was
    # skipped for every inference route (their auth, if it was one).
    app.user_middleware.append(Middleware(InferenceMiddleware))
    app.add_middleware(LoadonceMiddleware)
    # loadonce's errors from the user's own routes (``await model.predict(...)``) answered
    # as loadonce's routes answer them; a handler of the user's own, added after, wins.
    if LoadonceError not in app.exception_handlers:
        # It closes a WebSocket too (returning no answer), which Starlette's types keep apart.
        app.add_exception_handler(LoadonceError, answer_loadonce_error)  # type: ignore[arg-type]


def middleware_installed(app: object) -> bool:
    """Whether ``install_middleware`` ran on ``app`` already."""
    entries = getattr(app, "user_middleware", [])
    return any(getattr(entry, "cls", None) is LoadonceMiddleware for entry in entries)
