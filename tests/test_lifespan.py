"""Library mode: the lifespan loads each model once, before any request, and unloads it."""

from __future__ import annotations

import asyncio
import re
import threading
import types
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Annotated, Any

import pytest
from fastapi import APIRouter, Depends, FastAPI, WebSocket
from fastapi.testclient import TestClient
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.middleware.gzip import GZipMiddleware
from starlette.requests import Request
from starlette.routing import Mount

import loadonce


class CountingLoader:
    """A loader that counts its calls and notes whether a request was in progress."""

    def __init__(self) -> None:
        self.calls = 0
        self.calls_during_requests = 0
        self.requests_in_progress = 0
        self._lock = threading.Lock()

    def __call__(self) -> Any:
        with self._lock:
            self.calls += 1
            if self.requests_in_progress:
                self.calls_during_requests += 1
        return lambda batch: [sum(example) for example in batch]


def test_loader_runs_once_per_process_across_100_requests() -> None:
    loader = CountingLoader()
    app = loadonce.create_app([loadonce.ModelSpec(name="adder", loader=loader)])

    @app.middleware("http")
    async def track_requests(request: Any, call_next: Any) -> Any:
        loader.requests_in_progress += 1
        try:
            return await call_next(request)
        finally:
            loader.requests_in_progress -= 1

    assert loader.calls == 0, "nothing may load at import or app creation"
    with TestClient(app) as client:
        assert loader.calls == 1, "the lifespan loads before the first request"
        for i in range(100):
            response = client.post("/models/adder/predict", json={"inputs": [[i, 1], [i, 2]]})
            assert response.status_code == 200
            assert response.json()["outputs"] == [i + 1, i + 2]
    assert loader.calls == 1
    assert loader.calls_during_requests == 0


def test_registry_lives_on_app_state_not_in_a_global() -> None:
    first = loadonce.create_app([loadonce.ModelSpec(name="a", loader=lambda: lambda b: b)])
    second = loadonce.create_app([loadonce.ModelSpec(name="b", loader=lambda: lambda b: b)])
    with TestClient(first) as one, TestClient(second) as two:
        assert [m["name"] for m in one.get("/models").json()["models"]] == ["a"]
        assert [m["name"] for m in two.get("/models").json()["models"]] == ["b"]
        assert isinstance(first.state.loadonce, loadonce.LoadonceState)
        assert [m.name for m in first.state.loadonce.registry.models] == ["a"]
        assert first.state.loadonce is not second.state.loadonce


def test_models_unload_in_reverse_order_and_compose_with_the_users_lifespan() -> None:
    events: list[str] = []

    class Closable:
        def __init__(self, name: str) -> None:
            self.name = name
            events.append(f"load {name}")

        def predict(self, batch: list[Any]) -> list[Any]:
            return batch

        def close(self) -> None:
            events.append(f"close {self.name}")

    @asynccontextmanager
    async def user_lifespan(app: FastAPI) -> AsyncIterator[None]:
        # The user's lifespan starts after the models loaded, so it may already use them.
        registry: loadonce.Registry = app.state.loadonce.registry
        events.append(f"user start, ready={registry.is_ready}")
        yield
        events.append("user stop")

    specs = [
        loadonce.ModelSpec(name="first", loader=lambda: Closable("first")),
        loadonce.ModelSpec(name="second", loader=lambda: Closable("second")),
    ]
    app = FastAPI(lifespan=loadonce.lifespan(specs, wrap=user_lifespan))
    app.include_router(loadonce.health_router())
    with TestClient(app) as client:
        assert client.get("/readyz").status_code == 200
    assert events == [
        "load first",
        "load second",
        "user start, ready=True",
        "user stop",
        "close second",
        "close first",
    ]


async def _undecorated(app: FastAPI) -> AsyncIterator[dict[str, str]]:
    yield {"greeting": "hello"}


