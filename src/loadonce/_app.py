"""create_app: a ready-made FastAPI app with the lifespan and every loadonce route."""

from __future__ import annotations

from collections.abc import Iterable

from fastapi import FastAPI

from loadonce._admin import admin_router
from loadonce._browser_guard import BrowserGuardMiddleware
from loadonce._control import STATE_KEY as CONTROL_KEY
from loadonce._control import LocalControl, ModelControl
from loadonce._fast_path import InferenceFastPath
from loadonce._health import health_router
from loadonce._lifespan import LoadedHook, LoadGate, UserLifespan, lifespan
from loadonce._limits import BodyLimitMiddleware, Limits
from loadonce._metrics import STATE_KEY as METRICS_KEY
from loadonce._metrics import Metrics, metrics_router
from loadonce._registry import Registry
from loadonce._request_log import RequestLogMiddleware
from loadonce._security import AccessKeys, AccessMiddleware
from loadonce._shedding import QueueFullRefusalMiddleware
from loadonce._spec import ModelSpec
from loadonce._version import __version__
from loadonce.protocols.rest import models_router
from loadonce.protocols.v2 import v2_router


def create_app(
    models: Registry | Iterable[ModelSpec],
    *,
    title: str = "loadonce",
    wrap: UserLifespan | None = None,
    on_loaded: LoadedHook | None = None,
    load_gate: LoadGate | None = None,
    model_control: bool = True,
    access: AccessKeys | None = None,
    limits: Limits | None = None,
    metrics: bool = True,
    control: ModelControl | None = None,
    gc_freeze: bool = True,
    drain_timeout_s: float | None = 30.0,
    allowed_hosts: Iterable[str] = (),
) -> FastAPI:
    """The app ``loadonce serve`` runs: health probes, /models and predict routes, the Open
    Inference Protocol under /v2, /docs. ``model_control``: see ``v2_router``. ``access``:
    API keys per route family (none: every route open). ``limits``: request size limits.
    ``control``: how load, unload and reload reach every worker (default: this process).
    ``gc_freeze``: once started, leave the loaded models out of garbage collection (see
    ``lifespan``). ``drain_timeout_s``: see ``lifespan``.
    ``allowed_hosts``: Host names a server bound to a loopback address answers to besides
    loopback names (``*.example.com``, or ``*`` for any): a proxy on the same machine that
    passes on its own Host."""
    limits = limits or Limits()
    registry = models if isinstance(models, Registry) else Registry(models)
    app = FastAPI(
        title=title,
        version=__version__,
        lifespan=lifespan(
            registry,
            wrap=wrap,
            on_loaded=on_loaded,
            load_gate=load_gate,
            gc_freeze=gc_freeze,
            drain_timeout_s=drain_timeout_s,
        ),
    )
    # Routes are matched in order: the inference routers first, they are the hot path.
    app.include_router(models_router())
    app.include_router(v2_router(model_control=model_control, limits=limits))
    app.include_router(health_router())
    setattr(app.state, CONTROL_KEY, control or LocalControl(registry))
    app.include_router(admin_router())
    collected: Metrics | None = None
    if metrics:
        collected = Metrics()
        setattr(app.state, METRICS_KEY, collected)
        registry.observe(collected)
        app.include_router(metrics_router(collected))
    # Innermost: the inference routes answered before FastAPI's routing, inside the body
    # limit, the queue check, the key check and the request log.
    app.add_middleware(InferenceFastPath, registry=registry, metrics=collected, limits=limits)
    if limits.max_body_bytes is not None:
        app.add_middleware(BodyLimitMiddleware, max_body_bytes=limits.max_body_bytes)
    # Inside the key check (an unauthenticated client learns nothing of the queues).
    app.add_middleware(QueueFullRefusalMiddleware, registry=registry, metrics=collected)
    if access is not None and access.enabled:
        # Outside the body limit: a request without a valid key is refused before its body
        # is read.
        app.add_middleware(AccessMiddleware, keys=access)
    # Before the key check: a page of another site is refused whatever key its browser has.
    app.add_middleware(BrowserGuardMiddleware, allowed_hosts=tuple(allowed_hosts))
    # Added last, so outermost: every request gets its id and its log line, refusals too.
    app.add_middleware(RequestLogMiddleware)
    return app
