"""``loadonce serve pkg.module:app``: a user's own FastAPI app, served as loadonce serves its own.

The supervisor imports the app once, to read the models its ``loadonce.lifespan`` declares
(they drive the memory plan, the fork server's preloaded libraries, and the record of model
changes that replacement workers follow). Each worker imports it again (forked from the fork
server, which preloaded its module) and, before uvicorn starts, gives the app's lifespan the
worker's registry, the supervisor's control and gates, and the server's options
(``LoadonceLifespan.serve_with``). What the app lacks of loadonce's server is added: the
probes, ``/metrics``, the admin route and the middlewares. Nothing else of the app changes:
its routes, dependencies and own lifespan run as they would under uvicorn.
"""

from __future__ import annotations

import logging
import pickle
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import APIRouter, FastAPI
from starlette.applications import Starlette

from loadonce.core.control import ModelControl
from loadonce.core.errors import ConfigError, describe_exception
from loadonce.core.imports import import_object
from loadonce.core.registry import Registry
from loadonce.core.spec import ModelSpec
from loadonce.http.admin import admin_router
from loadonce.http.cors_origins import allow_origins
from loadonce.http.health import health_router
from loadonce.http.lifespan import (
    LoadedHook,
    LoadGate,
    LoadonceLifespan,
    lifespan_of,
    mounted_lifespans_ignored,
)
from loadonce.http.metrics_route import metrics_router
from loadonce.http.middleware import install_middleware, middleware_installed
from loadonce.http.route_walk import walk_routes
from loadonce.server.settings import ServerOptions
from loadonce.tracing import TracingOptions

logger = logging.getLogger("loadonce")


def load_app(reference: str, *, factory: bool) -> FastAPI:
    """The app ``reference`` names (or the app its factory returns), which must run a
    ``loadonce.lifespan``."""
    try:
        found = import_object(reference)
    except Exception as exc:  # the module's own import may raise anything
        raise ConfigError(f"cannot import {reference}: {describe_exception(exc)}") from None
    if factory:
        if isinstance(found, Starlette):
            raise ConfigError(f"{reference} is an app, not a factory: run it without --factory")
        if not callable(found):
            raise ConfigError(f"{reference} is not callable, so it is not an app factory")
        try:
            found = found()
        except Exception as exc:  # the user's factory may raise anything
            raise ConfigError(f"{reference}() raised {describe_exception(exc)}") from None
    if not isinstance(found, FastAPI):
        kind = "factory returned" if factory else "is"
        hint = "" if isinstance(found, Starlette) or factory else " (a factory needs --factory)"
        raise ConfigError(f"{reference} {kind} a {type(found).__name__}, not a FastAPI app{hint}")
    if lifespan_of(found) is None:
        raise ConfigError(
            f"{reference} does not load its models with loadonce: build it with "
            "FastAPI(lifespan=loadonce.lifespan(models, ...)), your own lifespan given as its "
            "wrap=your_lifespan (or entering a module-level loadonce.lifespan(...) by name)"
        )
    ignored = mounted_lifespans_ignored(found, running=lifespan_of(found))
    if ignored is not None:
        raise ConfigError(f"{reference}: {ignored}")
    return found


def is_app(reference: str) -> bool:
    """Whether ``reference`` names a web app (FastAPI's or any Starlette app, which
    ``load_app`` then refuses by name) rather than a model loader. A module that is not
    there at all is the command line's mistake, said now (it was a model's failed load)."""
    module = reference.split(":", 1)[0]
    try:
        return isinstance(import_object(reference), Starlette)
    except ModuleNotFoundError as exc:
        if exc.name is not None and (module == exc.name or module.startswith(exc.name + ".")):
            raise ConfigError(f"cannot import {reference}: no module named {exc.name!r}") from None
        return False  # a module it imports is missing: reported by the worker, as a loader's
    except Exception:  # the module's own import may raise anything
        return False  # reported by the worker, as the loader it then is


def specs_of(app: FastAPI, reference: str) -> list[ModelSpec]:
    """The models the app's lifespan declares. Each goes to the workers pickled, so a loader
    must be importable by name (a module-level function, not a lambda)."""
    found = lifespan_of(app)
    assert found is not None  # load_app checked it
    specs = found.specs
    for spec in specs:
        try:
            pickle.dumps(spec)
        except (pickle.PicklingError, AttributeError, TypeError) as exc:
            raise ConfigError(
                f"model '{spec.name}' of {reference} cannot be handed to worker processes: "
                f"its loader must be a module-level function or a 'pkg.module:function' "
                f"string ({exc})"
            ) from None
    return specs


