"""The inference routes answered before FastAPI's routing.

Profiled under load (py-spy, iris, 64 connections, docs/benchmarks.md), the event loop spent
more of each predict request in FastAPI's router, dependency solving (even for a path
parameter), exception middleware and request/response wrappers than in loadonce's own work.
Under overload, refusing is most of what the server does, and each refusal paid all of that
too. This middleware, the innermost of loadonce's, recognises the app's inference routes
(``endpoints.py``: the routes the app mounted, found by their mark) and runs their own
function directly, with the routes' own error answers and metrics; a full model's refusal is
the first thing that function does, before the body is read. Anything else goes on to FastAPI.
An app without this middleware runs the same function through FastAPI's routing.

Being the last layer before the routes, it also checks the API key of a CORS preflight that
no middleware of the app answered (``access.py``): one passes the check in front so that the
app's CORS middleware can answer it, but no route may run for it without a key.
"""

from __future__ import annotations

import time

from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from loadonce.http.access import access_refusal, is_cors_preflight
from loadonce.http.endpoints import MountedEndpoint, mounted_endpoints
from loadonce.http.errors import answer_exception
from loadonce.http.request_info import REQUEST_ID_HEADER, request_id_of, route_path
from loadonce.http.routes import count_answer, count_request
from loadonce.http.state import LoadonceState
from loadonce.tracing.active import ACTIVE


class InferenceMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        # Found in the app's routes at the first request, once every router is mounted.
        self._endpoints: tuple[MountedEndpoint, ...] | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            endpoints = self._endpoints
            if endpoints is None:
                routes = getattr(scope.get("app"), "routes", ())
                endpoints = self._endpoints = mounted_endpoints(routes)
            path = route_path(scope)
            for mounted in endpoints:
                match = mounted.pattern.match(path)
                if match is not None and not (mounted.earlier and mounted.taken_before(path)):
                    await self._answer(mounted, match.groupdict(), scope, receive, send)
                    return
        elif is_cors_preflight(scope) and await self._refused_preflight(scope, receive, send):
            return
        await self.app(scope, receive, send)

    @staticmethod
    async def _refused_preflight(scope: Scope, receive: Receive, send: Send) -> bool:
        """Refuse (401) a CORS preflight without a valid key that no middleware answered:
        the routes would run for it. Whether it was refused."""
        started = time.perf_counter()
        state = LoadonceState.in_scope(scope)
        if state is None or state.access is None:
            return False
        refused = access_refusal(scope, state.access)
        if refused is None:
            return False
        await refused(scope, receive, send)
        count_request(state, {}, "", refused.status_code, time.perf_counter() - started)
        return True

    async def _answer(
        self,
        mounted: MountedEndpoint,
        params: dict[str, str],
        scope: Scope,
        receive: Receive,
        send: Send,
    ) -> None:
        started = time.perf_counter()
        scope["path_params"] = params
        request = Request(scope, receive, send)
        request_id = request_id_of(request)
        endpoint = mounted.endpoint
        traced = ACTIVE.get()
        if traced is not None:
            traced.named(scope["method"], mounted.path)
        try:
            response = await endpoint.handle(request)
        except Exception as exc:
            error_for = endpoint.route_class.error_for
            response = await answer_exception(exc, request, request_id, error_for)
        else:
            response.headers.setdefault(REQUEST_ID_HEADER, request_id)
        state = LoadonceState.in_scope(scope)
        count_answer(state, params, mounted.path, response, started)
        await response(scope, receive, send)
