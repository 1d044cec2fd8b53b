"""The Open Inference Protocol's generate extension, as Triton defines it
(``docs/protocol/extension_generate.md`` of triton-inference-server/server):
``POST /v2/models/{name}[/versions/{v}]/generate`` answers ``{"model_name", "model_version",
"text_output"}``; ``.../generate_stream`` answers the same object per piece of text, as
Server-Sent Events.

The request is ``{"text_input": ..., "parameters": {...}}``; as in Triton, any other key of the
body is a parameter too. Parameters are the model's own in Triton: here they are the names its
LLM backends take (vLLM's and TensorRT-LLM's), each mapped to loadonce's, so their clients'
requests work unchanged; any other name is a 400 that lists them.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import pydantic_core
from starlette.requests import Request
from starlette.responses import Response

from loadonce.core.errors import InvalidInputError, InvalidRequestError
from loadonce.core.generation import Delta, Finished, GenerationRequest
from loadonce.http.dependencies import registry_of
from loadonce.http.disconnect import unless_disconnected
from loadonce.http.endpoints import InferenceEndpoint
from loadonce.http.json_answer import JSONAnswer
from loadonce.http.large_bodies import parse_request_body
from loadonce.http.request_info import arrival_of, requested_timeout, timeout_header_parameter
from loadonce.http.routes import V2Route
from loadonce.http.streaming import server_sent_event
from loadonce.protocols.generation import (
    GenerationEvent,
    collect,
    event_stream,
    read_sampling,
    refuse_unknown,
)
from loadonce.protocols.v2.errors import find_model
from loadonce.protocols.v2.schemas import V2Error

__all__ = ["EXTENSION", "GENERATE_ENDPOINTS"]

# The name the server's metadata lists among its extensions.
EXTENSION = "generate"
_INPUT = "text_input"
_PARAMETERS = "parameters"

# The sampling parameters as Triton's LLM backends name them, each to loadonce's name.
_SAMPLING = {
    "max_tokens": "max_new_tokens",  # vLLM; TensorRT-LLM's ensemble
    "max_new_tokens": "max_new_tokens",  # older TensorRT-LLM ensembles
    "temperature": "temperature",
    "top_p": "top_p",
    "top_k": "top_k",
    "seed": "seed",  # vLLM
    "random_seed": "seed",  # TensorRT-LLM
    "repetition_penalty": "repetition_penalty",
    "stop": "stop",  # vLLM
    "stop_words": "stop",  # TensorRT-LLM
}
# vLLM's additional outputs, asked for one by one (docs/additional_outputs.md of its backend):
# each true flag adds its field to the answer (the last event of a stream).
_OUTPUT_FLAGS = {
    "return_finish_reason": "finish_reason",
    "return_num_input_tokens": "num_input_tokens",
    "return_num_output_tokens": "num_output_tokens",
}
# The backends' "stream" flag: the URL decides here. "bad_words": TensorRT-LLM's clients send
# it empty, which asks for nothing; a word list is refused.
_IGNORED = ("stream", "bad_words")
_ACCEPTED = [*_SAMPLING, *_OUTPUT_FLAGS, *_IGNORED]


class _Asked:
    """What a generate request asks: the generation, and the extra fields of its answer."""

    def __init__(self, generation: GenerationRequest, outputs: list[str]) -> None:
        self.generation = generation
        self.outputs = outputs


def _read(raw: bytes) -> _Asked:
    try:
        body = pydantic_core.from_json(raw)
    except ValueError as exc:
        raise InvalidRequestError([("body", f"Invalid JSON: {exc}")]) from None
    if not isinstance(body, dict):
        raise InvalidRequestError([("body", "must be a JSON object")])
    prompt = body.get(_INPUT)
    if not isinstance(prompt, str):
        raise InvalidRequestError([(f"body.{_INPUT}", "a string is required")])
    nested = body.get(_PARAMETERS, {})
    if not isinstance(nested, dict):
        raise InvalidRequestError([(f"body.{_PARAMETERS}", "must be a JSON object")])
    # Any other key of the body is a parameter too (the extension's note), written where it is.
    given: dict[str, tuple[str, Any]] = {}
    for where, found in (("body", body), (f"body.{_PARAMETERS}", nested)):
        for name, value in found.items():
            if where == "body" and name in (_INPUT, _PARAMETERS):
                continue
            if name in given:
                raise InvalidInputError(f"parameter '{name[:100]}' is given twice")
            given[name] = (f"{where}.{name}", value)
    refuse_unknown(given, _ACCEPTED, "parameter")
    return _Asked(_generation(prompt, given), _outputs(given))


def _generation(prompt: str, given: Mapping[str, tuple[str, Any]]) -> GenerationRequest:
    values: dict[str, Any] = {}
    spelled: dict[str, str] = {}
    for name, (where, value) in given.items():
        ours = _SAMPLING.get(name)
        if ours is None:
            continue
        if ours in values:
            raise InvalidInputError(f"'{spelled[ours]}' and '{where}' ask for the same thing")
        if ours == "stop":
            value = _without_empty(value)  # TensorRT-LLM's clients send "" for none
            if value is None:
                continue
        values[ours] = value
        spelled[ours] = where
    _, bad_words = given.get("bad_words", ("", None))
    if _without_empty(bad_words) is not None:
        raise InvalidInputError("bad_words is not supported; send it empty or not at all")
    # Located from "body", with each name where the client wrote it.
    return read_sampling(prompt, values, under="", spelled=spelled)


def _without_empty(value: Any) -> Any:
    """A stop (or bad) word list without its empty strings; None when nothing is left."""
    if value == "" or value == [] or value is None:
        return None
    if isinstance(value, list) and all(isinstance(word, str) for word in value):
        kept = [word for word in value if word]
        return kept or None
    return value


def _outputs(given: Mapping[str, tuple[str, Any]]) -> list[str]:
    """The additional outputs asked for (each flag, and "stream", true or false)."""
    for flag in (*_OUTPUT_FLAGS, "stream"):
        where, value = given.get(flag, ("", False))
        if not isinstance(value, bool):
            raise InvalidRequestError([(where, "must be true or false")])
    return [field for flag, field in _OUTPUT_FLAGS.items() if given.get(flag, ("", False))[1]]


def _extra(finished: Finished, outputs: list[str]) -> dict[str, Any]:
    every: dict[str, Any] = {
        "finish_reason": finished.reason,
        "num_input_tokens": finished.prompt_tokens,
        "num_output_tokens": finished.completion_tokens,
    }
    return {field: every[field] for field in outputs}


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


async def _answer(request: Request, *, stream: bool) -> Response:
    params = request.path_params
    model = find_model(registry_of(request), params["model_name"], params.get("model_version"))
    generation = model.generation
    if generation is not None:
        generation.refuse_if_full()  # before the body is read, as infer
    asked = await parse_request_body(request, _read)
    events = model.generate(
        asked.generation, timeout=requested_timeout(request), arrived=arrival_of(request)
    )
    head = {"model_name": model.name, "model_version": model.version}
    if not stream:
        text, finished = await unless_disconnected(request, collect(events))
        return JSONAnswer({**head, "text_output": text, **_extra(finished, asked.outputs)})

    def encode(event: GenerationEvent) -> bytes | None:
        if isinstance(event, Delta):
            if not event.text:
                return None
            return server_sent_event(_dumps({**head, "text_output": event.text}))
        if not asked.outputs:
            return None  # the stream's end says it ended
        extra = _extra(event, asked.outputs)
        return server_sent_event(_dumps({**head, "text_output": "", **extra}))

    def on_error(status: int, message: str) -> bytes:
        return server_sent_event(_dumps({"error": message}))

    return await event_stream(request, events, encode, on_error)


async def model_generate(request: Request) -> Response:
    """``/generate``: the whole text in one answer."""
    return await _answer(request, stream=False)


async def model_generate_stream(request: Request) -> Response:
    """``/generate_stream``: the text as it is generated, as Server-Sent Events."""
    return await _answer(request, stream=True)


_REQUEST_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": [_INPUT],
    "properties": {
        _INPUT: {"type": "string", "description": "The text the model continues."},
        _PARAMETERS: {
            "type": "object",
            "description": "Any of: " + ", ".join(_ACCEPTED) + ". Each may also be a key of "
            "the body itself, as in Triton.",
        },
    },
    "examples": [{_INPUT: "Once upon a time", _PARAMETERS: {"max_tokens": 20}}],
}


def _endpoint(versioned: bool, stream: bool) -> InferenceEndpoint:
    model = "/v2/models/{model_name}" + ("/versions/{model_version}" if versioned else "")
    parameters: list[dict[str, Any]] = [
        {"name": "model_name", "in": "path", "required": True, "schema": {"type": "string"}},
    ]
    if versioned:
        parameters.append(
            {"name": "model_version", "in": "path", "required": True, "schema": {"type": "string"}}
        )
    parameters.append(
        timeout_header_parameter(
            "Seconds this request may take, queue included. Past it before "
            "the first token: 504; after it, the text so far."
        )
    )
    ok: dict[str, Any] = (
        {
            "description": "Server-Sent Events: one answer object per piece of text",
            "content": {"text/event-stream": {"schema": {"type": "string"}}},
        }
        if stream
        else {"description": '{"model_name", "model_version", "text_output"}'}
    )
    return InferenceEndpoint(
        template=f"{model}/{'generate_stream' if stream else 'generate'}",
        handle=model_generate_stream if stream else model_generate,
        route_class=V2Route,
        openapi={
            "responses": {
                200: ok,
                **{code: {"model": V2Error} for code in (400, 404, 500, 503, 504)},
            },
            "summary": ("Generate text, streamed" if stream else "Generate text")
            + (" (one version)" if versioned else ""),
            "openapi_extra": {
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": _REQUEST_SCHEMA}},
                },
                "parameters": parameters,
            },
        },
    )


GENERATE_ENDPOINTS = tuple(
    _endpoint(versioned, stream) for versioned in (False, True) for stream in (False, True)
)
