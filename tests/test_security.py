"""API keys per route family, and request size limits, against a real server."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import httpx2 as httpx
import pytest
from fastapi import Depends, FastAPI
from fastapi.middleware.cors import CORSMiddleware

import loadonce
from loadonce.core.limits import Limits
from loadonce.http.access_keys import AccessKeys
from tests.servers import REPO_ROOT, ThreadedServer, cli_env, serving

INFERENCE_KEY = "inference-key-0123456789"
ADMIN_KEY = "admin-key-0123456789abcd"
V2_INFER = {"inputs": [{"name": "input", "shape": [1], "datatype": "FP64", "data": [2.0]}]}


def _specs() -> list[loadonce.ModelSpec]:
    return [
        loadonce.ModelSpec(
            name="m", loader=lambda: lambda batch: [x * 2 for x in batch], input_shape=()
        )
    ]


@pytest.fixture(scope="module", params=["", "/ml"], ids=["no root path", "root path /ml"])
def server(request: pytest.FixtureRequest) -> Iterator[ThreadedServer]:
    """Also behind a path prefix (uvicorn's --root-path, Ray's route_prefix): every route is
    classified by its path without the prefix."""
    access = AccessKeys(inference=(INFERENCE_KEY,), admin=(ADMIN_KEY,))
    app = loadonce.create_app(_specs(), access=access)
    with ThreadedServer(app, root_path=request.param) as running:
        yield running


ROUTES = {
    "open": [
        ("GET", "/livez"),
        ("GET", "/readyz"),
        ("GET", "/v2/health/ready"),
        ("GET", "/metrics"),  # open unless protect_metrics
    ],
    "inference": [
        ("POST", "/models/m/predict"),
        ("GET", "/models"),
        ("POST", "/v2/models/m/infer"),
        ("GET", "/v2/models/m"),
        ("GET", "/v2/models/m/stats"),  # as inference, unless the metrics are protected
        ("GET", "/v2/no/such/route"),
    ],
    # load of a loaded model reloads it: harmless to repeat
    "admin": [("POST", "/v2/repository/models/m/load")],
}


def _call(
    server: ThreadedServer, method: str, path: str, headers: dict[str, str]
) -> httpx.Response:
    body = {"inputs": [1.0]} if path.startswith("/models/m/predict") else V2_INFER
    content = json.dumps(body).encode() if method == "POST" else None
    return httpx.request(method, server.url + path, content=content, headers=headers)


@pytest.mark.parametrize(
    ("who", "headers", "allowed"),
    [
        ("no key", {}, {"open"}),
        ("unknown key", {"Authorization": "Bearer not-a-key-0123456789"}, {"open"}),
        ("inference key", {"Authorization": f"Bearer {INFERENCE_KEY}"}, {"open", "inference"}),
        ("inference key (X-API-Key)", {"X-API-Key": INFERENCE_KEY}, {"open", "inference"}),
        ("admin key", {"Authorization": f"Bearer {ADMIN_KEY}"}, {"open", "inference", "admin"}),
    ],
)
def test_each_route_family_against_each_key(
    server: ThreadedServer, who: str, headers: dict[str, str], allowed: set[str]
) -> None:
    for family, routes in ROUTES.items():
        for method, path in routes:
            response = _call(server, method, path, headers)
            if family in allowed:
                assert response.status_code not in (401, 403), (who, path, response.text)
                continue
            expected = 403 if family == "admin" and "inference key" in who else 401
            assert response.status_code == expected, (who, path, response.text)
            body = response.json()
            if path.startswith("/v2"):
                assert set(body) == {"error"}
            else:
                assert set(body) == {"error", "request_id"}
            assert INFERENCE_KEY not in response.text
            assert ADMIN_KEY not in response.text
            if expected == 401:
                assert response.headers["www-authenticate"].startswith("Bearer")
                assert "API key" in body["error"]
            else:
                assert "may not use admin routes" in body["error"]


_BEARER = "Authorization"
_CONFLICTS = {
    "bearer inference key, X-API-Key admin key": [
        (_BEARER, f"Bearer {INFERENCE_KEY}"),
        ("X-API-Key", ADMIN_KEY),
    ],
    "X-API-Key admin key, bearer inference key": [
        ("X-API-Key", ADMIN_KEY),
        (_BEARER, f"Bearer {INFERENCE_KEY}"),
    ],
    "two Authorization headers": [
        (_BEARER, "Bearer not-a-key-0123456789"),
        (_BEARER, f"Bearer {ADMIN_KEY}"),
    ],
    "two X-API-Key headers": [("X-API-Key", INFERENCE_KEY), ("X-API-Key", ADMIN_KEY)],
}


@pytest.mark.parametrize("headers", _CONFLICTS.values(), ids=_CONFLICTS.keys())
@pytest.mark.parametrize("family", ["inference", "admin"])
def test_two_different_keys_in_one_request_are_refused_whatever_their_order(
    server: ThreadedServer, headers: list[tuple[str, str]], family: str
) -> None:
    """The first key was taken: the same two headers were refused one way round and let in
    the other, and a proxy that reads the last (or adds its own) judged another key."""
    [(method, path), *_] = ROUTES[family]
    content = json.dumps({"inputs": [1.0]} if path == "/models/m/predict" else V2_INFER)
    response = httpx.request(method, server.url + path, content=content, headers=headers)
    assert response.status_code == 401, response.text
    assert "more than one API key" in response.json()["error"]
    assert INFERENCE_KEY not in response.text
    assert ADMIN_KEY not in response.text


@pytest.mark.parametrize(
    "headers",
    [
        [(_BEARER, f"Bearer {ADMIN_KEY}"), ("X-API-Key", ADMIN_KEY)],
        [(_BEARER, "Basic dXNlcjpwYXNz"), ("X-API-Key", ADMIN_KEY)],
        [(_BEARER, "Bearer"), ("X-API-Key", ADMIN_KEY)],
    ],
    ids=["the same key twice", "a proxy's Basic credentials", "an empty bearer token"],
)
def test_one_key_beside_the_same_key_or_other_credentials_is_taken(
    server: ThreadedServer, headers: list[tuple[str, str]]
) -> None:
    [(method, path)] = ROUTES["admin"]
    response = httpx.request(method, server.url + path, headers=headers)
    assert response.status_code == 200, response.text


def test_admin_keys_alone_leave_inference_open_and_shut_admin_routes() -> None:
    access = AccessKeys(admin=(ADMIN_KEY,))
    with ThreadedServer(loadonce.create_app(_specs(), access=access)) as running:
        assert (
            httpx.post(f"{running.url}/models/m/predict", json={"inputs": [1.0]}).status_code == 200
        )
        assert httpx.post(f"{running.url}/v2/repository/models/m/unload").status_code == 401
        unloaded = httpx.post(
            f"{running.url}/v2/repository/models/m/unload",
            headers={"Authorization": f"Bearer {ADMIN_KEY}"},
        )
        assert unloaded.status_code == 200


def test_inference_keys_alone_shut_admin_routes() -> None:
    access = AccessKeys(inference=(INFERENCE_KEY,))
    with ThreadedServer(loadonce.create_app(_specs(), access=access)) as running:
        refused = httpx.post(
            f"{running.url}/v2/repository/models/m/unload", headers={"X-API-Key": INFERENCE_KEY}
        )
        assert refused.status_code == 403


def test_protected_metrics_need_a_key_of_either_scope() -> None:
    access = AccessKeys(inference=(INFERENCE_KEY,), admin=(ADMIN_KEY,), protect_metrics=True)
    with ThreadedServer(loadonce.create_app(_specs(), access=access)) as running:
        assert httpx.get(f"{running.url}/metrics").status_code == 401
        for key in (INFERENCE_KEY, ADMIN_KEY):
            scraped = httpx.get(f"{running.url}/metrics", headers={"X-API-Key": key})
            assert scraped.status_code == 200
            assert "loadonce_model_state" in scraped.text


@pytest.mark.parametrize("prefix", ["", "/ops"], ids=["at their paths", "under a prefix"])
def test_protected_metrics_protect_the_statistics_with_admin_keys_alone(prefix: str) -> None:
    """With only admin keys, inference stays open; the statistics extension, /metrics's
    figures per model, was open too, though protect_metrics was asked for (and a prefixed
    metrics route, taken for inference, as well)."""
    access = AccessKeys(admin=(ADMIN_KEY,), protect_metrics=True)
    app = FastAPI(lifespan=loadonce.lifespan(_specs(), access=access))
    app.include_router(loadonce.models_router(), prefix=prefix)
    app.include_router(loadonce.v2_router(), prefix=prefix)
    app.include_router(loadonce.metrics_router(), prefix=prefix)
    loadonce.install_middleware(app)
    with ThreadedServer(app) as running:
        url = running.url + prefix
        assert httpx.post(f"{url}/models/m/predict", json={"inputs": [1.0]}).status_code == 200
        assert httpx.get(f"{url}/v2/models/m").status_code == 200
        for path in ("/metrics", "/v2/models/m/stats", "/v2/models/stats"):
            assert httpx.get(url + path).status_code == 401, path
            admitted = httpx.get(url + path, headers={"X-API-Key": ADMIN_KEY})
            assert admitted.status_code == 200, path


def test_refusals_before_the_routes_are_in_the_metrics() -> None:
    """401s, 403s and 413s were in the access log only: a storm of them was invisible to any
    alert built on /metrics."""
    access = AccessKeys(inference=(INFERENCE_KEY,))
    app = loadonce.create_app(_specs(), access=access, limits=Limits(max_body_bytes=100))
    with ThreadedServer(app) as running:
        key = {"X-API-Key": INFERENCE_KEY}
        assert httpx.post(f"{running.url}/models/m/predict", json=[1]).status_code == 401
        assert (
            httpx.get(f"{running.url}/models", headers={"Host": "evil.example"}).status_code == 403
        )
        big = {"inputs": [1.0] * 100}
        assert (
            httpx.post(f"{running.url}/models/m/predict", json=big, headers=key).status_code == 413
        )
        metrics = httpx.get(f"{running.url}/metrics").text
    for status in (401, 403, 413):
        line = f'loadonce_requests_total{{model="",route="",status="{status}"}} 1.0'
        assert line in metrics, (status, metrics)


def test_weak_keys_are_refused_without_showing_them() -> None:
    with pytest.raises(loadonce.ConfigError) as refused:
        AccessKeys(inference=("short",))
    assert "short" not in str(refused.value)


@pytest.fixture(scope="module")
def limited() -> Iterator[ThreadedServer]:
    specs = [
        loadonce.ModelSpec(
            name="m",
            loader=lambda: lambda batch: [x * 2 for x in batch],
            input_shape=(),
            max_request_examples=4,
        ),
        loadonce.ModelSpec(name="text", loader=lambda: lambda batch: [len(x) for x in batch]),
    ]
    limits = Limits(max_body_bytes=2000, max_element_bytes=100)
    with ThreadedServer(loadonce.create_app(specs, limits=limits)) as running:
        yield running


def test_an_oversized_body_is_413_before_it_is_read(limited: ThreadedServer) -> None:
    big = json.dumps({"inputs": [1.0] * 1000})
    response = httpx.post(f"{limited.url}/models/m/predict", content=big)
    assert response.status_code == 413
    assert "max_body_bytes" in response.json()["error"]
    v2 = httpx.post(f"{limited.url}/v2/models/m/infer", content=big)
    assert v2.status_code == 413
    assert set(v2.json()) == {"error"}


def test_an_oversized_body_without_a_length_is_413_too(limited: ThreadedServer) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"inputs": ['
        for _ in range(500):
            yield b"1.0, "
        yield b"1.0]}"

    response = httpx.post(f"{limited.url}/models/m/predict", content=chunks())
    assert response.status_code == 413
    assert "max_body_bytes" in response.json()["error"]


def test_too_many_examples_is_413(limited: ThreadedServer) -> None:
    response = httpx.post(f"{limited.url}/models/m/predict", json={"inputs": [1, 2, 3, 4, 5]})
    assert response.status_code == 413
    assert "at most 4 per request" in response.json()["error"]
    assert httpx.post(f"{limited.url}/models/m/predict", json={"inputs": [1, 2]}).json()[
        "outputs"
    ] == [2.0, 4.0]


def test_an_oversized_bytes_element_is_413(limited: ThreadedServer) -> None:
    body = {"inputs": [{"name": "t", "shape": [2], "datatype": "BYTES", "data": ["ok", "x" * 101]}]}
    response = httpx.post(f"{limited.url}/v2/models/text/infer", json=body)
    assert response.status_code == 413
    assert "element 1" in response.json()["error"]
    body["inputs"][0]["data"] = ["ok", "x" * 100]
    assert httpx.post(f"{limited.url}/v2/models/text/infer", json=body).status_code == 200


def test_keys_from_the_environment_guard_the_cli_server_and_never_reach_the_log(
    tmp_path: Path,
) -> None:
    env = cli_env(tmp_path, {"LOADONCE_API_KEYS": f"{INFERENCE_KEY}, other-key-0123456789"})
    # Any model will do: one that needs no library starts in a fraction of the demo's time.
    with serving(["tests.loaders:echo"], tmp_path, env=env) as server:
        assert (
            httpx.post(f"{server.url}/models/echo/predict", json={"inputs": [1]}).status_code == 401
        )
        allowed = httpx.post(
            f"{server.url}/models/echo/predict",
            json={"inputs": [7]},
            headers={"Authorization": f"Bearer {INFERENCE_KEY}"},
        )
        assert [output["echo"] for output in allowed.json()["outputs"]] == [7]
    assert INFERENCE_KEY not in server.log()
    short = cli_env(tmp_path, {"LOADONCE_API_KEYS": "tooshort"})
    result = subprocess.run(
        [sys.executable, "-m", "loadonce", "serve", "--demo"],
        env=short,
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "at least 16 characters" in result.stderr
    assert "tooshort" not in result.stderr


@pytest.mark.parametrize(
    ("prefix", "how"),
    [
        ("/ops", "included"),
        ("/ops/inner", "included"),
        ("/ops", "mounted"),
        ("/ops", "mounted behind a middleware"),
    ],
)
def test_loadonces_routes_keep_their_family_under_any_prefix(prefix: str, how: str) -> None:
    """A user's app that includes loadonce's routers under a prefix: control routes need an
    admin key and refuse cross-site browsers, health probes stay open. Told from the literal
    paths, prefixed control routes were inference routes: an inference key (or none, with
    only admin keys set) reloaded and unloaded models; prefixed probes wanted a key. So were
    those of a sub-app mounted behind a middleware object (``GZipMiddleware(sub_app)``)."""
    from fastapi import FastAPI
    from fastapi.testclient import TestClient
    from starlette.middleware.gzip import GZipMiddleware

    admin, inference = "a" * 24, "i" * 24
    keys = AccessKeys(admin=(admin,), inference=(inference,))
    spec = loadonce.ModelSpec(name="m", loader="tests.loaders:echo")
    app = FastAPI(lifespan=loadonce.lifespan([spec], access=keys))
    routers = [
        loadonce.models_router(),
        loadonce.admin_router(),
        loadonce.v2_router(),
        loadonce.health_router(),
    ]
    if how != "included":  # a sub-app of loadonce's routers, under the app's middleware
        inner = FastAPI()
        for router in routers:
            inner.include_router(router)
        app.mount(prefix, GZipMiddleware(inner) if how.endswith("middleware") else inner)
    else:
        for router in routers:
            app.include_router(router, prefix=prefix)
    loadonce.install_middleware(app)
    as_inference = {"x-api-key": inference}
    with TestClient(app) as client:
        for path in (
            f"{prefix}/admin/models/m/reload",
            f"{prefix}/v2/repository/models/m/unload",
            f"{prefix}/v2/repository/models/m/load",
        ):
            assert client.post(path, json={}).status_code == 401, path
            assert client.post(path, json={}, headers=as_inference).status_code == 403, path
        cross_site = {"x-api-key": admin, "origin": "http://evil.example"}
        reload = f"{prefix}/admin/models/m/reload"
        assert client.post(reload, json={}, headers=cross_site).status_code == 403
        assert client.post(reload, json={}, headers={"x-api-key": admin}).status_code == 200
        for probe in ("/livez", "/readyz", "/v2/health/live"):
            assert client.get(f"{prefix}{probe}").status_code == 200, probe
        predict = f"{prefix}/models/m/predict"
        assert client.post(predict, json={"inputs": [1]}).status_code == 401
        assert client.post(predict, json={"inputs": [1]}, headers=as_inference).status_code == 200


FRONT_END = "https://front.example.com"
EVIL_ORIGIN = "https://evil.example.com"
PREFLIGHT = {
    "origin": FRONT_END,
    "access-control-request-method": "POST",
    "access-control-request-headers": "x-api-key,content-type",
}


def _app_with_an_options_route(*, cors: bool) -> tuple[FastAPI, list[str]]:
    """A user's app with keys, its CORS middleware (added before install_middleware, so that
    loadonce's checks are in front of it, as under ``loadonce serve``) and an OPTIONS route
    that runs a model; the list records each run of that route."""
    keys = AccessKeys(inference=(INFERENCE_KEY,), admin=(ADMIN_KEY,))
    app = FastAPI(lifespan=loadonce.lifespan(_specs(), access=keys))
    app.include_router(loadonce.models_router())
    app.include_router(loadonce.admin_router())
    app.include_router(loadonce.metrics_router())
    ran: list[str] = []

    @app.options("/doubled")
    async def doubled(
        model: Annotated[loadonce.Model, Depends(loadonce.ModelDependency("m"))],
    ) -> dict[str, bool]:
        await model.predict([2.0])
        ran.append("doubled")
        return {"ran": True}

    if cors:
        app.add_middleware(
            CORSMiddleware, allow_origins=[FRONT_END], allow_methods=["*"], allow_headers=["*"]
        )
    loadonce.install_middleware(app)
    return app, ran


def test_cors_preflights_pass_the_key_check_to_the_apps_cors_middleware() -> None:
    """Browsers send a CORS preflight without credentials: refused for want of a key (401,
    without Access-Control-Allow-Origin), it kept every route from a browser front end."""
    from fastapi.testclient import TestClient

    app, ran = _app_with_an_options_route(cors=True)
    with TestClient(app) as client:
        for path in ("/models/m/predict", "/doubled"):
            preflight = client.options(path, headers=PREFLIGHT)
            assert preflight.status_code == 200, (path, preflight.text)
            assert preflight.headers["access-control-allow-origin"] == FRONT_END
        assert ran == []  # answered by the CORS middleware: no route ran
        predict = "/models/m/predict"
        with_origin = {"origin": FRONT_END}
        assert client.post(predict, json={"inputs": [1.0]}, headers=with_origin).status_code == 401
        answered = client.post(
            predict, json={"inputs": [1.0]}, headers={**with_origin, "x-api-key": INFERENCE_KEY}
        )
        assert answered.status_code == 200
        assert answered.headers["access-control-allow-origin"] == FRONT_END
        # The browser guard's rules still apply: a control route refuses another origin's
        # preflight (its request would be refused too).
        refused = client.options("/admin/models/m/reload", headers=PREFLIGHT)
        assert refused.status_code == 403
        assert "another origin" in refused.json()["error"]
        assert "access-control-allow-origin" not in refused.headers  # a refused preflight


def test_refusals_in_front_of_the_apps_cors_middleware_are_readable_by_the_origins_it_allows() -> (
    None
):
    """loadonce's checks answer before the app's CORS middleware sees the answer: a 401, a
    403, a 413 (or a 500 of the app's own route) carried no Access-Control-Allow-Origin, so a
    browser front end the app allows saw a failed request, never "an API key is required".
    They now carry what the app's CORS middleware gives that origin: nothing for an origin
    it does not allow, nothing for a client that sends no Origin."""
    from fastapi.testclient import TestClient

    keys = AccessKeys(inference=(INFERENCE_KEY,), admin=(ADMIN_KEY,))
    limits = loadonce.Limits(max_body_bytes=1000)
    app = FastAPI(lifespan=loadonce.lifespan(_specs(), access=keys, limits=limits))
    app.include_router(loadonce.models_router())
    app.include_router(loadonce.admin_router())

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("the app's own failure")

    @app.get("/hello")
    async def hello() -> str:
        return "hello"

    app.add_middleware(
        CORSMiddleware,
        allow_origins=[FRONT_END],
        allow_credentials=True,
        allow_methods=["*"],
        allow_headers=["*"],
        expose_headers=["X-Request-ID"],
    )
    loadonce.install_middleware(app)
    as_inference = {"x-api-key": INFERENCE_KEY}
    with TestClient(app, raise_server_exceptions=False) as client:
        predict = "/models/m/predict"
        answers = {
            401: client.post(predict, json={"inputs": [1.0]}, headers={"origin": FRONT_END}),
            403: client.post(
                "/admin/models/m/reload", json={}, headers={**as_inference, "origin": FRONT_END}
            ),
            413: client.post(
                predict, content=b"[" * 2000, headers={**as_inference, "origin": FRONT_END}
            ),
            500: client.get("/boom", headers={**as_inference, "origin": FRONT_END}),
        }
        for status, answer in answers.items():
            assert answer.status_code == status, answer.text
            assert answer.headers["access-control-allow-origin"] == FRONT_END, status
            assert answer.headers["access-control-allow-credentials"] == "true", status
            assert answer.headers["access-control-expose-headers"] == "X-Request-ID", status
            assert "Origin" in answer.headers["vary"], status
            assert answer.headers["x-request-id"], status
        # An origin the app does not allow: refused by the browser guard, as loadonce's
        # inference routes refuse another origin's page that the app's CORS does not allow.
        foreign = client.post(predict, json={"inputs": [1.0]}, headers={"origin": EVIL_ORIGIN})
        assert foreign.status_code == 403
        assert "access-control-allow-origin" not in foreign.headers
        # What the app's CORS middleware gives that origin on the app's own answers, no more.
        served = client.get("/hello", headers={**as_inference, "origin": EVIL_ORIGIN})
        assert served.status_code == 200

        def cors(answer: Any) -> dict[str, str]:
            return {k: v for k, v in answer.headers.items() if k.startswith("access-control-")}

        assert cors(foreign) == cors(served)
        plain = client.post(predict, json={"inputs": [1.0]})
        assert plain.status_code == 401
        assert not {name for name in plain.headers if name.startswith("access-control-")}


def test_a_preflight_no_middleware_answers_runs_no_route_without_a_key() -> None:
    """Passing the key check in front is for the app's CORS middleware only: an OPTIONS route
    (one running a model) reached by a preflight still needs a key."""
    from fastapi.testclient import TestClient

    app, ran = _app_with_an_options_route(cors=False)
    with TestClient(app) as client:
        for headers in ({}, {"x-api-key": "not-a-key-0123456789"}):
            refused = client.options("/doubled", headers={**PREFLIGHT, **headers})
            assert refused.status_code == 401, refused.text
            assert "API key" in refused.json()["error"]
        assert client.options("/doubled").status_code == 401  # not a preflight: as before
        assert ran == []
        allowed = client.options("/doubled", headers={**PREFLIGHT, "x-api-key": INFERENCE_KEY})
        assert allowed.status_code == 200
        assert allowed.json() == {"ran": True}
        assert ran == ["doubled"]
        metrics = client.get("/metrics").text
        assert 'loadonce_requests_total{model="",route="",status="401"} 3.0' in metrics
