"""A user's handler gets its model through a dependency, which tests can replace."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

import httpx2 as httpx
import pytest
from fastapi import Depends, FastAPI
from fastapi.testclient import TestClient

import loadonce

loads: list[str] = []


def load_real_model() -> Any:
    loads.append("real")
    return lambda batch: ["real"] * len(batch)


class FakeModel:
    async def predict(self, inputs: Any) -> list[Any]:
        return ["fake"]


def build_app() -> FastAPI:
    app = FastAPI(
        lifespan=loadonce.lifespan([loadonce.ModelSpec(name="m", loader=load_real_model)])
    )

    @app.post("/label")
    async def label(
        model: Annotated[loadonce.Model, Depends(loadonce.ModelDependency("m"))],
    ) -> dict[str, Any]:
        [output] = await model.predict([1])
        return {"label": output}

    return app


def test_the_dependency_hands_the_loaded_model() -> None:
    with TestClient(build_app()) as client:
        assert client.post("/label").json() == {"label": "real"}


def test_dependency_overrides_replace_the_model_in_a_handler() -> None:
    app = build_app()
    # A fresh ModelDependency with the same name is the same key, so tests need no import of
    # the exact object the app used.
    app.dependency_overrides[loadonce.ModelDependency("m")] = FakeModel
    with TestClient(app) as client:
        assert client.post("/label").json() == {"label": "fake"}


def test_without_the_lifespan_the_dependency_explains_what_is_missing() -> None:
    app = FastAPI()

    @app.get("/m")
    async def get_model(
        model: Annotated[loadonce.Model, Depends(loadonce.ModelDependency("m"))],
    ) -> str:
        return model.name

    client = TestClient(app, raise_server_exceptions=True)
    with pytest.raises(loadonce.LoadonceError, match=r"lifespan=loadonce\.lifespan"):
        client.get("/m")


def _through_a_client_not_entered(app: FastAPI) -> httpx.Response:
    return TestClient(app, raise_server_exceptions=False).post("/label")


def _through_asgi_transport(app: FastAPI) -> httpx.Response:
    async def ask() -> httpx.Response:
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return await client.post("/label")

    return asyncio.run(ask())


@pytest.mark.parametrize("ask", [_through_a_client_not_entered, _through_asgi_transport])
def test_an_app_whose_lifespan_never_ran_says_so_not_to_pass_the_lifespan_it_has(
    ask: Any,
) -> None:
    """The app has loadonce.lifespan(...): the answer told its user to pass one. What is
    missing is the server (or test client) running it."""
    app = build_app()
    loadonce.install_middleware(app)
    loaded_before = len(loads)
    answer = ask(app)
    assert answer.status_code == 500
    said = answer.json()["error"]
    assert "loadonce.lifespan(...) has not run" in said
    assert "pass lifespan=" not in said
    assert "with TestClient(app) as client" in said
    assert "async with app.router.lifespan_context(app)" in said
    assert len(loads) == loaded_before, "nothing is loaded in a request"
