"""The plain JSON routes: list models, describe one, predict (and generate: ``generate.py``)."""

from __future__ import annotations

import os
from collections.abc import Collection, Mapping
from typing import Annotated, Any

import anyio.to_thread
import pydantic_core
from fastapi import APIRouter, Depends, Path
from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import Response

from loadonce.core.errors import InvalidInputError, InvalidRequestError
from loadonce.core.inputs import split_examples
from loadonce.core.jsonable import to_jsonable
from loadonce.core.model import Answer, Model, ModelState
from loadonce.core.registry import Registry
from loadonce.core.signature import InputSignature
from loadonce.core.utf8 import utf8
from loadonce.http.dependencies import get_registry, registry_of
from loadonce.http.disconnect import unless_disconnected
from loadonce.http.duplicate_keys import refuse_duplicate_keys
from loadonce.http.endpoints import InferenceEndpoint, add_inference_route
from loadonce.http.json_answer import JSONAnswer, json_text
from loadonce.http.json_pieces import ON_THE_LOOP_ELEMENTS, json_in_pieces, weight
from loadonce.http.large_bodies import LARGE_BODY_BYTES, parse_request_body
from loadonce.http.metrics import WorkerState
from loadonce.http.request_info import arrival_of, requested_timeout, timeout_header_parameter
from loadonce.http.routes import LoadonceRoute
from loadonce.http.schemas import (
    ErrorBody,
    MemoryTaken,
    ModelInfo,
    ModelsResponse,
    PredictRequest,
    PredictResponse,
    QueueInfo,
    Tensor,
    WorkerModel,
)
from loadonce.http.state import LoadonceState
from loadonce.protocols.json.count import JsonArray, top_level_elements
from loadonce.protocols.json.generate import GENERATE_ENDPOINT
from loadonce.protocols.json.openapi import MODEL_NAME_PARAMETER
from loadonce.runtimes import SELECTED_OUTPUTS, TensorInfo
from loadonce.tracing import phase

RegistryDep = Annotated[Registry, Depends(get_registry)]
ModelName = Annotated[str, Path(description="The model's name, as declared.")]
_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorBody, "description": "The inputs do not fit the model"},
    404: {"model": ErrorBody, "description": "No model of that name"},
    422: {"model": ErrorBody, "description": "The body is not valid JSON of the expected form"},
    500: {"model": ErrorBody, "description": "The model raised; details in the server log"},
    503: {"model": ErrorBody, "description": "The model is not ready, or its queue is full"},
    504: {"model": ErrorBody, "description": "The deadline passed before the model answered"},
}


async def worker_states(request: Request) -> dict[str, list[WorkerState]] | None:
    metrics = LoadonceState.of(request).metrics
    if metrics is None:
        return None
    return await anyio.to_thread.run_sync(metrics.worker_states)


def describe_model(model: Model, workers: dict[str, list[WorkerState]] | None = None) -> ModelInfo:
    memory = model.load_memory
    signature = model.signature
    return ModelInfo(
        name=model.name,
        version=model.version,
        runtime=model.runtime_name,
        state=model.state,
        concurrency=None if model.concurrency is None else str(model.concurrency),
        worker_pid=model.worker_pid,
        load_count=model.load_count,
        load_seconds=model.load_seconds,
        loaded_at=model.loaded_at,
        memory=None
        if memory is None
        else MemoryTaken(
            rss_bytes=memory.rss,
            uss_bytes=memory.uss,
            pss_bytes=memory.pss,
            mapped_bytes=model.mapped_bytes,
        ),
        weights_shared=model.shares_weights,
        input_shape=None if signature is None else list(signature.shape),
        input_dtype=None if signature is None else signature.dtype,
        inputs=[_tensor(t) for t in model.inputs],
        outputs=[_tensor(t) for t in model.outputs],
        request_parameters=sorted(model.request_parameters - {SELECTED_OUTPUTS}),
        generates=model.generates,
        embeds_text=model.embeds_text,
        queue=_queue_info(model),
        error=model.public_error,
        workers=None
        if workers is None
        else [
            WorkerModel(pid=w.pid, version=w.version, state=ModelState(w.state))
            for w in workers.get(model.name, [])
        ],
    )


_PREDICT_OPENAPI: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": PredictRequest.model_json_schema()}},
    },
    "parameters": [
        MODEL_NAME_PARAMETER,
        timeout_header_parameter(
            "Seconds this request may wait for its answer, queue included; "
            "at most the model's own timeout_s. Past it: 504."
        ),
    ],
}


def _parse_body(raw: bytes) -> PredictRequest:
    try:
        return PredictRequest.model_validate_json(raw)
    except ValidationError as exc:
        raise InvalidRequestError.from_validation(exc) from None


