"""A web page of another site cannot make the server compute: loadonce's inference routes
refuse what a browser marks as sent from another origin (a ``text/plain`` POST needs no CORS
preflight, and the model ran though the page could not read the answer), unless the app's
CORS middleware, or the operator's ``cors_allow_origins``, allows that origin. Clients that
are not browsers, the server's own pages and the routes of the user's own app are not
concerned."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2 as httpx
import pytest
from fastapi import FastAPI, Form
from fastapi.testclient import TestClient
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.routing import Mount

import loadonce
from loadonce.server.settings import resolve_server_options
from tests.servers import REPO_ROOT, ThreadedServer, cli_env, serving

FRONT_END = "http://localhost:3000"
EVIL = "https://evil.example"


class _Counted:
    """A model that counts its calls: proof that a refused request computed nothing."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, batch: list[Any]) -> list[Any]:
        self.calls += 1
        return list(batch)


def _spec(model: _Counted) -> loadonce.ModelSpec:
    return loadonce.ModelSpec(name="m", loader=lambda: model, input_shape=())


_PREDICT = {"inputs": [1.0]}
_INFER = {"inputs": [{"name": "input", "shape": [1], "datatype": "FP64", "data": [1.0]}]}
# Every inference route of loadonce's, and a body a page could send it as text/plain.
INFERENCE_ROUTES = [
    ("POST", "/models/m/predict", _PREDICT),
    ("POST", "/models/m/generate", {"prompt": "hi"}),
    ("POST", "/v2/models/m/infer", _INFER),
    ("POST", "/v2/models/m/versions/1/infer", _INFER),
    ("POST", "/v2/models/m/generate", {"text_input": "hi"}),
    ("POST", "/v2/models/m/generate_stream", {"text_input": "hi"}),
    ("POST", "/v1/chat/completions", {"model": "m", "messages": []}),
    ("POST", "/v1/completions", {"model": "m", "prompt": "hi"}),
    ("POST", "/v1/embeddings", {"model": "m", "input": "hi"}),
    ("POST", "/v2/repository/index", {}),
    ("GET", "/models", None),
    ("GET", "/v2/models/m", None),
    ("GET", "/v2/models/m/stats", None),
    ("GET", "/v1/models", None),
]
# What a browser sends from a page of another origin (same-site: localhost:3000 to :8000).
FOREIGN = [
    {"Origin": EVIL},
    {"Origin": "null"},
    {"Sec-Fetch-Site": "cross-site"},
    {"Sec-Fetch-Site": "same-site"},
    {"Origin": FRONT_END, "Sec-Fetch-Site": "same-site"},
]


def _id(headers: dict[str, str]) -> str:
    return ",".join(f"{k}:{v}" for k, v in headers.items())


def _send(url: str, method: str, path: str, body: Any, headers: dict[str, str]) -> httpx.Response:
    content = None if body is None else json.dumps(body).encode()
    kind = {} if body is None else {"Content-Type": "text/plain"}  # no preflight for this
    return httpx.request(
        method, url + path, content=content, headers={**kind, **headers}, timeout=30
    )


@pytest.fixture(scope="module")
def served() -> Iterator[tuple[ThreadedServer, _Counted]]:
    model = _Counted()
    with ThreadedServer(loadonce.create_app([_spec(model)])) as server:
        yield server, model


@pytest.mark.parametrize("headers", FOREIGN, ids=_id)
@pytest.mark.parametrize(("method", "path", "body"), INFERENCE_ROUTES, ids=lambda r: str(r))
def test_a_page_of_another_origin_cannot_use_inference_routes(
    served: tuple[ThreadedServer, _Counted],
    method: str,
    path: str,
    body: Any,
    headers: dict[str, str],
) -> None:
    server, model = served
    before = model.calls
    refused = _send(server.url, method, path, body, headers)
    assert refused.status_code == 403, refused.text
    assert "another" in refused.text
    assert "cors_allow_origins" in refused.text  # how an operator lets a page in
    assert "access-control-allow-origin" not in refused.headers
    assert model.calls == before  # the model never ran


