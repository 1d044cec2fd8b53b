"""API keys per route family, checked before a request reaches any route (the keys and the
families: ``access_keys.py``)."""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send

from loadonce.http.access_keys import presented_key, refusal
from loadonce.http.errors import raw_error_response
from loadonce.http.route_families import family_in
from loadonce.http.state import LoadonceState


class AccessMiddleware:
    """Answers 401 (no key, or an unknown one) or 403 (a key of the wrong scope) as JSON."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        state = LoadonceState.in_scope(scope) if scope["type"] == "http" else None
        if state is None or state.access is None:
            await self.app(scope, receive, send)
            return
        family = family_in(scope)
        refused = refusal(state.access, family, presented_key(scope["headers"]))
        if refused is None:
            await self.app(scope, receive, send)
            return
        status, message = refused
        headers = {"WWW-Authenticate": 'Bearer realm="loadonce"'} if status == 401 else {}
        response = raw_error_response(status, message, scope, headers)
        await response(scope, receive, send)
