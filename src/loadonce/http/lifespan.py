"""The lifespan that loads every model before the app serves, composed with the user's own.

``lifespan()`` returns a ``LoadonceLifespan``: the settings it was given, and the lifespan
itself (``__call__``). ``loadonce serve pkg.module:app`` finds it in a user's app
(``lifespan_of``) to read the model specs, and has each worker serve them with the server's
own control, gates and options (``serve_with``)."""

from __future__ import annotations

import inspect
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field, replace
from typing import Any

from starlette.applications import Starlette

from loadonce.core.control import ModelControl
from loadonce.core.declarations import check_model_specs
from loadonce.core.errors import ConfigError
from loadonce.core.limits import Limits
from loadonce.core.registry import Registry
from loadonce.core.spec import ModelSpec
from loadonce.http.access_keys import AccessKeys
from loadonce.http.allowed_hosts import check_allowed_hosts
from loadonce.http.dependencies import undeclared_model_dependencies
from loadonce.http.middleware import middleware_installed
from loadonce.http.mounted_apps import mounted_apps
from loadonce.http.state import LoadonceState
from loadonce.http.visible_logs import make_visible
from loadonce.tracing import TracingOptions, check_tracing, start_tracing

UserLifespan = Callable[[Any], AbstractAsyncContextManager[Mapping[str, Any] | None]]
LoadedHook = Callable[[Registry], Awaitable[None]]
# Entered around the loading of every model (``loadonce serve`` uses it to load one worker at
# a time).
LoadGate = Callable[[], AbstractAsyncContextManager[None]]


@dataclass(frozen=True)
class LifespanSettings:
    """What ``lifespan()`` was given (see there)."""

    models: Registry | tuple[ModelSpec, ...] | LoadonceState
    wrap: UserLifespan | None = None
    on_loaded: LoadedHook | None = None
    load_gate: LoadGate | None = None
    gc_freeze: bool = True
    drain_timeout_s: float | None = 30.0
    control: ModelControl | None = None
    metrics: bool = True
    limits: Limits | None = None
    access: AccessKeys | None = None
    allowed_hosts: tuple[str, ...] = field(default=())
    # TracingOptions, a user's own OpenTelemetry TracerProvider, or None (off).
    tracing: Any = None
    # Thaw and collect once the models unloaded at the app's stop (with gc_freeze): an app
    # stopped in a process that goes on frees its models. ``loadonce serve``'s worker exits
    # right after, and collecting would write to every page it shares with the fork server.
    collect_at_stop: bool = True