@pytest.mark.parametrize(
    "headers",
    [{}, {"Sec-Fetch-Site": "none"}, {"Sec-Fetch-Site": "same-origin"}, "own origin"],
    ids=["no browser", "typed in", "same-origin", "own origin"],
)
def test_clients_that_are_not_browsers_and_the_servers_own_pages_are_answered(
    served: tuple[ThreadedServer, _Counted], headers: dict[str, str] | str
) -> None:
    server, model = served
    if headers == "own origin":
        headers = {"Origin": server.url, "Sec-Fetch-Site": "same-origin"}
    assert isinstance(headers, dict)
    before = model.calls
    predicted = _send(server.url, "POST", "/models/m/predict", _PREDICT, headers)
    assert predicted.status_code == 200, predicted.text
    inferred = _send(server.url, "POST", "/v2/models/m/infer", _INFER, headers)
    assert inferred.status_code == 200, inferred.text
    assert model.calls == before + 2
    assert _send(server.url, "GET", "/v1/models", None, headers).status_code == 200


@pytest.mark.parametrize("path", ["/livez", "/readyz", "/v2/health/ready", "/metrics", "/docs"])
def test_probes_metrics_and_docs_answer_any_page(
    served: tuple[ThreadedServer, _Counted], path: str
) -> None:
    server, _ = served
    for headers in FOREIGN:
        assert _send(server.url, "GET", path, None, headers).status_code == 200, headers


def test_cors_allow_origins_lets_the_pages_listed_call_and_read_the_answers() -> None:
    model = _Counted()
    app = loadonce.create_app([_spec(model)], cors_allow_origins=[FRONT_END])
    with ThreadedServer(app) as server:
        own = {"Origin": FRONT_END, "Sec-Fetch-Site": "same-site"}
        preflight = httpx.options(
            f"{server.url}/v2/models/m/infer",
            headers={
                **own,
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "authorization, content-type",
            },
        )
        assert preflight.status_code == 200, preflight.text
        assert preflight.headers["access-control-allow-origin"] == FRONT_END
        assert "POST" in preflight.headers["access-control-allow-methods"]
        assert "authorization" in preflight.headers["access-control-allow-headers"].lower()
        for method, path, body in (
            ("POST", "/models/m/predict", _PREDICT),
            ("POST", "/v2/models/m/infer", _INFER),
            ("GET", "/v1/models", None),
        ):
            answered = _send(server.url, method, path, body, own)
            assert answered.status_code == 200, (path, answered.text)
            assert answered.headers["access-control-allow-origin"] == FRONT_END
            exposed = answered.headers["access-control-expose-headers"].lower().split(", ")
            # The page reads its request's id and the retry advice errors carry.
            assert {"x-request-id", "retry-after", "x-should-retry"} <= set(exposed), exposed
        assert model.calls == 2
        # Its refusals are readable too (a 404 of an unknown model).
        unknown = _send(server.url, "POST", "/models/nope/predict", _PREDICT, own)
        assert unknown.status_code == 404
        assert unknown.headers["access-control-allow-origin"] == FRONT_END
        # Any other origin: refused, and told nothing.
        for headers in ({"Origin": EVIL}, {"Origin": "http://localhost:3001"}):
            refused = _send(server.url, "POST", "/models/m/predict", _PREDICT, headers)
            assert refused.status_code == 403
            assert "access-control-allow-origin" not in refused.headers
        assert model.calls == 2


