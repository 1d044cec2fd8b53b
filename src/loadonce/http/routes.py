"""The route classes of loadonce's routes: each answers its own errors, a wrong method
included, in its protocol's body; the protocols' routes also count themselves."""

from __future__ import annotations

import time
from collections.abc import Callable, Coroutine
from typing import Any, ClassVar

from fastapi.routing import APIRoute
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Message, Receive, Scope, Send

from loadonce.http.errors import (
    MethodNotAllowedError,
    answer_exception,
    json_error_for,
    v2_error_for,
)
from loadonce.http.protocol_roots import V2_ROOT
from loadonce.http.request_info import REQUEST_ID_HEADER, request_id_of
from loadonce.http.schemas import ErrorBody
from loadonce.http.state import LoadonceState
from loadonce.http.streaming import EventStreamResponse


def count_request(
    state: LoadonceState | None, params: dict[str, Any], route: str, status: int, seconds: float
) -> None:
    """One request in the metrics, labelled with its route's template and its model."""
    if state is None or state.metrics is None:
        return
    name = params.get("name") or params.get("model_name") or ""
    # Only declared names become label values: a client must not mint new time series.
    model = name if name in state.registry else ""
    state.metrics.request_done(model, route, status, seconds)


def count_answer(
    state: LoadonceState | None,
    params: dict[str, Any],
    route: str,
    response: Response,
    started: float,
) -> None:
    """Count a route's answer now, or a stream's once it ended, with the status it ended
    with (its 200 left first; an error midway or a client that left is not a success)."""
    if not isinstance(response, EventStreamResponse):
        count_request(state, params, route, response.status_code, time.perf_counter() - started)
        return

    def counted(status: int) -> None:
        count_request(state, params, route, status, time.perf_counter() - started)

    response.when_done = counted


class PlainRoute(APIRoute):
    """A loadonce route that answers a wrong method itself (405 with ``Allow``), in its
    protocol's error body: Starlette would raise an ``HTTPException``, which the app's
    handler answers as FastAPI's ``{"detail"}``. Only loadonce's own routes do this: a user's
    routes in the same app answer as the user's app says."""

    error_for = staticmethod(json_error_for)
    # A refusal of the protocol's, as its routes' OpenAPI document says (``__init__``).
    refusal: ClassVar[dict[str, Any]] = {
        "model": ErrorBody,
        "description": "Refused (the status says why: 401/403 keys, 404 no such model...)",
    }
    # The path the protocol's routes begin with (``http/protocol_roots.py``): the errors
    # answered before any route under it runs are in its body. None: loadonce's JSON routes.
    protocol_root: ClassVar[str | None] = None
    # Whether its answers are in the metrics (``count_answer``); /metrics itself is not.
    counted: ClassVar[bool] = False

    def __init__(self, path: str, endpoint: Callable[..., Any], **options: Any) -> None:
        # Where a route has parameters and declares no 422 of its own, FastAPI's document
        # says it answers 422 with FastAPI's {"detail"}, which no loadonce route does (its
        # errors are its protocol's): declared, its refusals in their own body instead.
        responses = dict(options.pop("responses", None) or {})
        if "{" in path and not any(str(key) in _REFUSALS_DECLARED for key in responses):
            responses["4XX"] = type(self).refusal
        super().__init__(path, endpoint, responses=responses, **options)

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.methods and scope["method"] == "HEAD" and "GET" in self.methods:
            # HEAD wherever GET answers (RFC 9110; load balancers probe health with it): the
            # GET's status and headers, Content-Length included, and no body.
            await super().handle({**scope, "method": "GET"}, receive, _headers_only(send))
            return
        if self.methods and scope["method"] not in self.methods:
            started = time.perf_counter()
            request = Request(scope, receive)
            methods = {*self.methods, "HEAD"} if "GET" in self.methods else self.methods
            allowed = ", ".join(sorted(methods))
            error = MethodNotAllowedError(scope["method"], allowed)
            response = type(self).error_for(error, request, request_id_of(request))
            response.headers["Allow"] = allowed
            if self.counted:  # a storm of them is seen on a dashboard, as the route's 400s
                state = LoadonceState.in_scope(scope)
                params = scope.get("path_params", {})
                count_request(state, params, self.path_format, 405, time.perf_counter() - started)
            await response(scope, receive, send)
            return
        await super().handle(scope, receive, send)


# A route that declares one of these answers is left as it says (FastAPI adds its own 422
# only where none of them is declared).
_REFUSALS_DECLARED = ("422", "4XX", "default")


def _headers_only(send: Send) -> Send:
    async def send_head(message: Message) -> None:
        if message["type"] == "http.response.body" and message.get("body"):
            message = {**message, "body": b""}
        await send(message)

    return send_head


class LoadonceRoute(PlainRoute):
    """A route that answers its own errors, so mounting loadonce's routers in a user's app
    changes nothing about how the user's other routes answer theirs. ``error_for``: the
    protocol's error body (the JSON routes' here)."""

    counted = True

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        error_for = type(self).error_for

        async def handle(request: Request) -> Response:
            started = time.perf_counter()
            request_id = request_id_of(request)
            try:
                response = await handler(request)
            except Exception as exc:
                response = await answer_exception(exc, request, request_id, error_for)
            else:
                response.headers.setdefault(REQUEST_ID_HEADER, request_id)
            state = LoadonceState.in_scope(request.scope)
            # The template as documented (``{name}``, not ``{name:path}``).
            count_answer(state, request.path_params, self.path_format, response, started)
            return response

        return handle


class V2Route(LoadonceRoute):
    """A route of the Open Inference Protocol: its error body, and 400 (not 422) for a
    request that is not valid."""

    error_for = staticmethod(v2_error_for)
    protocol_root = V2_ROOT
    refusal: ClassVar[dict[str, Any]] = {
        "description": "Refused (the status says why: 400 not valid, 404 no such model...)",
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "properties": {"error": {"type": "string"}},
                    "required": ["error"],
                }
            }
        },
    }
