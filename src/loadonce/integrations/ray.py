"""Ray Serve: the same models, config, routes and behaviour, on as many machines as Ray has.

Each Serve replica is one process that builds the loadonce app and lets Ray run its lifespan,
so it loads every model once, in the replica, before Ray routes it a request (Ray runs an
ingress app's startup during the replica's initialization). The app is built inside the
replica (``__serve_build_asgi_app__``), never pickled from the driver: loaded models and
locks do not travel. The registry stays on ``app.state``, where Ray's requests find it (Ray
does not pass lifespan-yielded state on to requests).

Batching is loadonce's own, per replica, not Ray's ``@serve.batch``: the same bounded queue
(503), deadlines (504), error isolation and Open Inference Protocol path as ``loadonce serve``,
with one config; ``@serve.batch`` would batch calls of a Python method, below the HTTP codecs,
and has none of those. ``max_ongoing_requests`` is raised from Ray's default of 5 so that
requests reach the batcher instead of waiting in Ray's router.

Reloading through the admin route or the model repository would reach one replica only;
under Ray it is a redeploy (``serve deploy`` with a changed config), which Ray rolls out
replica by replica: those routes answer 501 saying so.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from fastapi import FastAPI

from loadonce.app import create_app
from loadonce.core.control import ControlRequest, WorkerOutcome
from loadonce.core.errors import ConfigError, NotAvailableHereError
from loadonce.core.imports import import_object, import_optional, importable_from
from loadonce.core.registry import Registry
from loadonce.http.state import LoadonceState
from loadonce.server.resolve import resolve_serve_config
from loadonce.server.settings import RayOptions, ServeConfig

# ServeConfig and RayOptions: the public types application() and deployment_options() take.
__all__ = [
    "RayOptions",
    "ServeConfig",
    "application",
    "application_from_app",
    "build",
    "deployment_options",
]

serve: Any = import_optional("ray.serve", extra="ray")

DEPLOYMENT_NAME = "loadonce"


class RedeployToChange:
    """The model control of a replica: refuses, and says how to change models under Ray."""

    async def apply(self, request: ControlRequest) -> list[WorkerOutcome]:
        raise NotAvailableHereError(
            f"under Ray Serve a {request.action} would reach one replica only; change the "
            "config and redeploy (loadonce ray-config, then serve deploy): Ray replaces the "
            "replicas one at a time"
        )


class _Replica:
    """One replica: builds its app in the replica; Ray runs the app's lifespan, which loads
    every model once; Ray's health check asks the models' readiness."""

    def __init__(self, build_app: Callable[[], FastAPI]) -> None:
        self._build_app = build_app
        self._app: FastAPI | None = None

    def __serve_build_asgi_app__(self) -> FastAPI:
        self._app = self._build_app()
        return self._app

    async def _run_asgi_lifespan_startup(self) -> None:
        """Ray's own (it runs the lifespan that loads the models), with the failed model's
        one line as the error instead of "ASGI lifespan startup failed": Ray shows a failed
        replica's error to whoever deployed. (Overrides a method of Ray's ASGI wrapper; were
        Ray to rename it, only this message would be lost.)"""
        try:
            await super()._run_asgi_lifespan_startup()  # type: ignore[misc]
        except RuntimeError:
            registry = self._registry()
            if registry is not None and registry.failure is not None:
                raise RuntimeError(str(registry.failure)) from None
            raise

    def _registry(self) -> Registry | None:
        state = LoadonceState.on(self._app)
        return None if state is None else state.registry

    def check_health(self) -> None:
        """Raise (Ray then replaces the replica) unless every model is ready here."""
        registry = self._registry()
        if registry is None:
            raise RuntimeError(
                "no loadonce state on app.state: build the app with loadonce.create_app "
                "or loadonce.lifespan"
            )
        if not registry.is_ready and not registry.draining:
            states = ", ".join(f"{name}: {state}" for name, state in registry.states().items())
            raise RuntimeError(f"not every model is ready in this replica ({states})")


# The Serve deployment: the class wrapped by Ray (its app supplied late, in the replica).
LoadonceReplica: Any = serve.deployment(name=DEPLOYMENT_NAME)(serve.ingress()(_Replica))


def deployment_options(options: RayOptions, *, drain_timeout_s: float) -> dict[str, Any]:
    """Ray Serve's deployment options from the ``[ray]`` table (and the drain timeout)."""
    found: dict[str, Any] = {
        "num_replicas": options.num_replicas,
        "max_ongoing_requests": options.max_ongoing_requests,
        "max_queued_requests": options.max_queued_requests,
        "max_constructor_retry_count": options.max_constructor_retry_count,
        "health_check_period_s": options.health_check_period_s,
        "health_check_timeout_s": options.health_check_timeout_s,
        # Ray waits this long for a stopping replica's requests, as loadonce's drain does.
        "graceful_shutdown_timeout_s": drain_timeout_s,
    }
    if options.ray_actor_options:
        found["ray_actor_options"] = dict(options.ray_actor_options)
    if options.autoscaling_config is not None:
        found["autoscaling_config"] = dict(options.autoscaling_config)
    return found