@pytest.mark.parametrize(
    ("served", "model", "own_route"),
    [(["tests.loaders:echo"], "echo", None), (["my_service:app"], "doubler", "/hello/3")],
    ids=["loadonce's app", "your own app"],
)
def test_loadonce_serve_takes_cors_allow_origins_from_the_environment(
    tmp_path: Path, served: list[str], model: str, own_route: str | None
) -> None:
    shutil.copy(REPO_ROOT / "tests" / "apps" / "my_service.py", tmp_path / "my_service.py")
    origins = {"LOADONCE_CORS_ALLOW_ORIGINS": f"{FRONT_END},https://b.example"}
    env = cli_env(tmp_path, origins, trained_demo=False)
    with serving(served, tmp_path, env=env) as server:
        own = {"Origin": FRONT_END, "Sec-Fetch-Site": "same-site"}
        path = f"/models/{model}/predict"
        preflight = httpx.options(
            server.url + path,
            headers={**own, "Access-Control-Request-Method": "POST"},
        )
        assert preflight.status_code == 200, preflight.text
        assert preflight.headers["access-control-allow-origin"] == FRONT_END
        answered = _send(server.url, "POST", path, {"inputs": [1]}, own)
        assert answered.status_code == 200, answered.text
        assert answered.headers["access-control-allow-origin"] == FRONT_END
        refused = _send(server.url, "POST", path, {"inputs": [1]}, {"Origin": EVIL})
        assert refused.status_code == 403
        assert "access-control-allow-origin" not in refused.headers
        if own_route is not None:  # the app's own route: the app's to guard
            assert httpx.get(server.url + own_route, headers={"Origin": EVIL}).status_code == 200


_APP_WITH_ITS_OWN_CORS = """
import loadonce
from fastapi import FastAPI
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.routing import Mount

spec = loadonce.ModelSpec(name="m", loader="tests.loaders:echo")
app = FastAPI(lifespan=loadonce.lifespan([spec]))
app.add_middleware(CORSMiddleware, allow_origins=["http://localhost:3000"])
"""


