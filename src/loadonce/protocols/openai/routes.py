"""The OpenAI-compatible routes under ``/v1``: models, completions, chat completions and
embeddings, for the ``openai`` client and the tools built on it."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated, Any

from fastapi import APIRouter, Path
from pydantic import BaseModel
from starlette.requests import Request
from starlette.responses import Response

from loadonce.core.errors import ModelNotFoundError, ModelNotReadyError
from loadonce.core.model import Model
from loadonce.http.dependencies import registry_of
from loadonce.http.endpoints import InferenceEndpoint, add_inference_route
from loadonce.http.request_info import timeout_header_parameter
from loadonce.protocols.openai.embeddings import answer_embeddings
from loadonce.protocols.openai.errors import OpenAIRoute
from loadonce.protocols.openai.generation import answer_chat, answer_completion
from loadonce.protocols.openai.schemas import ChatRequest, CompletionRequest, EmbeddingRequest

__all__ = ["openai_router"]


class OpenAIModel(BaseModel):
    id: str
    object: str = "model"
    created: int
    owned_by: str = "loadonce"


class OpenAIModels(BaseModel):
    object: str = "list"
    data: list[OpenAIModel]


class _ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class OpenAIError(BaseModel):
    error: _ErrorDetail


Handler = Callable[[Request], Awaitable[Response]]
ModelId = Annotated[str, Path(description="The model's name, as declared.")]
_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {
        "model": OpenAIError,
        "description": "The request is not valid, or asks for what "
        "loadonce does not do (the field is named in `param`)",
    },
    404: {"model": OpenAIError, "description": "No model of that name"},
    500: {"model": OpenAIError, "description": "The model raised; details in the server log"},
    503: {"model": OpenAIError, "description": "The model is not ready, or its queue is full"},
    504: {"model": OpenAIError, "description": "The deadline passed before the first token"},
}


def openai_router() -> APIRouter:
    """OpenAI's API for the models that generate or embed text: ``GET /v1/models``,
    ``GET /v1/models/{model}``, ``POST /v1/completions``, ``POST /v1/chat/completions`` (both
    streamed as Server-Sent Events with ``"stream": true``) and ``POST /v1/embeddings``.
    Errors are OpenAI's ``{"error": {"message", "type", "param", "code"}}``."""
    router = APIRouter(route_class=OpenAIRoute, tags=["openai"])

    @router.get(
        "/v1/models",
        response_model=OpenAIModels,
        summary="The models that generate or embed text, ready in this worker",
    )
    async def list_models(request: Request) -> OpenAIModels:
        served = [m for m in registry_of(request).models if m.is_ready and _on_v1(m)]
        return OpenAIModels(data=[_listed(m) for m in served])

    @router.get(
        # Any id, slashes too ("org/model", as the client sends it: one segment, encoded):
        # an id no model has is OpenAI's model_not_found, wherever the router is included,
        # not a 404 of no route (the app's own body, in a user's app).
        "/v1/models/{model_name:path}",
        response_model=OpenAIModel,
        responses={404: _ERRORS[404], 503: _ERRORS[503]},
        summary="One model that generates or embeds text",
    )
    async def get_model(model_name: ModelId, request: Request) -> OpenAIModel:
        registry = registry_of(request)
        model = registry.get(model_name)
        if not model.is_serving:
            raise ModelNotReadyError(model.name, model.state.value)
        if not _on_v1(model):
            served = [m.name for m in registry.models if m.is_serving and _on_v1(m)]
            raise ModelNotFoundError(model_name, served)
        return _listed(model)

    endpoints: list[tuple[str, Handler, type[BaseModel], str]] = [
        ("/v1/completions", answer_completion, CompletionRequest, "A text completion"),
        ("/v1/chat/completions", answer_chat, ChatRequest, "A chat completion"),
        ("/v1/embeddings", answer_embeddings, EmbeddingRequest, "One vector per text"),
    ]
    for template, handle, body, summary in endpoints:
        endpoint = InferenceEndpoint(
            template=template,
            handle=handle,
            route_class=OpenAIRoute,
            openapi={
                "responses": _ERRORS,
                "summary": summary,
                "openapi_extra": _openapi(body),
            },
        )
        add_inference_route(router, endpoint)
    return router


def _on_v1(model: Model) -> bool:
    return model.generates or model.embeds_text


def _listed(model: Model) -> OpenAIModel:
    return OpenAIModel(id=model.name, created=int(model.loaded_at or 0))


def _openapi(body: type[BaseModel]) -> dict[str, Any]:
    return {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": _inlined(body.model_json_schema())}},
        },
        "parameters": [
            timeout_header_parameter(
                "Seconds this request may wait for its answer, queue included "
                "(a stream: until its last token); at most the model's own timeout_s."
            ),
        ],
    }


def _inlined(schema: dict[str, Any]) -> dict[str, Any]:
    """The schema with its ``$defs`` written in place: a ``#/$defs/...`` reference means
    nothing inside an OpenAPI document."""
    defs = schema.pop("$defs", {})

    def inline(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref", "")
            if ref.startswith("#/$defs/"):
                return inline(defs[ref.removeprefix("#/$defs/")])
            return {key: inline(value) for key, value in node.items()}
        if isinstance(node, list):
            return [inline(item) for item in node]
        return node

    inlined: dict[str, Any] = inline(schema)
    return inlined
