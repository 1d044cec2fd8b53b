"""The plain FastAPI servers loadonce is compared with: the model loaded once in a lifespan.

`uvicorn bench.plain_apps:sync_app` (a `def` handler, run in Starlette's threadpool),
`per_request_app` (the anti-pattern loadonce exists to avoid: the model loaded inside the
handler, on every request),
`async_app` (an `async def` handler calling predict on the event loop: fastest for a tiny
model, but it blocks the loop), and `http_bound` (parses the same body, returns a constant:
the HTTP stack alone). BENCH_ARTIFACT names the model file.

`transformers_app` (`bench.transformers`): a text-classification pipeline built once from the
model directory BENCH_ARTIFACT names, called per request in a `def` handler.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from pydantic import BaseModel

from bench.models import load


class Body(BaseModel):
    inputs: list[list[float]]


class TextBody(BaseModel):
    inputs: list[str]


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    app.state.model = load(Path(os.environ["BENCH_ARTIFACT"]))
    yield


@asynccontextmanager
async def pipeline_lifespan(app: FastAPI) -> AsyncIterator[None]:
    # Imported here, not at the top: the scikit-learn apps need not import torch.
    from transformers import pipeline

    directory = os.environ["BENCH_ARTIFACT"]
    app.state.pipeline = pipeline("text-classification", model=directory, tokenizer=directory)
    yield


sync_app = FastAPI(lifespan=lifespan)
async_app = FastAPI(lifespan=lifespan)
http_bound = FastAPI()
per_request_app = FastAPI()
transformers_app = FastAPI(lifespan=pipeline_lifespan)


@sync_app.post("/models/m/predict")
def predict_sync(body: Body, request: Request) -> dict[str, Any]:
    return {"outputs": request.app.state.model.predict(np.asarray(body.inputs)).tolist()}


@async_app.post("/models/m/predict")
async def predict_async(body: Body, request: Request) -> dict[str, Any]:
    return {"outputs": request.app.state.model.predict(np.asarray(body.inputs)).tolist()}


@per_request_app.post("/models/m/predict")
def predict_loading_each_time(body: Body) -> dict[str, Any]:
    model = load(Path(os.environ["BENCH_ARTIFACT"]))
    return {"outputs": model.predict(np.asarray(body.inputs)).tolist()}  # type: ignore[attr-defined]


@http_bound.post("/models/m/predict")
async def constant(body: Body) -> dict[str, Any]:
    return {"outputs": [0]}


@transformers_app.post("/models/m/predict")
def classify(body: TextBody, request: Request) -> dict[str, Any]:
    return {"outputs": request.app.state.pipeline(body.inputs)}