def test_an_app_with_its_own_cors_middleware_lists_its_origins_there(tmp_path: Path) -> None:
    # Two CORS middlewares would each add their headers, which browsers refuse; in each
    # worker it was a traceback.
    (tmp_path / "corsapp.py").write_text(_APP_WITH_ITS_OWN_CORS)
    env = cli_env(
        tmp_path, {"LOADONCE_CORS_ALLOW_ORIGINS": "https://b.example"}, trained_demo=False
    )
    result = subprocess.run(
        [sys.executable, "-m", "loadonce", "serve", "corsapp:app"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2, result.stderr
    assert "this app has a CORSMiddleware of its own" in result.stderr
    assert "Traceback" not in result.stderr


def _library_app(model: _Counted, *, cors: str) -> tuple[FastAPI, list[str]]:
    """A user's app with loadonce's routers and routes of its own (an OAuth provider's
    form_post callback, and one under /v2 declared first), its CORS middleware in front of
    loadonce's or behind it."""
    app = FastAPI(lifespan=loadonce.lifespan([_spec(model)]))
    called: list[str] = []

    @app.post("/auth/callback")
    async def callback(code: str = Form()) -> str:
        called.append(code)
        return "signed in"

    @app.post("/v2/mine")
    async def mine() -> str:
        called.append("mine")
        return "mine"

    app.include_router(loadonce.models_router())
    app.include_router(loadonce.v2_router())
    app.include_router(loadonce.openai_router(), prefix="/openai")
    if cors == "behind":
        app.add_middleware(CORSMiddleware, allow_origins=[FRONT_END], allow_methods=["*"])
    loadonce.install_middleware(app)
    if cors == "in front":
        app.add_middleware(CORSMiddleware, allow_origins=[FRONT_END], allow_methods=["*"])
    return app, called


@pytest.mark.parametrize("cors", ["behind", "in front", "none"])
def test_in_your_own_app_your_routes_stay_yours_and_your_cors_middleware_decides(
    cors: str,
) -> None:
    model = _Counted()
    app, called = _library_app(model, cors=cors)
    with TestClient(app) as client:
        evil = {"Origin": EVIL, "Sec-Fetch-Site": "cross-site"}
        posted = client.post("/auth/callback", data={"code": "abc"}, headers=evil)
        assert posted.status_code == 200, posted.text
        assert client.post("/v2/mine", headers=evil).status_code == 200
        assert called == ["abc", "mine"]
        for path, body in (
            ("/models/m/predict", _PREDICT),
            ("/v2/models/m/infer", _INFER),
            ("/openai/v1/completions", {"model": "m", "prompt": "hi"}),
        ):
            refused = client.post(path, content=json.dumps(body), headers=evil)
            assert refused.status_code == 403, (path, refused.text)
        front = {"Origin": FRONT_END, "Sec-Fetch-Site": "same-site"}
        answered = client.post("/models/m/predict", json=_PREDICT, headers=front)
        assert answered.status_code == (403 if cors == "none" else 200), answered.text
        assert model.calls == (0 if cors == "none" else 1)


def _sub_app() -> FastAPI:
    sub = FastAPI()
    sub.include_router(loadonce.models_router())
    return sub


def _mounted_behind_cors(model: _Counted) -> FastAPI:
    app = FastAPI(lifespan=loadonce.lifespan([_spec(model)]))
    app.mount("/sub", CORSMiddleware(_sub_app(), allow_origins=[FRONT_END]))
    loadonce.install_middleware(app)
    return app


def _mounted_with_cors_middleware(model: _Counted) -> FastAPI:
    app = FastAPI(lifespan=loadonce.lifespan([_spec(model)]))
    cors = Middleware(CORSMiddleware, allow_origins=[FRONT_END])
    app.router.routes.append(Mount("/sub", app=_sub_app(), middleware=[cors]))
    loadonce.install_middleware(app)
    return app


@pytest.mark.parametrize("outer", [_mounted_behind_cors, _mounted_with_cors_middleware])
def test_a_cors_middleware_around_a_mounted_app_allows_origins_for_its_routes(
    outer: Any,
) -> None:
    model = _Counted()
    with TestClient(outer(model)) as client:
        front = {"Origin": FRONT_END, "Sec-Fetch-Site": "same-site"}
        answered = client.post("/sub/models/m/predict", json=_PREDICT, headers=front)
        assert answered.status_code == 200, answered.text
        assert answered.headers["access-control-allow-origin"] == FRONT_END
        refused = client.post("/sub/models/m/predict", json=_PREDICT, headers={"Origin": EVIL})
        assert refused.status_code == 403
        assert model.calls == 1


@pytest.mark.parametrize(
    "origin",
    ["", "https://app.example.com/", "app.example.com", "localhost:3000", "null", "http://",
     "https://app.example.com/path", "https://a.example:99999", " https://a.example"],
)  # fmt: skip
def test_an_origin_no_browser_sends_is_refused_at_startup(origin: str) -> None:
    # A final slash or a path never matches an Origin header: every page was refused silently.
    with pytest.raises(loadonce.ConfigError, match="is not an origin"):
        resolve_server_options({"cors_allow_origins": [origin, FRONT_END]}, {})
    model = _Counted()
    if origin:
        with pytest.raises(loadonce.ConfigError, match=r"cors_allow_origins: .* is not an origin"):
            loadonce.create_app([_spec(model)], cors_allow_origins=[origin])


def test_cors_allow_origins_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(
        "LOADONCE_CORS_ALLOW_ORIGINS", "http://LocalHost:3000, https://app.example.com"
    )
    options = resolve_server_options({}, {})
    assert options.cors_allow_origins == ["http://localhost:3000", "https://app.example.com"]
    monkeypatch.setenv("LOADONCE_CORS_ALLOW_ORIGINS", "https://app.example.com/")
    with pytest.raises(loadonce.ConfigError, match="LOADONCE_CORS_ALLOW_ORIGINS"):
        resolve_server_options({}, {})
