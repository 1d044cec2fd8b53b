"""The one object loadonce keeps on ``app.state``: made by ``lifespan()``, read through
``LoadonceState.of`` by every route, dependency and middleware, in ``create_app``'s app and in
a user's own app alike."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from starlette.requests import HTTPConnection
from starlette.types import Scope

from loadonce.core.body_budget import BodyBudget
from loadonce.core.control import LocalControl, ModelControl
from loadonce.core.errors import LoadonceError
from loadonce.core.limits import Limits
from loadonce.core.registry import Registry
from loadonce.core.spec import ModelSpec
from loadonce.http.access_keys import AccessKeys
from loadonce.http.allowed_hosts import check_allowed_hosts
from loadonce.http.metrics import Metrics

if TYPE_CHECKING:
    from loadonce.tracing.otel import Tracing

# The attribute of ``app.state`` that holds it.
STATE_KEY = "loadonce"
# Where a request's scope keeps it once looked up.
_SCOPE_KEY = "loadonce.state"


@dataclass(frozen=True)
class LoadonceState:
    """Everything loadonce's routes and middlewares need, in one place.

    ``registry``: the models. ``control``: how load, unload and reload reach every worker
    (default: this process). ``metrics``: the Prometheus metrics the models report to (None:
    none kept). ``limits``: request size limits. ``access``: API keys per route family (None:
    every route open). ``allowed_hosts``: names a request arriving on a loopback address may
    carry as its Host besides loopback names (http/browser_guard.py). ``tracing``: the
    worker's OpenTelemetry tracing (None: off). ``body_budget``: the bytes of request bodies
    held now, within ``limits.max_body_bytes_in_flight`` (HTTP's and gRPC's together).
    """

    registry: Registry
    control: ModelControl
    metrics: Metrics | None = None
    limits: Limits = field(default_factory=Limits)
    access: AccessKeys | None = None
    allowed_hosts: tuple[str, ...] = ()
    tracing: Tracing | None = None
    body_budget: BodyBudget = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "body_budget", BodyBudget(self.limits.max_body_bytes_in_flight))

    @classmethod
    def build(
        cls,
        models: Registry | Iterable[ModelSpec],
        *,
        control: ModelControl | None = None,
        metrics: bool = True,
        limits: Limits | None = None,
        access: AccessKeys | None = None,
        allowed_hosts: Iterable[str] = (),
        tracing: Tracing | None = None,
    ) -> LoadonceState:
        registry = models if isinstance(models, Registry) else Registry(models)
        collected = None
        if metrics:
            collected = Metrics()
            registry.observe(collected)
        if tracing is not None:
            registry.trace(tracing)
        return cls(
            registry=registry,
            control=control or LocalControl(registry),
            metrics=collected,
            limits=limits or Limits(),
            access=access if access is not None and access.enabled else None,
            allowed_hosts=check_allowed_hosts(allowed_hosts),
            tracing=tracing,
        )

    @staticmethod
    def of(connection: HTTPConnection) -> LoadonceState:
        """The state of the request's app; an error that says what to do if there is none."""
        state = LoadonceState.in_scope(connection.scope)
        if state is None:
            raise LoadonceError(_why_no_state(connection.scope))
        return state

    @staticmethod
    def in_scope(scope: Scope) -> LoadonceState | None:
        """The state of the app serving ``scope``, None before the lifespan put it there
        (middlewares then let the request through to the app, which has nothing to serve)."""
        # Looked up once per request and app (every middleware and the route ask; an app
        # mounted inside another has its own).
        app = scope.get("app")
        cached = scope.get(_SCOPE_KEY)
        if cached is not None and cached[0] is app:
            state: LoadonceState | None = cached[1]
            return state
        state = LoadonceState.on(app)
        scope[_SCOPE_KEY] = (app, state)
        return state

    @staticmethod
    def on(app: object) -> LoadonceState | None:
        """The state on ``app.state``, if the lifespan put one there."""
        state = getattr(getattr(app, "state", None), STATE_KEY, None)
        return state if isinstance(state, LoadonceState) else None

    def put_on(self, app: object) -> None:
        setattr(app.state, STATE_KEY, self)  # type: ignore[attr-defined]


def _why_no_state(scope: Scope) -> str:
    """What to do when the app serving ``scope`` has no state. Starlette's outermost router
    names itself in the scope (``scope["router"]``), and a mounted app's keeps it: an app
    mounted in another never runs its own lifespan, however it was given one (``create_app``
    gives it one), and telling its user to pass one said to do what they had done."""
    app = scope.get("app")
    outermost = scope.get("router")
    if outermost is not None and outermost is not getattr(app, "router", outermost):
        return (
            "no loadonce state: this app is mounted inside another (app.mount), and Starlette "
            "runs the lifespan of the outer app only, never a mounted app's: give the outer app "
            "the lifespan, FastAPI(lifespan=loadonce.lifespan(...)) or the mounted app's own "
            "(lifespan=mounted_app.router.lifespan_context), and loadonce.install_middleware("
            "app) on it; in tests, use TestClient as a context manager so the lifespan runs"
        )
    from loadonce.http.lifespan import lifespan_of  # only on this error's path

    if lifespan_of(app) is not None:
        # The app has the lifespan: telling its user to pass one said to do what they had done.
        return (
            "no loadonce state on app.state: the app's loadonce.lifespan(...) has not run, so "
            "no model is loaded. The server must run the app's lifespan (not uvicorn "
            "--lifespan off); in tests, enter the client as a context manager (with "
            "TestClient(app) as client: ...), and around httpx.ASGITransport, which runs no "
            "lifespan, enter it yourself (async with app.router.lifespan_context(app): ...)"
        )
    return (
        "no loadonce state on app.state: pass lifespan=loadonce.lifespan(...) to FastAPI, and "
        "in tests use TestClient as a context manager so the lifespan runs"
    )