# Undecorated (an async generator function, which FastAPI takes too): it failed at startup,
# after the models had loaded, as no async context manager.
@pytest.mark.parametrize("user_lifespan", [asynccontextmanager(_undecorated), _undecorated])
def test_user_lifespan_state_still_reaches_requests(user_lifespan: Any) -> None:
    app = FastAPI(
        lifespan=loadonce.lifespan(
            [loadonce.ModelSpec(name="m", loader=lambda: lambda b: b)], wrap=user_lifespan
        )
    )

    @app.get("/greet")
    async def greet(request: Request) -> str:
        return str(request.state.greeting)

    with TestClient(app) as client:
        assert client.get("/greet").json() == "hello"


@contextmanager
def _synchronous_context_manager(app: FastAPI) -> Iterator[None]:
    yield


def _synchronous_generator(app: FastAPI) -> Iterator[None]:
    yield


async def _returns_instead_of_yielding(app: FastAPI) -> None:
    return None


@pytest.mark.parametrize(
    ("wrap", "said"),
    [
        (_synchronous_context_manager, "is synchronous"),
        (_synchronous_generator, "is synchronous"),
        (_returns_instead_of_yielding, "is an async function that does not yield"),
        ("my_service:lifespan", "is not callable"),
    ],
)
@pytest.mark.parametrize("entry", ["lifespan", "create_app"])
def test_a_user_lifespan_async_with_cannot_enter_is_refused_before_any_model_loads(
    wrap: Any, said: str, entry: str
) -> None:
    """It failed at startup, after every model had loaded (minutes for a large one), with
    Python's "does not support the asynchronous context manager protocol"."""
    loader = CountingLoader()
    specs = [loadonce.ModelSpec(name="m", loader=loader)]
    build = loadonce.lifespan if entry == "lifespan" else loadonce.create_app
    with pytest.raises(loadonce.ConfigError, match=rf"^wrap=\S+ {said}.*@asynccontextmanager"):
        build(specs, wrap=wrap)
    assert loader.calls == 0


def test_warmup_runs_once_before_the_model_counts_as_ready() -> None:
    seen: list[Any] = []

    def load() -> Any:
        def predict(batch: list[Any]) -> list[Any]:
            seen.append(list(batch))
            return batch

        return predict

    spec = loadonce.ModelSpec(name="w", loader=load, warmup=[[1.0, 2.0]], input_shape=(2,))
    with TestClient(loadonce.create_app([spec])) as client:
        assert len(seen) == 1, "warm-up ran exactly once during startup"
        assert [list(row) for row in seen[0]] == [[1.0, 2.0]]
        assert client.get("/readyz").status_code == 200


def test_warmup_runs_on_every_instance_of_a_pool() -> None:
    warmed: list[int] = []

    def load() -> Any:
        instance = len(warmed)
        warmed.append(0)

        def predict(batch: list[Any]) -> list[Any]:
            warmed[instance] += 1
            return batch

        return predict

    spec = loadonce.ModelSpec(name="p", loader=load, concurrency="pool:3", warmup=["x"])
    with TestClient(loadonce.create_app([spec])):
        assert warmed == [1, 1, 1]


def test_a_warmup_that_fails_stops_startup() -> None:
    def load() -> Any:
        def predict(batch: list[Any]) -> list[Any]:
            raise ZeroDivisionError("broken model")

        return predict

    app = loadonce.create_app([loadonce.ModelSpec(name="w", loader=load, warmup=[1])])
    with pytest.raises(loadonce.ModelLoadError, match=r"model 'w'.*warm-up failed.*broken model"):
        TestClient(app).__enter__()


async def _async_loader() -> Any:
    return lambda batch: batch


def _generator_loader() -> Any:
    yield lambda batch: batch


async def _async_generator_loader() -> Any:
    yield lambda batch: batch


@pytest.mark.parametrize(
    ("loader", "what"),
    [
        (_async_loader, "an async function"),
        (_generator_loader, "a generator function"),
        (_async_generator_loader, "an async generator"),
    ],
)
def test_a_loader_that_is_not_a_plain_function_stops_startup_saying_so(
    loader: Any, what: str
) -> None:
    """``async def load()`` (natural beside an async lifespan) was refused as "the loader
    returned coroutine, which has no predict method", and Python warned that the coroutine
    was never awaited."""
    app = FastAPI(lifespan=loadonce.lifespan([loadonce.ModelSpec(name="m", loader=loader)]))
    expected = rf"model 'm' failed to load .*the loader is {what}: .*make it a plain def"
    with pytest.raises(loadonce.ModelLoadError, match=expected), TestClient(app):
        pass


