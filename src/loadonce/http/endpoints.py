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
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, compile_path

from loadonce.http.route_walk import walk_routes
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
    any) compiled to a regex whose named groups are the path parameters. ``earlier``: the
    paths of the app's routes before it that may take a POST, which FastAPI's routing would
    try first: a path one of them matches is the app's to answer."""

    pattern: re.Pattern[str]
    path: str
    endpoint: InferenceEndpoint
    earlier: tuple[re.Pattern[str], ...] = ()

    def taken_before(self, path: str) -> bool:
        """Whether a route before this endpoint takes a POST of ``path`` (FastAPI's routing
        would pick it)."""
        return any(route.match(path) for route in self.earlier)


def mounted_endpoints(routes: Iterable[BaseRoute]) -> tuple[MountedEndpoint, ...]:
    """The inference endpoints among an app's routes that may be answered before FastAPI's
    routing, in the order they match. Not one that carries dependencies (the router's or the
    app's: a user's own auth), which only FastAPI's routing runs; nor a path an earlier
    route of the app's takes (``MountedEndpoint.earlier``): a user's route or mounted app
    declared first is the one FastAPI answers, and so the one answered."""
    found = []
    earlier: list[tuple[str, re.Pattern[str]]] = []
    for route in walk_routes(list(routes)):
        path, declared = getattr(route, "path", None), getattr(route, "endpoint", None)
        declared = getattr(declared, _MARK, None)
        dependant = getattr(route, "dependant", None)
        if (
            isinstance(declared, InferenceEndpoint)
            and path is not None
            and (dependant is None or not dependant.dependencies)
        ):
            pattern, _, _ = compile_path(path)
            # (An earlier endpoint answered here is tried first by the middleware's own loop.)
            overlapping = tuple(regex for prefix, regex in earlier if _may_overlap(prefix, path))
            found.append(MountedEndpoint(pattern, path, declared, overlapping))
            continue
        taking = _takes_posts(route)
        if taking is not None:
            earlier.append(taking)
    return tuple(found)


def _takes_posts(route: Any) -> tuple[str, re.Pattern[str]] | None:
    """The literal start of the paths a route answers a POST on, and their pattern (a
    mounted app: everything under its path)."""
    methods = getattr(route, "methods", None)
    path = getattr(route, "path", None)
    if path is None or (methods is not None and "POST" not in methods):
        return None
    if methods is None:  # a mounted app, or a route of any method
        regex = getattr(route, "path_regex", None)
        return (path, regex) if isinstance(regex, re.Pattern) else None
    pattern, _, _ = compile_path(path)
    return path.split("{", 1)[0], pattern


def _may_overlap(prefix: str, template: str) -> bool:
    """Whether a path starting with ``prefix`` may be one ``template`` matches too (each
    literal start a prefix of the other's): a route that cannot is not looked at per request."""
    literal = template.split("{", 1)[0]
    return literal.startswith(prefix) or prefix.startswith(literal)
