"""A user's handler gets its model through a dependency, which tests can replace."""

from __future__ import annotations

from typing import Annotated, Any

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
