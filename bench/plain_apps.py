"""The plain FastAPI servers loadonce is compared with: the model loaded once in a lifespan.

`uvicorn bench.plain_apps:sync_app` (a `def` handler, run in Starlette's threadpool),
`per_request_app` (the anti-pattern loadonce exists to avoid: the model loaded inside the
handler, on every request),
`async_app` (an `async def` handler calling predict on the event loop: fastest for a tiny
model, but it blocks the loop), and two bounds with no model: `http_bound` (a FastAPI route
that parses the same body, returns a constant: FastAPI's stack alone) and `raw_floor` (a raw
ASGI app, no Starlette: reads the whole body, `json.loads` it, sends a constant; the floor
under any Python server on this uvicorn). BENCH_ARTIFACT names the model file.

`transformers_app` (`bench.transformers`): a text-classification pipeline built once from the
model directory BENCH_ARTIFACT names, called per request in a `def` handler.
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator, Awaitable, Callable
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


Message = dict[str, Any]
_CONSTANT = b'{"outputs":[0]}'
_ANSWER_HEADERS = [
    (b"content-type", b"application/json"),
    (b"content-length", str(len(_CONSTANT)).encode()),
]


async def raw_floor(
    scope: dict[str, Any],
    receive: Callable[[], Awaitable[Message]],
    send: Callable[[Message], Awaitable[None]],
) -> None:
    """The raw-HTTP floor: what uvicorn alone costs a request with this body. Any path, any
    method: the whole body read, parsed with `json.loads`, and the same answer as
    `http_bound` sent (400 for a body that is not JSON)."""
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] != "http":
        return
    chunks = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    try:
        json.loads(b"".join(chunks))
    except ValueError:
        await send({"type": "http.response.start", "status": 400, "headers": []})
        await send({"type": "http.response.body", "body": b""})
        return
    await send({"type": "http.response.start", "status": 200, "headers": _ANSWER_HEADERS})
    await send({"type": "http.response.body", "body": _CONSTANT})


@transformers_app.post("/models/m/predict")
def classify(body: TextBody, request: Request) -> dict[str, Any]:
    return {"outputs": request.app.state.pipeline(body.inputs)}


class GenerateBody(BaseModel):
    prompt: str
    parameters: dict[str, int] = {}
    stream: bool = True


@asynccontextmanager
async def generator_lifespan(app: FastAPI) -> AsyncIterator[None]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    directory = os.environ["BENCH_ARTIFACT"]
    model = AutoModelForCausalLM.from_pretrained(directory)
    model.eval()  # type: ignore[no-untyped-call]
    app.state.model = model
    app.state.tokenizer = AutoTokenizer.from_pretrained(directory)
    yield


# `generate_app` (`bench.generate`): a causal LM loaded once; each request runs the model's own
# `generate` in a thread of its own with a TextIteratorStreamer, whose text is sent as
# Server-Sent Events (the pattern transformers documents for streaming).
generate_app = FastAPI(lifespan=generator_lifespan)


@generate_app.post("/models/m/generate")
def generate_streaming(body: GenerateBody, request: Request) -> Any:
    import threading

    from fastapi.responses import StreamingResponse
    from transformers import TextIteratorStreamer

    model, tokenizer = request.app.state.model, request.app.state.tokenizer
    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    inputs = tokenizer(body.prompt, return_tensors="pt")
    settings = {"max_new_tokens": body.parameters.get("max_new_tokens", 64), "do_sample": False}
    threading.Thread(
        target=model.generate, kwargs={**inputs, **settings, "streamer": streamer}, daemon=True
    ).start()

    def events() -> Any:
        for text in streamer:
            yield f"data: {json.dumps({'text': text})}\n\n"
        yield f"data: {json.dumps({'finish_reason': 'length'})}\n\n"

    return StreamingResponse(events(), media_type="text/event-stream")
