"""A user's own FastAPI app that mounts loadonce's routers answers as the app create_app
builds does: the same statuses and bodies, also under a root path."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import httpx2 as httpx
import pytest
from fastapi import FastAPI, HTTPException

import loadonce
from tests.servers import ThreadedServer


class _Guarded:
    """Doubles numbers; refuses negative ones with the app's own 403, as user code may."""

    def predict(self, batch: list[Any]) -> list[float]:
        if any(float(x) < 0 for x in batch):
            raise HTTPException(status_code=403, detail="negative numbers are not allowed")
        if any(float(x) == 13 for x in batch):
            raise KeyError("unlucky")
        return [2 * float(x) for x in batch]


def _specs() -> list[loadonce.ModelSpec]:
    return [loadonce.ModelSpec(name="m", loader=_Guarded, input_shape=())]


def _users_app() -> FastAPI:
    app = FastAPI(lifespan=loadonce.lifespan(_specs()))
    app.include_router(loadonce.health_router())
    app.include_router(loadonce.models_router())
    app.include_router(loadonce.v2_router())

    @app.get("/hello")
    async def hello() -> dict[str, str]:
        return {"hello": "world"}

    return app


@pytest.fixture(
    scope="module",
    params=[("create_app", ""), ("users_app", ""), ("create_app", "/ml"), ("users_app", "/ml")],
    ids=lambda p: f"{p[0]}{' under ' + p[1] if p[1] else ''}",
)
def server(request: pytest.FixtureRequest) -> Iterator[ThreadedServer]:
    kind, root_path = request.param
    app = loadonce.create_app(_specs()) if kind == "create_app" else _users_app()
    with ThreadedServer(app, root_path=root_path) as running:
        yield running


TENSOR = {"name": "input", "shape": [1], "datatype": "FP64"}


def test_user_code_raising_http_exception_answers_its_status(server: ThreadedServer) -> None:
    rest = httpx.post(f"{server.url}/models/m/predict", json={"inputs": [-1]})
    assert (rest.status_code, rest.json()) == (403, {"detail": "negative numbers are not allowed"})
    v2 = httpx.post(f"{server.url}/v2/models/m/infer", json={"inputs": [{**TENSOR, "data": [-1]}]})
    assert (v2.status_code, v2.json()) == (403, {"detail": "negative numbers are not allowed"})


def test_the_model_repository_loads_and_unloads(server: ThreadedServer) -> None:
    for action in ("unload", "load"):
        answered = httpx.post(f"{server.url}/v2/repository/models/m/{action}")
        assert (answered.status_code, answered.json()) == (200, {"name": "m", action: True})
    assert httpx.post(f"{server.url}/models/m/predict", json={"inputs": [2]}).json()["outputs"] == [
        4.0
    ]


def test_what_the_model_raises_is_said_to_be_the_models(server: ThreadedServer) -> None:
    rest = httpx.post(f"{server.url}/models/m/predict", json={"inputs": [13]})
    assert rest.status_code == 500
    assert rest.json()["error"].startswith("the model raised KeyError; the server log")
    v2 = httpx.post(f"{server.url}/v2/models/m/infer", json={"inputs": [{**TENSOR, "data": [13]}]})
    assert v2.status_code == 500
    assert v2.json()["error"].startswith("the model raised KeyError; the server log")


def test_model_predict_wraps_what_the_model_raises() -> None:
    async def predict_unlucky() -> None:
        registry = loadonce.Registry(_specs())
        await registry.load_all()
        try:
            await registry.get("m").predict([13])
        finally:
            await registry.unload_all()

    with pytest.raises(loadonce.ModelRaisedError) as raised:
        asyncio.run(predict_unlucky())
    assert isinstance(raised.value.__cause__, KeyError)
    assert isinstance(raised.value.model_error, KeyError)
