"""The inference endpoints: each one's path template, its work, its error answer and its
OpenAPI entry, declared once by its protocol.

``add_inference_route`` registers an endpoint with FastAPI (routing, OpenAPI) and marks the
route's function with the endpoint; the inference middleware finds its table in the app's
routes by that mark, and matches paths with the regex Starlette compiles from the same
template. So the routes a user's app mounts are exactly the ones answered early, and both
ways run one function, ``InferenceEndpoint.handle``.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from fastapi import APIRouter
from fastapi.routing import APIRoute
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, compile_path

from loadonce.http.routes import LoadonceRoute

_MARK = "__loadonce_inference__"


@dataclass(frozen=True)
class InferenceEndpoint:
    """``template``: the path, as FastAPI declares it (also the metrics' route label).
    ``handle``: the work; it raises loadonce's errors, which ``route_class.error_for``
    answers in the protocol's body. ``openapi``: the rest of ``add_api_route``'s arguments
    (summary, response model, documented errors and parameters)."""

    template: str
    handle: Callable[[Request], Awaitable[Response]]
    route_class: type[LoadonceRoute]
    openapi: dict[str, Any] = field(default_factory=dict)


def add_inference_route(router: APIRouter, endpoint: InferenceEndpoint) -> None:
    async def answer(request: Request) -> Response:
        return await endpoint.handle(request)

    setattr(answer, _MARK, endpoint)
    router.add_api_route(
        endpoint.template,
        answer,
        methods=["POST"],
        route_class_override=endpoint.route_class,
        **endpoint.openapi,
    )


@dataclass(frozen=True)
class MountedEndpoint:
    """An inference endpoint as the app mounted it: its path (with the router's prefix, if
    any) compiled to a regex whose named groups are the path parameters."""

    pattern: re.Pattern[str]
    path: str
    endpoint: InferenceEndpoint


def mounted_endpoints(routes: Iterable[BaseRoute]) -> tuple[MountedEndpoint, ...]:
    """The inference endpoints among an app's routes, in the order they match."""
    found = []
    for route in routes:
        if not isinstance(route, APIRoute):
            continue
        declared = getattr(route.endpoint, _MARK, None)
        if isinstance(declared, InferenceEndpoint):
            pattern, _, _ = compile_path(route.path)
            found.append(MountedEndpoint(pattern, route.path, declared))
    return tuple(found)