class LoadonceLifespan:
    """The lifespan ``lifespan()`` builds: call it with the app, as FastAPI does."""

    def __init__(self, settings: LifespanSettings) -> None:
        self.settings = settings
        # Built at the first startup, not before: importing an app must not start anything
        # (a server imports it in a process that only forks workers). One per app: a
        # lifespan made once at module level and given to two apps (an app factory called
        # twice, as tests do) gave both one registry, and the second's startup took the
        # first's models to another event loop.
        self._states: weakref.WeakKeyDictionary[Any, LoadonceState] = weakref.WeakKeyDictionary()
        # The apps whose startup ran and whose shutdown has not finished.
        self._serving: weakref.WeakSet[Any] = weakref.WeakSet()

    @property
    def specs(self) -> list[ModelSpec]:
        """The declared models, in order."""
        models = self.settings.models
        if isinstance(models, LoadonceState):
            models = models.registry
        if isinstance(models, Registry):
            return [model.spec for model in models.models]
        return list(models)

    def declared(self) -> list[str]:
        """What this lifespan was given that an app's startup acts on: its models, then the
        names of its other settings given."""
        settings = self.settings
        names = ", ".join(repr(spec.name) for spec in self.specs)
        return [
            *([f"models {names}"] if names else []),
            *(
                name
                for name, given in (
                    ("wrap", settings.wrap is not None),
                    ("on_loaded", settings.on_loaded is not None),
                    ("access", settings.access is not None and settings.access.enabled),
                    ("limits", settings.limits is not None),
                    ("allowed_hosts", bool(settings.allowed_hosts)),
                    ("tracing", settings.tracing is not None),
                )
                if given
            ),
        ]

    def serve_with(self, **changes: Any) -> None:
        """Replace some of the settings before the app starts (``loadonce serve`` gives each
        worker its registry, control, gates and the server's options this way)."""
        self.settings = replace(self.settings, **changes)
        self._states.clear()

    def state(self, app: Any) -> LoadonceState:
        """The state ``app`` serves from (made at its first startup)."""
        state = self._states.get(app)
        if state is None:
            settings = self.settings
            models = settings.models
            if isinstance(models, Registry | LoadonceState) and self._states:
                # One registry's models, loaded once, cannot serve two apps' loops.
                raise ConfigError(
                    "this lifespan serves another app already, with the registry it was "
                    "given: give each app its own lifespan (or model specs, from which each "
                    "app gets its own registry)"
                )
            state = self._states[app] = (
                models
                if isinstance(models, LoadonceState)
                else LoadonceState.build(
                    models,
                    control=settings.control,
                    metrics=settings.metrics,
                    limits=settings.limits,
                    access=settings.access,
                    allowed_hosts=settings.allowed_hosts,
                    # Here, in the worker that serves (after any fork): the exporter's thread
                    # starts with it.
                    tracing=start_tracing(settings.tracing),
                )
            )
        return state

    def __call__(self, app: Any) -> AbstractAsyncContextManager[Any]:
        # Any, not Mapping | None: FastAPI accepts a lifespan yielding either, and only Any
        # fits both.
        return self._run(app)

    @asynccontextmanager
    async def _run(self, app: Starlette) -> AsyncIterator[Mapping[str, Any] | None]:
        if app in self._serving:
            # Its models, loaded once, serve the event loop they were started on: a second
            # TestClient(app) entered while the first was open loaded nothing, and its stop
            # failed with asyncio's "attached to a different loop" (the first client's
            # models then unloaded under it).
            raise ConfigError(
                "this app is serving already (its lifespan is running, on another event "
                "loop: a second TestClient(app) entered while the first is open, or a second "
                "server given the same app): its models serve one event loop; use the client "
                "already open, or build a second app (an app factory) for another"
            )
        self._serving.add(app)
        try:
            async with self._serve(app) as user_state:
                yield user_state
        finally:
            self._serving.discard(app)

    @asynccontextmanager
    async def _serve(self, app: Starlette) -> AsyncIterator[Mapping[str, Any] | None]:
        settings = self.settings
        make_visible()
        state = self.state(app)
        registry = state.registry
        ignored = mounted_lifespans_ignored(app, running=self)
        if ignored is not None:
            raise registry.refuse_to_serve(ignored)
        state.put_on(app)
        for mounted in mounted_apps(app):
            # A mounted app's own lifespan never runs: its routes (a ModelDependency) serve
            # from this app's state, unless it holds one of its own.
            if LoadonceState.on(mounted.app) is None:
                state.put_on(mounted.app)
        undeclared = undeclared_model_dependencies(app, registry)
        if undeclared:
            raise registry.refuse_to_serve("; ".join(undeclared))
        unguarded = _settings_without_their_middleware(app, settings)
        if unguarded:
            # They act through install_middleware: without it, API keys and limits given
            # here were silently not applied (every route open, any body read).
            raise registry.refuse_to_serve(
                f"lifespan({', '.join(f'{name}=...' for name in unguarded)}) takes effect through "
                "loadonce.install_middleware(app), which this app does not have: call it "
                "after creating the app"
            )
        if settings.load_gate is None:
            await registry.load_all()
        else:
            async with settings.load_gate():
                await registry.load_all()
        try:
            if settings.on_loaded is not None:
                await settings.on_loaded(registry)
            if settings.wrap is None:
                if settings.gc_freeze:
                    registry.freeze_collector()
                yield None
            else:
                async with settings.wrap(app) as user_state:
                    if settings.gc_freeze:
                        registry.freeze_collector()
                    yield user_state
        finally:
            try:
                await registry.unload_all(timeout=settings.drain_timeout_s)
                if settings.gc_freeze and settings.collect_at_stop:
                    # The unloaded models were frozen with everything else: what they hold in
                    # reference cycles (most models hold some) was never freed, and each app
                    # started and stopped in one process (a test suite's TestClient, an app
                    # factory) kept its models' memory for good. Thawed, collected, and what
                    # is still alive (another app's models) frozen again.
                    registry.refreeze_collector()
            finally:
                if state.tracing is not None and not isinstance(settings.models, LoadonceState):
                    state.tracing.shutdown()