def serve_user_app(
    app: FastAPI,
    *,
    registry: Registry,
    options: ServerOptions,
    on_loaded: LoadedHook | None,
    load_gate: LoadGate,
    control: ModelControl | None,
    metrics: bool = True,
    tracing: TracingOptions | None = None,
) -> FastAPI:
    """Prepare the user's app to run as one worker of ``loadonce serve`` (``metrics``: off
    only for the memory plan's measuring child). ``tracing``: the server's, which replaces
    the app's own when it is on."""
    found = lifespan_of(app)
    assert found is not None
    _configure(found, registry, options, on_loaded, load_gate, control)
    if tracing is not None and tracing.active:
        found.serve_with(tracing=tracing)
    found.serve_with(metrics=metrics)
    routers = [health_router(), admin_router()]
    if metrics:
        routers.append(metrics_router())
    _add_servers_routes(app, routers)
    allow_origins(app, options.cors_allow_origins)
    if not middleware_installed(app):
        install_middleware(app)
    return app


def _add_servers_routes(app: FastAPI, routers: list[APIRouter]) -> None:
    """The server's routes (probes, metrics, reload), ahead of the app's own: Starlette takes
    the first route that matches, and behind a catch-all of the app's (a single-page app's
    ``StaticFiles`` mounted at "/") /readyz and /metrics were 404s and a reload a 405, so
    Kubernetes' probes and ``loadonce reload`` failed without a word. A path the app serves
    itself stays the app's, said in the log."""
    own = {getattr(route, "path", None): route for route in walk_routes(list(app.routes))}
    for router in routers:
        for route in list(router.routes):
            path = getattr(route, "path", None)
            if path not in own:
                continue
            router.routes.remove(route)
            if not _same_endpoint(own[path], route):  # not loadonce's router, included
                logger.info("the app's own route %s is served there, not loadonce's", path)
    before = list(app.router.routes)
    for router in routers:
        app.include_router(router)
    added = app.router.routes[len(before) :]
    app.router.routes[:] = [*added, *before]


def _same_endpoint(one: object, other: object) -> bool:
    """Whether two routes run the same function (each router call makes its own)."""
    first, second = getattr(one, "endpoint", None), getattr(other, "endpoint", None)
    return (getattr(first, "__module__", None), getattr(first, "__qualname__", None)) == (
        getattr(second, "__module__", None),
        getattr(second, "__qualname__", None),
    )


def _configure(
    found: LoadonceLifespan,
    registry: Registry,
    options: ServerOptions,
    on_loaded: LoadedHook | None,
    load_gate: LoadGate,
    control: ModelControl | None,
) -> None:
    """The server's registry, control and gates; an option the operator set for the server
    (file, environment or command line) replaces the app's own, others stay the app's."""
    own = found.settings
    chosen = options.model_fields_set
    changes: dict[str, Any] = {
        "models": registry,
        "metrics": True,
        "on_loaded": _both(own.on_loaded, on_loaded),
        "load_gate": _nested(load_gate, own.load_gate),
    }
    if control is not None:
        changes["control"] = control
    if chosen & {"api_keys", "admin_api_keys", "protect_metrics"}:
        changes["access"] = options.access()
    if chosen & {"max_body_bytes", "max_element_bytes", "max_body_bytes_in_flight"} or (
        own.limits is None
    ):
        changes["limits"] = options.limits()
    if "allowed_hosts" in chosen:
        changes["allowed_hosts"] = tuple(options.allowed_hosts)
    if "gc_freeze" in chosen:
        changes["gc_freeze"] = options.gc_freeze
    if "drain_timeout_s" in chosen:
        changes["drain_timeout_s"] = options.drain_timeout_s
    found.serve_with(**changes)


def _both(first: LoadedHook | None, then: LoadedHook | None) -> LoadedHook | None:
    """The app's own hook, then the server's (the barrier: every worker loaded)."""
    if first is None or then is None:
        return first or then

    async def hooks(registry: Registry) -> None:
        await first(registry)
        await then(registry)

    return hooks


def _nested(outer: LoadGate, inner: LoadGate | None) -> LoadGate:
    if inner is None:
        return outer

    @asynccontextmanager
    async def gates() -> AsyncIterator[None]:
        async with outer(), inner():
            yield

    return gates