def examples_in_body(found: JsonArray, signature: InputSignature | None) -> int | None:
    """How many examples a predict body's ``inputs`` holds: a list of examples when nested
    one level deeper than an example, as ``split_examples`` decides. None when not sure."""
    if signature is None:
        return found.count
    rank = len(signature.shape)
    if found.nesting == rank + 1:
        return found.count
    return 1 if found.nesting == rank else None


def _parse_in_pieces(raw: bytes, found: JsonArray) -> PredictRequest:
    """A large body parsed a piece of ``inputs`` at a time: pydantic-core holds the GIL for
    a whole parse, and between pieces the event loop gets it back. The rest of the body is
    validated as usual, with ``inputs`` left empty."""
    rest = _parse_body(raw[: found.start] + raw[found.end :])  # "inputs": [] and the rest
    inputs: list[Any] = []
    for begin, end in found.pieces(_PIECE_BYTES):
        piece = raw[begin:end]
        try:
            if found.count and not piece.strip():
                raise ValueError("a value is missing between two commas, or after the last")
            inputs.extend(pydantic_core.from_json(b"[" + piece + b"]"))
        except ValueError as exc:
            raise InvalidRequestError([("body.inputs", f"Invalid JSON: {exc}")]) from None
    # The rest's copy: the fields it was given stay the ones given (``_held_keys``).
    return rest.model_copy(update={"inputs": inputs})


# A piece of a large body parsed at once: about 5 ms of the GIL on this machine.
_PIECE_BYTES = 128 * 1024


def _queue_info(model: Model) -> QueueInfo | None:
    generation = model.generation
    if generation is not None:  # a generating model's requests wait in its own queue
        # Every version's: a reload's old queue still holds what it accepted.
        return QueueInfo(
            queued_examples=model.queued,
            max_queue=generation.max_queue,
            max_batch_size=generation.max_sequences,
            timeout_s=model.spec.timeout_s,
            seconds_per_call=generation.seconds_per_step,
            generating=model.generating,
        )
    batcher = model.batcher
    if batcher is None:
        return None
    return QueueInfo(
        queued_examples=batcher.queued_examples,
        max_queue=batcher.max_queue,
        max_batch_size=batcher.max_batch_size,
        timeout_s=model.spec.timeout_s,
        seconds_per_call=batcher.seconds_per_call,
    )


def _tensor(info: TensorInfo) -> Tensor:
    shape = None if info.shape is None else list(info.shape)
    return Tensor(name=info.name, dtype=info.dtype, shape=shape)


def models_router() -> APIRouter:
    """``GET /models``, ``GET /models/{name}``, ``POST /models/{name}/predict`` and
    ``POST /models/{name}/generate``."""
    router = APIRouter(route_class=LoadonceRoute, tags=["models"])

    @router.get("/models", response_model=ModelsResponse, summary="Every model in this worker")
    async def list_models(registry: RegistryDep, request: Request) -> ModelsResponse:
        workers = await worker_states(request)
        return ModelsResponse(
            worker_pid=os.getpid(), models=[describe_model(m, workers) for m in registry.models]
        )

    @router.get(
        "/models/{name}",
        response_model=ModelInfo,
        responses={404: _ERRORS[404]},
        summary="One model in this worker",
    )
    async def get_model(name: ModelName, registry: RegistryDep, request: Request) -> ModelInfo:
        return describe_model(registry.get(name), await worker_states(request))

    add_inference_route(router, PREDICT_ENDPOINT)
    add_inference_route(router, GENERATE_ENDPOINT)
    return router