def test_a_failing_load_unloads_the_models_loaded_before_it() -> None:
    closed: list[str] = []

    class Model:
        def predict(self, batch: list[Any]) -> list[Any]:
            return batch

        def close(self) -> None:
            closed.append("ok")

    def broken() -> Any:
        raise OSError("disk on fire")

    specs = [
        loadonce.ModelSpec(name="ok", loader=Model),
        loadonce.ModelSpec(name="broken", loader=broken),
    ]
    app = loadonce.create_app(specs)
    with pytest.raises(loadonce.ModelLoadError) as caught:
        TestClient(app).__enter__()
    assert "model 'broken' failed to load" in str(caught.value)
    assert "OSError: disk on fire" in str(caught.value)
    assert closed == ["ok"]
    states = app.state.loadonce.registry.states()
    assert states == {"ok": "unloaded", "broken": "failed"}


@pytest.mark.parametrize(
    ("specs", "message"),
    [
        ([], "no model is declared"),
        (
            [
                loadonce.ModelSpec(name="x", loader=lambda: None),
                loadonce.ModelSpec(name="x", loader=lambda: None),
            ],
            "declared twice",
        ),
    ],
)
def test_zero_or_duplicate_models_are_rejected_before_anything_loads(
    specs: list[loadonce.ModelSpec], message: str
) -> None:
    with pytest.raises(loadonce.ConfigError, match=message):
        loadonce.lifespan(specs)


def test_pool_loads_one_instance_per_slot() -> None:
    loader = CountingLoader()
    spec = loadonce.ModelSpec(name="p", loader=loader, concurrency="pool:3")
    with TestClient(loadonce.create_app([spec])) as client:
        info = client.get("/models/p").json()
    assert loader.calls == 3
    assert info["concurrency"] == "pool:3"


TYPO = loadonce.ModelDependency("irsi")


def _app_depending_on_a_typo() -> FastAPI:
    app = FastAPI(
        lifespan=loadonce.lifespan(
            [loadonce.ModelSpec(name="iris", loader=lambda: lambda batch: batch)]
        )
    )

    @app.get("/classify")
    async def classify(model: Annotated[loadonce.Model, Depends(TYPO)]) -> dict[str, str]:
        return {"model": model.name}

    return app


def test_a_typo_in_a_model_dependency_stops_startup_naming_the_route() -> None:
    app = _app_depending_on_a_typo()
    expected = (
        r"GET /classify depends on ModelDependency\('irsi'\), but no model of that name is "
        r"declared \(did you mean 'iris'\?\); declared: 'iris'"
    )
    with pytest.raises(loadonce.LoadonceError, match=expected), TestClient(app):
        pass


def test_a_model_dependency_the_app_overrides_is_left_alone() -> None:
    app = _app_depending_on_a_typo()
    app.dependency_overrides[TYPO] = lambda: types.SimpleNamespace(name="fake")
    with TestClient(app) as client:
        assert client.get("/classify").json() == {"model": "fake"}


def _typo_route(where: str) -> FastAPI:
    """An app serving ``iris`` with a route that depends on ``irsi``, placed as ``where``
    says: the message must name the route as a client reaches it."""
    app = FastAPI(
        lifespan=loadonce.lifespan(
            [loadonce.ModelSpec(name="iris", loader=lambda: lambda batch: batch)]
        )
    )
    inner = FastAPI()
    router = APIRouter()

    async def classify(model: Annotated[loadonce.Model, Depends(TYPO)]) -> str:
        return model.name

    async def stream(websocket: WebSocket, model: Annotated[loadonce.Model, Depends(TYPO)]) -> None:
        await websocket.close()

    if where == "websocket":
        router.add_api_websocket_route("/ws", stream)
        app.include_router(router, prefix="/live")
    elif where == "nested mounts":
        inner.add_api_route("/classify", classify)
        middle = FastAPI()
        middle.mount("/inner", GZipMiddleware(inner))
        app.mount("/outer", middle)
    elif where == "mounted router":
        router.add_api_route("/classify", classify)
        app.mount("/api", router)
    else:  # a host
        inner.add_api_route("/classify", classify)
        app.host("api.example.com", inner)
    return app


