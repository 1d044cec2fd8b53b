"""API keys per route family, checked before a request reaches any route (the keys and the
families: ``access_keys.py``)."""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send

from loadonce.http.access_keys import AccessKeys, RouteFamily, family_of, matches, presented_key
from loadonce.http.errors import raw_error_response
from loadonce.http.request_info import route_path
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
        family = family_of(route_path(scope))
        refusal = _refusal(state.access, family, presented_key(scope["headers"]))
        if refusal is None:
            await self.app(scope, receive, send)
            return
        status, message = refusal
        headers = {"WWW-Authenticate": 'Bearer realm="loadonce"'} if status == 401 else {}
        response = raw_error_response(status, message, scope, headers)
        await response(scope, receive, send)


def _refusal(keys: AccessKeys, family: RouteFamily, key: bytes | None) -> tuple[int, str] | None:
    if family is RouteFamily.OPEN or (family is RouteFamily.METRICS and not keys.protect_metrics):
        return None
    if family is RouteFamily.INFERENCE and not keys.inference:
        return None  # only admin keys configured: inference stays open
    if key is None:
        return 401, (
            "an API key is required: send it as 'Authorization: Bearer <key>' or 'X-API-Key: <key>'"
        )
    is_admin = matches(key, keys.admin)
    is_inference = matches(key, keys.inference)
    if not (is_admin or is_inference):
        return 401, "the API key is not valid"
    if family is RouteFamily.ADMIN and not is_admin:
        return 403, "this API key may not use admin routes (load, unload, reload)"
    return None
