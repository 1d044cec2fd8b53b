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
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import fastapi.routing
from fastapi import APIRouter
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
    for path, endpoint in _paths_and_endpoints(list(routes)):
        declared = getattr(endpoint, _MARK, None)
        if isinstance(declared, InferenceEndpoint) and path is not None:
            pattern, _, _ = compile_path(path)
            found.append(MountedEndpoint(pattern, path, declared))
    return tuple(found)


def walk_routes(routes: list[BaseRoute]) -> Iterator[Any]:
    """Every route, inside included routers too, as FastAPI sees it (``path``, ``endpoint``,
    ``methods``, ``dependant``). Newer FastAPI keeps an included router as one route of the
    app's, and ``iter_route_contexts`` walks into it with the prefix it was included under (as
    FastAPI's OpenAPI does); older FastAPI copied the router's routes into the app's."""
    iterate = getattr(fastapi.routing, "iter_route_contexts", None)
    yield from routes if iterate is None else iterate(routes)


def _paths_and_endpoints(routes: list[BaseRoute]) -> Iterator[tuple[str | None, object]]:
    for route in walk_routes(routes):
        yield getattr(route, "path", None), getattr(route, "endpoint", None)


def route_paths(routes: Iterable[BaseRoute]) -> list[str]:
    """Every route's full path, inside included routers too."""
    return [path for path, _ in _paths_and_endpoints(list(routes)) if path is not None]