def mounted_lifespans_ignored(app: object, running: LoadonceLifespan | None = None) -> str | None:
    """Why ``app`` cannot serve as declared when an app mounted inside it has a loadonce
    lifespan of its own (not ``running``, the one starting ``app``), or None. Starlette never
    runs a mounted app's lifespan: its models were not served and its API keys, limits and
    allowed hosts not applied (its admin route open), without a word."""
    problems: list[str] = []
    prefix = "/sub"
    for mounted in mounted_apps(app):
        found = lifespan_of(mounted.app)
        declared = [] if found is None or found is running else found.declared()
        if declared:
            prefix = mounted.where if not problems and mounted.where.startswith("/") else prefix
            problems.append(
                f"the app mounted at {mounted.where} has a loadonce.lifespan of its own "
                f"({'; '.join(declared)}), which never runs"
            )
    if not problems:
        return None
    return (
        f"{'; '.join(problems)}: Starlette runs the lifespan of the outer app only. Declare "
        "those models and settings in the outer app's loadonce.lifespan(...), and include "
        "loadonce's routers in it (app.include_router(loadonce.models_router(), "
        f'prefix="{prefix}")) instead of mounting an app that has a lifespan of its own'
    )


def _settings_without_their_middleware(app: Any, settings: LifespanSettings) -> list[str]:
    """The security settings given to the lifespan that only loadonce's middlewares apply,
    when the app has none of them."""
    given = [
        name
        for name, value in (
            ("access", settings.access is not None and settings.access.enabled),
            ("limits", settings.limits is not None),
            ("allowed_hosts", bool(settings.allowed_hosts)),
        )
        if value
    ]
    return [] if middleware_installed(app) else given


def lifespan(
    models: Registry | Iterable[ModelSpec] | LoadonceState,
    *,
    wrap: UserLifespan | None = None,
    on_loaded: LoadedHook | None = None,
    load_gate: LoadGate | None = None,
    gc_freeze: bool = True,
    drain_timeout_s: float | None = 30.0,
    control: ModelControl | None = None,
    metrics: bool = True,
    limits: Limits | None = None,
    access: AccessKeys | None = None,
    allowed_hosts: Iterable[str] = (),
    tracing: TracingOptions | object | None = None,
) -> LoadonceLifespan:
    """Build a lifespan for ``FastAPI(lifespan=...)`` that loads ``models`` at startup:
    model specs, a ``Registry``, or a ``LoadonceState`` already built (``create_app`` builds
    one; ``control`` to ``allowed_hosts`` are then its own).

    Order: every model loads (in declaration order) and warms up; then ``on_loaded`` runs; then
    the user's own lifespan ``wrap`` is entered, so it can already use the models; the app
    serves. At shutdown ``wrap`` exits first, then the models unload in reverse order.
    A model that fails to load raises ``ModelLoadError`` and the app never serves.
    ``gc_freeze``: once all of that is done, leave every object alive then (the models, the
    libraries, what ``wrap`` built) out of garbage collection (``core/collector.py``).
    ``drain_timeout_s``: at shutdown, the most each model waits for its queued and running
    requests (a hung call never holds shutdown up); None waits for all of them.

    It puts one ``LoadonceState`` on ``app.state`` (read with ``LoadonceState.of``), which
    holds what the routes and middlewares use: ``control`` (how load, unload and reload reach
    every worker; default: this process), ``metrics`` (keep Prometheus metrics, served by
    ``metrics_router``), ``limits`` (request size limits), ``access`` (API keys per route
    family; none: every route open) and ``allowed_hosts`` (see ``create_app``). The last
    three act through ``install_middleware``. ``tracing``: OpenTelemetry tracing (the
    ``otel`` extra), from ``loadonce.TracingOptions`` (its unset options read from the
    ``OTEL_*`` variables) or your own ``TracerProvider``; None: off (docs/tracing.md).
    """
    if not isinstance(models, Registry | LoadonceState):
        models = tuple(check_model_specs(models))  # a mistake is reported now, not at startup
    if isinstance(tracing, TracingOptions):
        check_tracing(tracing)  # tracing asked for without the otel extra: refused now
    return LoadonceLifespan(
        LifespanSettings(
            models=models,
            wrap=_user_lifespan(wrap),
            on_loaded=on_loaded,
            load_gate=load_gate,
            gc_freeze=gc_freeze,
            drain_timeout_s=drain_timeout_s,
            control=control,
            metrics=metrics,
            limits=limits,
            access=access,
            allowed_hosts=check_allowed_hosts(allowed_hosts),
            tracing=tracing,
        )
    )


