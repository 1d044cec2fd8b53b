"""The lifespan that loads every model before the app serves, composed with the user's own."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

from starlette.applications import Starlette

from loadonce.core.control import ModelControl
from loadonce.core.limits import Limits
from loadonce.core.registry import Registry
from loadonce.core.spec import ModelSpec
from loadonce.http.access_keys import AccessKeys
from loadonce.http.state import LoadonceState

UserLifespan = Callable[[Any], AbstractAsyncContextManager[Mapping[str, Any] | None]]
LoadedHook = Callable[[Registry], Awaitable[None]]
# Entered around the loading of every model (``loadonce serve`` uses it to load one worker at
# a time).
LoadGate = Callable[[], AbstractAsyncContextManager[None]]
# Any, not Mapping | None: FastAPI accepts a lifespan yielding either, and only Any fits both.
Lifespan = Callable[[Any], AbstractAsyncContextManager[Any]]


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
) -> Lifespan:
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
    three act through ``install_middleware``.
    """
    state = (
        models
        if isinstance(models, LoadonceState)
        else LoadonceState.build(
            models,
            control=control,
            metrics=metrics,
            limits=limits,
            access=access,
            allowed_hosts=allowed_hosts,
        )
    )
    registry = state.registry

    @asynccontextmanager
    async def _lifespan(app: Starlette) -> AsyncIterator[Mapping[str, Any] | None]:
        state.put_on(app)
        if load_gate is None:
            await registry.load_all()
        else:
            async with load_gate():
                await registry.load_all()
        try:
            if on_loaded is not None:
                await on_loaded(registry)
            if wrap is None:
                if gc_freeze:
                    registry.freeze_collector()
                yield None
            else:
                async with wrap(app) as user_state:
                    if gc_freeze:
                        registry.freeze_collector()
                    yield user_state
        finally:
            await registry.unload_all(timeout=drain_timeout_s)

    return _lifespan
