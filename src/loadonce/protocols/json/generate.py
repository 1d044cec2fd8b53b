"""``POST /models/{name}/generate``: loadonce's own route for a model that generates text,
answered whole or, with ``"stream": true``, as Server-Sent Events."""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.requests import Request
from starlette.responses import Response

from loadonce.core.errors import InvalidRequestError
from loadonce.core.generation import Delta, Finished
from loadonce.http.dependencies import registry_of
from loadonce.http.disconnect import unless_disconnected
from loadonce.http.duplicate_keys import refuse_duplicate_keys
from loadonce.http.endpoints import InferenceEndpoint
from loadonce.http.json_answer import JSONAnswer
from loadonce.http.large_bodies import parse_request_body
from loadonce.http.request_info import (
    arrival_of,
    request_id_of,
    requested_timeout,
    timeout_header_parameter,
)
from loadonce.http.routes import LoadonceRoute
from loadonce.http.schemas import ErrorBody
from loadonce.http.streaming import server_sent_event
from loadonce.protocols.generation import (
    SAMPLING_PARAMETERS,
    GenerationEvent,
    collect,
    event_stream,
    read_sampling,
    refuse_unknown,
)
from loadonce.protocols.json.openapi import MODEL_NAME_PARAMETER

__all__ = ["GENERATE_ENDPOINT"]

_ACCEPTED = list(SAMPLING_PARAMETERS)


class GenerateRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        json_schema_extra={
            "examples": [{"prompt": "Once upon a time", "parameters": {"max_new_tokens": 20}}]
        },
    )

    prompt: str = Field(description="The text the model continues.")
    parameters: dict[str, Any] | None = Field(
        default=None,
        description="How to generate, by name: max_new_tokens (at most the model's cap), "
        "temperature, top_p, top_k, seed, repetition_penalty, stop (a string or a list of "
        "strings that end the text where first generated; not part of it). Unset: the "
        "model's defaults. Any other name is a 400.",
    )
    stream: bool = Field(
        default=False,
        description='Answer as Server-Sent Events: one {"text"} per piece as it is '
        'generated, then {"finish_reason", "usage"}.',
    )


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int


class GenerateResponse(BaseModel):
    model: str
    version: str
    text: str
    finish_reason: Literal["stop", "length", "deadline"] = Field(
        description="stop: the model ended it, or a stop string; length: max_new_tokens; "
        "deadline: the request's deadline passed while generating (the text so far)."
    )
    usage: Usage


def _parse(raw: bytes) -> GenerateRequest:
    try:
        parsed = GenerateRequest.model_validate_json(raw)
    except ValidationError as exc:
        raise InvalidRequestError.from_validation(exc) from None
    held = [parsed.model_fields_set, parsed.parameters or ()]
    refuse_duplicate_keys(raw, held=held, members=("parameters",))
    return parsed


def _usage(finished: Finished) -> dict[str, int]:
    return {
        "prompt_tokens": finished.prompt_tokens,
        "completion_tokens": finished.completion_tokens,
    }


def _event(event: GenerationEvent) -> bytes | None:
    if isinstance(event, Delta):
        # A step that completes no character yet (or whose text a stop string may begin)
        # says nothing: no empty event.
        return server_sent_event(_dumps({"text": event.text})) if event.text else None
    return server_sent_event(_dumps({"finish_reason": event.reason, "usage": _usage(event)}))


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


async def answer_generate(request: Request) -> Response:
    """The generate route's work, run by FastAPI's routing or the inference middleware
    (``http/endpoints.py``); raises loadonce's errors, which the caller answers."""
    model = registry_of(request).get(request.path_params["name"])
    generation = model.generation
    if generation is not None:
        # As predict: a full queue refuses before the body is read.
        generation.refuse_if_full()
    body = await parse_request_body(request, _parse)
    refuse_unknown(body.parameters or {}, _ACCEPTED, "parameter")
    asked = read_sampling(body.prompt, body.parameters or {}, under="body.parameters")
    events = model.generate(asked, timeout=requested_timeout(request), arrived=arrival_of(request))
    if body.stream:
        request_id = request_id_of(request)

        def on_error(status: int, message: str) -> bytes:
            return server_sent_event(_dumps({"error": message, "request_id": request_id}))

        return await event_stream(request, events, _event, on_error)
    text, finished = await unless_disconnected(request, collect(events))
    return JSONAnswer(
        {
            "model": model.name,
            "version": model.version,
            "text": text,
            "finish_reason": finished.reason,
            "usage": _usage(finished),
        }
    )


_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {
        "model": ErrorBody,
        "description": "The model does not generate, or cannot take what was asked "
        "(an unknown parameter, max_new_tokens over its cap, a prompt over its context)",
    },
    404: {"model": ErrorBody, "description": "No model of that name"},
    422: {"model": ErrorBody, "description": "The body is not valid JSON of the expected form"},
    500: {"model": ErrorBody, "description": "The model raised; details in the server log"},
    503: {"model": ErrorBody, "description": "The model is not ready, or its queue is full"},
    504: {"model": ErrorBody, "description": "The deadline passed before the first token"},
}

_OPENAPI: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": GenerateRequest.model_json_schema()}},
    },
    "parameters": [
        MODEL_NAME_PARAMETER,
        timeout_header_parameter(
            "Seconds this request may take, queue included; at most the "
            "model's own timeout_s. Past it before the first token: 504; after it: the "
            'text so far, finish_reason "deadline".'
        ),
    ],
}

GENERATE_ENDPOINT = InferenceEndpoint(
    template="/models/{name}/generate",
    handle=answer_generate,
    route_class=LoadonceRoute,
    openapi={
        "response_model": GenerateResponse,
        "responses": {
            **_ERRORS,
            200: {
                "description": 'The whole text; with "stream": true, Server-Sent Events',
                "content": {"text/event-stream": {"schema": {"type": "string"}}},
            },
        },
        "summary": "Generate text from a prompt, whole or streamed",
        "openapi_extra": _OPENAPI,
    },
)