@pytest.mark.parametrize(
    ("where", "named"),
    [
        # A WebSocket route has no methods: it was named " /live/ws", with a blank.
        ("websocket", "WebSocket /live/ws"),
        # A mounted app's route was named by its own path ("GET /classify").
        ("nested mounts", "GET /outer/inner/classify"),
        # The routes of a router mounted with app.mount were not looked at: a 500 later.
        ("mounted router", "GET /api/classify"),
        ("host", "GET /classify on host api.example.com"),
    ],
)
def test_a_typo_stops_startup_naming_the_route_as_a_client_reaches_it(
    where: str, named: str
) -> None:
    expected = rf"^{re.escape(named)} depends on ModelDependency\('irsi'\), but no model"
    with pytest.raises(loadonce.LoadonceError, match=expected), TestClient(_typo_route(where)):
        pass


async def _the_model_wrapped(model: Annotated[loadonce.Model, Depends(TYPO)]) -> loadonce.Model:
    return model


@pytest.mark.parametrize("overridden_in", ["the mounted app", "a dependency around it"])
def test_a_model_dependency_an_override_replaces_is_left_alone(overridden_in: str) -> None:
    """FastAPI never calls a dependency that only an overridden one uses, and solves a mounted
    app's routes with that app's own overrides: a test replacing either was refused at
    startup for a model it never asks for."""
    app = FastAPI(
        lifespan=loadonce.lifespan(
            [loadonce.ModelSpec(name="iris", loader=lambda: lambda batch: batch)]
        )
    )
    owner = FastAPI() if overridden_in == "the mounted app" else app

    @owner.get("/classify")
    async def classify(model: Annotated[Any, Depends(_the_model_wrapped)]) -> str:
        return str(model.name)

    fake = types.SimpleNamespace(name="fake")
    if owner is app:
        app.dependency_overrides[_the_model_wrapped] = lambda: fake
        path = "/classify"
    else:
        owner.dependency_overrides[TYPO] = lambda: fake
        app.mount("/sub", owner)
        path = "/sub/classify"
    with TestClient(app) as client:
        assert client.get(path).json() == "fake"


def test_one_lifespan_given_to_two_apps_gives_each_its_own_state() -> None:
    """A lifespan made once at module level, and an app factory called twice (as tests do):
    both apps shared one registry, and the second's startup took the first's models to its
    own event loop."""
    shared = loadonce.lifespan(
        [loadonce.ModelSpec(name="double", loader=lambda: lambda b: [2 * x for x in b])]
    )

    def make() -> FastAPI:
        app = FastAPI(lifespan=shared)
        app.include_router(loadonce.models_router())
        return app

    first, second = make(), make()
    with TestClient(first) as one, TestClient(second) as two:
        assert first.state.loadonce is not second.state.loadonce
        for client in (one, two):
            assert client.post("/models/double/predict", json={"inputs": [1.0]}).is_success
    with TestClient(first) as one:  # the first app again, after both stopped
        assert one.post("/models/double/predict", json={"inputs": [2.0]}).json()["outputs"] == [4.0]
    # A registry given by the user is one set of loaded models: a second app is refused.
    registry = loadonce.Registry([loadonce.ModelSpec(name="m", loader=lambda: lambda b: b)])
    given = loadonce.lifespan(registry)
    with (
        TestClient(FastAPI(lifespan=given)),
        pytest.raises(loadonce.ConfigError, match="give each app its own lifespan"),
        TestClient(FastAPI(lifespan=given)),
    ):
        pass


def _enter_with_a_second_test_client(app: FastAPI) -> None:
    with TestClient(app):
        pass