def _app_from_config(config: ServeConfig) -> FastAPI:
    """What a ``loadonce serve`` worker runs, less what Ray does itself (the socket, signals,
    rolling model control across processes). A replica does not start with the driver's
    sys.path: a loader module beside the config file is made importable here too."""
    if config.code_directory is not None:
        importable_from(Path(config.code_directory))
    options = config.server
    return create_app(
        Registry(
            config.models,
            unloaded=config.unloaded,
            artifact_roots=config.server.artifact_roots,
            max_artifact_bytes=config.server.max_artifact_bytes or None,
        ),
        access=options.access(),
        limits=options.limits(),
        gc_freeze=options.gc_freeze,
        # As a worker of loadonce serve has them (allowed_hosts was left out: a proxy's Host
        # served without Ray was refused 403 on Ray).
        allowed_hosts=options.allowed_hosts,
        cors_allow_origins=options.cors_allow_origins,
        drain_timeout_s=options.drain_timeout_s,
        tracing=config.tracing,
        model_control=False,
        control=RedeployToChange(),
    )


def application(config: ServeConfig) -> Any:
    """The Serve application of a loadonce config: ``serve.run(application(config))``."""
    options = deployment_options(config.ray, drain_timeout_s=config.server.drain_timeout_s)
    return LoadonceReplica.options(**options).bind(functools.partial(_app_from_config, config))


def _import_app(reference: str) -> FastAPI:
    """Import ``package.module:app`` (an app) or ``package.module:factory`` (called)."""
    found = import_object(reference)
    app = found if isinstance(found, FastAPI) else found()
    if not isinstance(app, FastAPI):
        raise TypeError(f"{reference} is not a FastAPI app or a function returning one")
    return app


def application_from_app(
    app: str | Callable[[], FastAPI],
    options: RayOptions | None = None,
    *,
    drain_timeout_s: float = 30,
) -> Any:
    """The Serve application of your own FastAPI app (library mode, with loadonce's lifespan):
    ``app`` is a function that builds it, or ``"package.module:app"``; either runs in each
    replica, so that the models load there, once."""
    build_app = functools.partial(_import_app, app) if isinstance(app, str) else app
    found = deployment_options(options or RayOptions(), drain_timeout_s=drain_timeout_s)
    return LoadonceReplica.options(**found).bind(build_app)


def build(args: Mapping[str, Any]) -> Any:
    """The application builder a Serve config file names (``loadonce ray-config`` writes it):
    ``args`` holds ``config`` (a TOML file's path, as the cluster sees it) or ``demo: true``,
    and ``trust``. LOADONCE_* variables of the cluster's environment apply as for serve."""
    unknown = sorted(set(args) - {"config", "demo", "trust"})
    if unknown:
        raise ConfigError(f"unknown argument(s) {', '.join(unknown)}; expected config, demo, trust")
    target = args.get("config")
    config = resolve_serve_config(
        None if target is None else str(Path(str(target))),
        demo=bool(args.get("demo", False)),
        trust=bool(args.get("trust", False)),
        overrides={},
    )
    return application(config)
