"""A user's own FastAPI app, as the README's library mode shows: its own lifespan, route and
dependency beside loadonce's routers. Tests copy it into a directory of its own and serve it
with `loadonce serve my_service:app` from there (no PYTHONPATH), and under plain uvicorn."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import Depends, FastAPI

import loadonce


class Doubler:
    def predict(self, batch: list[Any]) -> list[float]:
        return [2 * float(x) for x in batch]


def load_doubler() -> Doubler:
    if os.environ.get("MY_SERVICE_BROKEN"):
        raise RuntimeError("the weights are corrupt")
    return Doubler()


@asynccontextmanager
async def own_lifespan(app: FastAPI) -> AsyncIterator[None]:
    if os.environ.get("MY_SERVICE_DATABASE_DOWN"):
        raise RuntimeError("database unreachable")
    # A synchronous database migration: it blocks the event loop for that long.
    time.sleep(float(os.environ.get("MY_SERVICE_MIGRATION_S", "0")))
    app.state.greeting = "hello"  # the models are loaded already
    print("my_service: own startup done", file=sys.stderr, flush=True)
    yield
    if os.environ.get("MY_SERVICE_POOL_CLOSE_FAILS"):
        raise RuntimeError("pool close failed")


models = [loadonce.ModelSpec(name="doubler", loader=load_doubler, input_shape=())]
app = FastAPI(lifespan=loadonce.lifespan(models, wrap=own_lifespan))
app.include_router(loadonce.models_router())
app.include_router(loadonce.v2_router())

DOUBLER = loadonce.ModelDependency("doubler")


@app.get("/hello/{x}")
async def hello(x: float, model: Annotated[loadonce.Model, Depends(DOUBLER)]) -> dict[str, Any]:
    [doubled] = await model.predict(x)
    return {"greeting": app.state.greeting, "doubled": doubled, "pid": os.getpid()}


def create() -> FastAPI:
    """The same app from a factory (`loadonce serve my_service:create --factory`)."""
    return app