def _enter_its_lifespan_on_a_new_loop(app: FastAPI) -> None:
    # As a test does before httpx.ASGITransport, which runs no lifespan.
    async def enter() -> None:
        async with app.router.lifespan_context(app):
            pass

    asyncio.run(enter())


@pytest.mark.parametrize(
    "second_start", [_enter_with_a_second_test_client, _enter_its_lifespan_on_a_new_loop]
)
def test_an_app_started_again_while_it_serves_is_refused_and_the_first_keeps_serving(
    second_start: Any,
) -> None:
    """The second start rebound the models to its own event loop: the first client's
    requests then failed (a 500), and the second's stop failed with asyncio's "attached to a
    different loop"."""
    app = FastAPI(
        lifespan=loadonce.lifespan([loadonce.ModelSpec(name="d", loader=lambda: _double)])
    )
    app.include_router(loadonce.models_router())
    with TestClient(app) as first:
        with pytest.raises(loadonce.ConfigError, match="this app is serving already"):
            second_start(app)
        answer = first.post("/models/d/predict", json={"inputs": [1.0]})
        assert answer.json()["outputs"] == [2.0]
    with TestClient(app) as again:  # stopped, it starts again
        assert again.post("/models/d/predict", json={"inputs": [2.0]}).json()["outputs"] == [4.0]


def _double(batch: list[float]) -> list[float]:
    return [2 * x for x in batch]


def test_an_app_mounted_inside_serves_from_the_enclosing_apps_models() -> None:
    # Starlette runs no lifespan of a mounted app's: its ModelDependency found no state (a
    # 500 telling the user to do what they had done), and its typo passed startup.
    def mounted(dependency: Any) -> FastAPI:
        sub = FastAPI()

        @sub.post("/x")
        async def x(model: loadonce.Model = Depends(dependency)) -> list[Any]:  # noqa: B008
            return await model.predict([1.0])

        return sub

    spec = loadonce.ModelSpec(name="double", loader=lambda: lambda b: [2 * x for x in b])
    app = FastAPI(lifespan=loadonce.lifespan([spec]))
    app.mount("/sub", mounted(loadonce.ModelDependency("double")))
    # Behind a middleware object of its own too: it got no state (a 500 on every request).
    app.mount("/wrapped", GZipMiddleware(mounted(loadonce.ModelDependency("double"))))
    with TestClient(app) as client:
        assert client.post("/sub/x").json() == [2.0]
        assert client.post("/wrapped/x").json() == [2.0]
    typo = FastAPI(lifespan=loadonce.lifespan([spec]))
    typo.mount("/sub", mounted(loadonce.ModelDependency("doubel")))
    with pytest.raises(loadonce.LoadonceError, match=r"did you mean .double."), TestClient(typo):
        pass


def _keys() -> loadonce.AccessKeys:
    return loadonce.AccessKeys(inference=("i" * 24,), admin=("a" * 24,))


def _with_its_own_lifespan(loader: CountingLoader) -> FastAPI:
    """An app that declares a model and API keys of its own, as a sub-app would."""
    sub = FastAPI(
        lifespan=loadonce.lifespan([loadonce.ModelSpec(name="own", loader=loader)], access=_keys())
    )
    sub.include_router(loadonce.admin_router())
    loadonce.install_middleware(sub)
    return sub


def _mounted_at_sub(sub: Any) -> FastAPI:
    app = FastAPI(lifespan=loadonce.lifespan([loadonce.ModelSpec(name="m", loader=lambda: sum)]))
    app.mount("/sub", sub)
    loadonce.install_middleware(app)
    return app


def _mounted_in_a_mount_of_routes(sub: Any) -> FastAPI:
    app = FastAPI(lifespan=loadonce.lifespan([loadonce.ModelSpec(name="m", loader=lambda: sum)]))
    app.router.routes.append(Mount("/api", routes=[Mount("/sub", app=sub)]))
    return app


def _mounted_behind_cors(sub: Any) -> FastAPI:
    app = FastAPI(lifespan=loadonce.lifespan([loadonce.ModelSpec(name="m", loader=lambda: sum)]))
    app.mount("/sub", CORSMiddleware(sub, allow_origins=["https://front.example.com"]))
    return app