def _user_lifespan(wrap: Any) -> UserLifespan | None:
    """``wrap`` as an async context manager function, or a ConfigError now: a lifespan of a
    form ``async with`` cannot enter failed at startup, after every model had loaded (minutes,
    for a large one), with Python's "does not support the asynchronous context manager
    protocol"."""
    if wrap is None:
        return None
    name = getattr(wrap, "__qualname__", None) or repr(wrap)
    shape = "an async context manager: @asynccontextmanager async def lifespan(app): ... yield ..."
    if not callable(wrap):
        raise ConfigError(f"wrap={name} is not callable: give your lifespan, {shape}")
    if inspect.isasyncgenfunction(wrap):
        # ``async def lifespan(app): ... yield``, undecorated: a form FastAPI takes too.
        return asynccontextmanager(wrap)
    if inspect.isgeneratorfunction(inspect.unwrap(wrap)):
        raise ConfigError(
            f"wrap={name} is synchronous (a def with yield, or @contextmanager): loadonce "
            f"enters your lifespan on the event loop, so it must be {shape}"
        )
    if inspect.iscoroutinefunction(wrap):
        raise ConfigError(
            f"wrap={name} is an async function that does not yield: a lifespan yields once, "
            f"between its startup and its shutdown; make it {shape}"
        )
    return wrap  # type: ignore[no-any-return]


def lifespan_of(app: object) -> LoadonceLifespan | None:
    """The ``LoadonceLifespan`` an app runs, if any: FastAPI wraps an app's lifespan when a
    router is included (each wrapper holds the one before in its closure), so the wrappers are
    walked down to it."""
    router = getattr(app, "router", None)
    return _find_lifespan(getattr(router, "lifespan_context", None), depth=0)


def _find_lifespan(candidate: object, depth: int) -> LoadonceLifespan | None:
    if isinstance(candidate, LoadonceLifespan):
        return candidate
    if depth > 32 or candidate is None:
        return None
    inner = getattr(candidate, "__wrapped__", None)
    if inner is not None and (found := _find_lifespan(inner, depth + 1)) is not None:
        return found
    for cell in getattr(candidate, "__closure__", None) or ():
        try:
            content = cell.cell_contents
        except ValueError:  # an empty cell
            continue
        if callable(content) and (found := _find_lifespan(content, depth + 1)) is not None:
            return found
    return _entered_by_name(candidate)


def _entered_by_name(function: object) -> LoadonceLifespan | None:
    """A module-level ``loadonce.lifespan(...)`` that a lifespan of the user's enters by its
    name (``async with models_lifespan(app): ...``, to do work before the models load): it is
    in the function's globals, not its closure. ``loadonce serve`` said such an app did not
    load its models with loadonce."""
    code = getattr(function, "__code__", None)
    names = getattr(function, "__globals__", None)
    if code is None or not isinstance(names, dict):
        return None
    for name in code.co_names:
        found = names.get(name)
        if isinstance(found, LoadonceLifespan):
            return found
    return None