async def answer_predict(request: Request) -> Response:
    """The predict route's work: run by FastAPI's routing, or before it by the inference
    middleware (``http/endpoints.py``); raises loadonce's errors, which the caller answers.

    The body and the X-Request-Timeout header are read here, not declared as FastAPI
    parameters: dependency solving was a quarter of the event loop's time per request
    (docs/benchmarks.md), and pydantic-core parses and validates the JSON in one pass.
    """
    model = registry_of(request).get(request.path_params["name"])
    # Refused before the body is read and parsed: under overload, rejecting must cost the
    # event loop as little as possible, or it starves the model it protects.
    model.refuse_if_full()
    signature, named = model.signature, model.inputs

    def read(raw: bytes) -> tuple[list[Any], PredictRequest]:
        # Parsed and split together: for a large body, both off the event loop, and only
        # once its examples are counted (a request of too many is refused unparsed).
        found = top_level_elements(raw) if len(raw) >= LARGE_BODY_BYTES else None
        if found is None:
            parsed = _parse_body(raw)
            # A body of one colon holds one key, none twice: the usual one, {"inputs": [...]},
            # is cleared by two memchr calls (the check's Python, 12k instructions a request).
            if raw.find(b":", raw.find(b":") + 1) >= 0:
                refuse_duplicate_keys(raw, held=_held_keys(parsed), members=_KEYED_MEMBERS)
            return split_examples(parsed.inputs, signature, named), parsed
        counted = examples_in_body(found, signature)
        if counted is not None:
            model.refuse_if_too_many(counted)
        parsed = _parse_in_pieces(raw, found)
        # The rest of the body only: "inputs" is an array here, and appears once.
        rest = raw[: found.start] + raw[found.end :]
        refuse_duplicate_keys(rest, held=_held_keys(parsed), members=_KEYED_MEMBERS)
        return split_examples(parsed.inputs, signature, named), parsed

    examples, body = await parse_request_body(request, read)
    timeout = requested_timeout(request)
    picked = body.outputs
    parameters = _taken(model, body.parameters)
    if picked is not None:
        parameters = {**(parameters or {}), SELECTED_OUTPUTS: tuple(_known(model, picked))}

    async def encode(answer: Answer) -> Response:
        outputs = answer.outputs
        if picked is not None:
            outputs = [_picked(output, picked, model) for output in outputs]
        # Built by hand rather than through response_model: outputs may hold NumPy values,
        # and a second validation pass of large outputs would cost time on every request.
        with phase("encode"):
            if weight(outputs) <= ON_THE_LOOP_ELEMENTS:
                outputs_json = to_jsonable(outputs)
                return JSONAnswer(
                    {"model": model.name, "version": answer.version, "outputs": outputs_json}
                )
            body = await anyio.to_thread.run_sync(
                _large_answer, model.name, answer.version, outputs
            )
            return Response(body, media_type="application/json")

    return await unless_disconnected(
        request,
        model.answer_encoded(
            examples, encode, timeout=timeout, parameters=parameters, arrived=arrival_of(request)
        ),
    )


# The members of a predict body whose own keys loadonce reads: the request parameters, and
# named inputs when "inputs" is an object.
_KEYED_MEMBERS = ("parameters", "inputs")


def _held_keys(parsed: PredictRequest) -> list[Collection[str]]:
    """The keys the parse kept in each object of the body whose keys loadonce reads
    (``http/duplicate_keys.py``): its own fields given, and its parameters' and named
    inputs' where it has them."""
    held: list[Collection[str]] = [parsed.model_fields_set]
    if parsed.parameters:
        held.append(parsed.parameters)
    if isinstance(parsed.inputs, dict):
        held.append(parsed.inputs)
    return held


def _large_answer(name: str, version: str, outputs: list[Any]) -> bytes:
    """An answer of many values, in a thread and in pieces (``http/json_pieces.py``)."""
    head = json_text({"model": name, "version": version})
    written = json_in_pieces(outputs, json_text, to_jsonable)
    return utf8(head[:-1] + ',"outputs":' + written + "}")


PREDICT_ENDPOINT = InferenceEndpoint(
    template="/models/{name}/predict",
    handle=answer_predict,
    route_class=LoadonceRoute,
    openapi={
        "response_model": PredictResponse,
        "responses": _ERRORS,
        "summary": "Predict for one example or a list of examples",
        "openapi_extra": _PREDICT_OPENAPI,
    },
)


def _taken(model: Model, parameters: dict[str, Any] | None) -> dict[str, Any] | None:
    """The request's parameters, each one the model takes (else 400: unlike the Open
    Inference Protocol's, this route's parameters are all the model's)."""
    if not parameters:
        return None
    taken = model.request_parameters - {SELECTED_OUTPUTS}
    for name in parameters:
        if name not in taken:
            listing = ", ".join(sorted(taken)) if taken else "none"
            raise InvalidInputError(
                f"unknown parameter '{name[:100]}'; this model takes: {listing}"
            )
    return parameters


def _known(model: Model, picked: list[str]) -> list[str]:
    """The names picked, each one of the model's declared outputs, none twice (else 400)."""
    declared = [tensor.name for tensor in model.outputs]
    if len(set(picked)) != len(picked):
        raise InvalidInputError("an output is picked twice")
    for name in picked:
        if name not in declared:
            listing = ", ".join(declared) if declared else "none declared"
            raise InvalidInputError(f"unknown output '{name}'; the model's outputs are {listing}")
    return picked


def _picked(output: Any, picked: list[str], model: Model) -> dict[str, Any]:
    """One example's output as ``{name: value}`` for the names picked: a model that computes
    outputs on request answered them so already; another's object is narrowed, and its single
    value is its first declared output."""
    first = model.outputs[0].name
    if isinstance(output, Mapping) and (len(model.outputs) > 1 or first in output):
        return {name: output[name] for name in picked}
    # Else the model's one declared output is the object itself (a zero-shot classifier's
    # {"sequence", "labels", "scores"}: its "output" document under /v2).
    if picked != [first]:
        # A model that answers one value per example computed its default output only.
        raise InvalidInputError(
            f"this model answers only its output '{first}' (it cannot compute "
            f"{', '.join(repr(name) for name in picked if name != first)} on request)"
        )
    return {first: output}
