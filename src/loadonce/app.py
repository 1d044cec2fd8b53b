"""create_app: a ready-made FastAPI app with the lifespan and every loadonce route. It is built
from the public pieces only, exactly as a user's own app can be (docs/library.md)."""

from __future__ import annotations

import inspect
from collections.abc import Iterable
from typing import Any

from fastapi import FastAPI

from loadonce._version import __version__
from loadonce.core.control import ModelControl
from loadonce.core.limits import Limits
from loadonce.core.registry import Registry
from loadonce.core.spec import ModelSpec
from loadonce.http.access_keys import AccessKeys
from loadonce.http.admin import admin_router
from loadonce.http.cors_origins import allow_origins
from loadonce.http.docs import docs_router
from loadonce.http.errors import answer_not_found, answer_wrong_method
from loadonce.http.health import health_router
from loadonce.http.lifespan import LoadedHook, LoadGate, UserLifespan, lifespan
from loadonce.http.metrics_route import metrics_router
from loadonce.http.middleware import install_middleware
from loadonce.protocols.json import models_router
from loadonce.protocols.openai import openai_router
from loadonce.protocols.v2 import v2_router
from loadonce.tracing import TracingOptions

# FastAPI's own OpenTelemetry instrumentation (FastAPI 0.165 and later) stays off in loadonce's
# app: loadonce traces each request itself (loadonce.tracing), so a globally set tracer
# provider would see every request twice, and its check of the global providers cost 3% of
# the forest's batched throughput on every request even with nothing configured (measured:
# docs/benchmarks.md, "What tracing costs").
_NO_FASTAPI_TELEMETRY: dict[str, Any] = (
    {"telemetry": {"tracing": False, "metrics": False, "logs": False}}
    if "telemetry" in inspect.signature(FastAPI.__init__).parameters
    else {}
)


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
    tracing: TracingOptions | object | None = None,
    cors_allow_origins: Iterable[str] = (),
) -> FastAPI:
    """The app ``loadonce serve`` runs: health probes, /models and predict routes, the Open
    Inference Protocol under /v2, OpenAI's API under /v1 (models that generate or embed text),
    /docs. ``model_control``: see ``v2_router``. ``access``:
    API keys per route family (none: every route open). ``limits``: request size limits.
    ``control``: how load, unload and reload reach every worker (default: this process).
    ``gc_freeze``: once started, leave the loaded models out of garbage collection (see
    ``lifespan``). ``drain_timeout_s``: see ``lifespan``.
    ``allowed_hosts``: Host names a request arriving on a loopback address (the server bound
    to it, or to 0.0.0.0 and reached through it) may carry besides loopback names
    (``*.example.com``, or ``*`` for any): a proxy on the same machine that passes on its
    own Host. ``tracing``: OpenTelemetry tracing (see ``lifespan``). ``cors_allow_origins``:
    the origins of web pages that may call the routes from a browser (``https://app.example
    .com``, ``http://localhost:3000``, ``*`` for any): the answers carry CORS headers for
    them and preflights are answered; a page of any other origin is refused by the
    inference routes, as by the control routes (``http/browser_guard.py``)."""
    app = FastAPI(
        title=title,
        version=__version__,
        # /docs is served with Swagger UI's files from the app (http/docs.py), not a CDN's;
        # ReDoc has no such package, and a page that is blank offline is left out.
        docs_url=None,
        redoc_url=None,
        **_NO_FASTAPI_TELEMETRY,
        lifespan=lifespan(
            models,
            wrap=wrap,
            on_loaded=on_loaded,
            load_gate=load_gate,
            gc_freeze=gc_freeze,
            drain_timeout_s=drain_timeout_s,
            control=control,
            metrics=metrics,
            limits=limits,
            access=access,
            allowed_hosts=allowed_hosts,
            tracing=tracing,
        ),
    )
    # Routes are matched in order: the inference routers first, they are the hot path.
    app.include_router(models_router())
    app.include_router(v2_router(model_control=model_control))
    app.include_router(openai_router())
    app.include_router(health_router())
    app.include_router(admin_router())
    if metrics:
        app.include_router(metrics_router())
    app.include_router(docs_router(app))
    # A path no route has, a method a route of FastAPI's own refuses: {"error"} as every
    # other loadonce answer, not {"detail"}.
    app.router.default = answer_not_found
    app.add_exception_handler(405, answer_wrong_method)
    allow_origins(app, cors_allow_origins)  # checked before the models load
    install_middleware(app)
    return app