def _mounted_with_middleware(sub: Any) -> FastAPI:
    app = FastAPI(lifespan=loadonce.lifespan([loadonce.ModelSpec(name="m", loader=lambda: sum)]))
    wrapping = [Middleware(GZipMiddleware), Middleware(CORSMiddleware, allow_origins=["*"])]
    app.router.routes.append(Mount("/sub", app=sub, middleware=wrapping))
    return app


def _mounted_on_a_host(sub: Any) -> FastAPI:
    app = FastAPI(lifespan=loadonce.lifespan([loadonce.ModelSpec(name="m", loader=lambda: sum)]))
    app.host("ml.example.com", sub)
    return app


@pytest.mark.parametrize(
    ("outer", "where"),
    [
        (_mounted_at_sub, "/sub"),
        (_mounted_in_a_mount_of_routes, "/api/sub"),
        (_mounted_on_a_host, "host ml.example.com"),
        (_mounted_behind_cors, "/sub"),
        (_mounted_with_middleware, "/sub"),
    ],
)
def test_a_mounted_app_with_a_loadonce_lifespan_of_its_own_stops_startup(
    outer: Any, where: str
) -> None:
    """Starlette never runs a mounted app's lifespan: its models were not served (404) and
    its API keys not applied (its admin route reloaded the outer app's models for anyone),
    without a word. Startup now stops before any model loads, saying what to do; also for
    an app mounted behind middleware of its own (a CORSMiddleware around it), which was not
    seen."""
    loader = CountingLoader()
    expected = (
        rf"the app mounted at {where} has a loadonce.lifespan of its own \(models 'own'; "
        r"access\), which never runs: .* Declare those models and settings in the outer app's "
        r"loadonce.lifespan"
    )
    with (
        pytest.raises(loadonce.LoadonceError, match=expected),
        TestClient(outer(_with_its_own_lifespan(loader))),
    ):
        pass
    assert loader.calls == 0


def test_create_app_mounted_in_a_loadonce_app_stops_startup_naming_its_settings() -> None:
    inner = loadonce.create_app(
        [loadonce.ModelSpec(name="m", loader=lambda: sum)],
        access=_keys(),
        limits=loadonce.Limits(max_body_bytes=100),
    )
    expected = r"the app mounted at /sub has .*\(models 'm'; access; limits\).*prefix=\"/sub\""
    with pytest.raises(loadonce.LoadonceError, match=expected), TestClient(_mounted_at_sub(inner)):
        pass


def test_create_app_mounted_in_a_plain_app_says_its_lifespan_never_runs_and_how_to_run_it() -> None:
    """Nothing of loadonce runs at a plain app's startup: each request to the mounted
    create_app was a 500 saying to pass the lifespan the user had passed."""

    def inner() -> FastAPI:
        return loadonce.create_app(
            [loadonce.ModelSpec(name="m", loader=lambda: lambda b: [2 * x for x in b])],
            access=_keys(),
        )

    mounted = inner()
    plain = FastAPI()
    plain.mount("/ml", mounted)
    with TestClient(plain, raise_server_exceptions=False) as client:
        answer = client.post("/ml/models/m/predict", json={"inputs": [1]})
    assert answer.status_code == 500
    said = answer.json()["error"]
    assert "this app is mounted inside another" in said
    assert "lifespan=mounted_app.router.lifespan_context" in said
    # Doing what it says serves the mounted app, its API keys applied.
    mounted = inner()
    outer = FastAPI(lifespan=mounted.router.lifespan_context)
    outer.mount("/ml", mounted)
    loadonce.install_middleware(outer)
    with TestClient(outer) as client:
        assert client.post("/ml/models/m/predict", json={"inputs": [1]}).status_code == 401
        keyed = client.post(
            "/ml/models/m/predict", json={"inputs": [1]}, headers={"X-API-Key": "i" * 24}
        )
        assert keyed.json()["outputs"] == [2]
        assert client.post("/ml/admin/models/m/reload", json={}).status_code == 401
