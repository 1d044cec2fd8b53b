"""The inference routes answered before FastAPI's routing (``install_middleware``, and
``loadonce serve pkg.mod:app``, which installs it) keep what the user's app puts around them:
a router's or the app's dependencies (their auth), the user's own middleware, and a route of
the user's declared first on the same path. Each was skipped: a predict answered 200 without
the key the user's auth asked for."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from fastapi import Depends, FastAPI, Header, HTTPException, Request
from fastapi.responses import JSONResponse
from fastapi.testclient import TestClient

import loadonce

KEY = "the-users-own-key"


def require_key(x_key: str | None = Header(None)) -> None:
    if x_key != KEY:
        raise HTTPException(status_code=401, detail="the user's auth said no")


def _spec() -> loadonce.ModelSpec:
    return loadonce.ModelSpec(
        name="double", loader=lambda: lambda batch: [2 * x for x in batch], input_shape=()
    )


def _router_guarded() -> FastAPI:
    app = FastAPI(lifespan=loadonce.lifespan([_spec()]))
    app.include_router(loadonce.models_router(), prefix="/ml", dependencies=[Depends(require_key)])
    app.include_router(loadonce.v2_router(), dependencies=[Depends(require_key)])
    loadonce.install_middleware(app)
    return app


def _app_guarded() -> FastAPI:
    app = FastAPI(lifespan=loadonce.lifespan([_spec()]), dependencies=[Depends(require_key)])
    app.include_router(loadonce.models_router(), prefix="/ml")
    app.include_router(loadonce.v2_router())
    loadonce.install_middleware(app)
    return app


def _middleware_guarded() -> FastAPI:
    app = FastAPI(lifespan=loadonce.lifespan([_spec()]))
    app.include_router(loadonce.models_router(), prefix="/ml")
    app.include_router(loadonce.v2_router())

    @app.middleware("http")
    async def guard(request: Request, call_next: Callable[[Request], Any]) -> Any:
        try:
            require_key(request.headers.get("x-key"))
        except HTTPException as refused:
            return JSONResponse({"detail": refused.detail}, status_code=401)
        return await call_next(request)

    loadonce.install_middleware(app)  # after the user's own: it used to wrap it
    return app


@pytest.fixture(params=[_router_guarded, _app_guarded, _middleware_guarded])
def client(request: pytest.FixtureRequest) -> Iterator[TestClient]:
    with TestClient(request.param()) as test_client:
        yield test_client


V2_BODY = {"inputs": [{"name": "input", "shape": [1], "datatype": "FP64", "data": [2.0]}]}


@pytest.mark.parametrize(
    ("path", "body"),
    [("/ml/models/double/predict", {"inputs": 2.0}), ("/v2/models/double/infer", V2_BODY)],
)
def test_the_users_auth_guards_the_inference_routes(
    client: TestClient, path: str, body: dict[str, Any]
) -> None:
    refused = client.post(path, json=body)
    assert refused.status_code == 401, refused.text
    assert refused.json()["detail"] == "the user's auth said no"
    allowed = client.post(path, json=body, headers={"x-key": KEY})
    assert allowed.status_code == 200, allowed.text


def test_a_users_route_declared_first_answers_its_path() -> None:
    app = FastAPI(lifespan=loadonce.lifespan([_spec()]))

    @app.post("/models/legacy/predict")
    async def legacy() -> dict[str, str]:
        return {"answered_by": "the user's route"}

    app.include_router(loadonce.models_router())
    loadonce.install_middleware(app)
    with TestClient(app) as local:
        mine = local.post("/models/legacy/predict", json={"inputs": 1})
        assert mine.json() == {"answered_by": "the user's route"}
        theirs = local.post("/models/double/predict", json={"inputs": 2.0})
        assert theirs.json()["outputs"] == [4.0]
