"""The model repository extension: list the declared models, load and unload them by name.

Only the models declared at startup can be loaded: a load request names one of them, loads
it again if it is loaded (a reload: the loaded instances serve until the new ones are
warm), or loads it back after an unload. Both go through the app's model control, so with
several workers every worker follows (``loadonce.core.control``). Triton's ``config``
parameter may change the batching, and must agree with the model's configuration otherwise
(``config_load.py``); each load starts from the batching declared at startup, a load
without it loads that one again. Its
``file:`` parameters, which would load other files than those declared, are refused.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar

from fastapi import APIRouter
from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import Response

from loadonce.core.control import Action, ControlRequest, describe_failures
from loadonce.core.errors import InvalidRequestError
from loadonce.core.model import Model, ModelState
from loadonce.http.dependencies import registry_of
from loadonce.http.duplicate_keys import refuse_duplicate_keys
from loadonce.http.errors import v2_error
from loadonce.http.json_answer import JSONAnswer
from loadonce.http.large_bodies import parse_request_body
from loadonce.http.state import LoadonceState
from loadonce.protocols.v2.config_load import BatchingChange, batching_from_config
from loadonce.protocols.v2.errors import LoadRefusedError, find_model, model_to_load
from loadonce.protocols.v2.schemas import (
    RepositoryIndexRequest,
    RepositoryModel,
    RepositoryRequest,
    V2Error,
)

_STATES = {
    ModelState.PENDING: "LOADING",
    ModelState.LOADING: "LOADING",
    ModelState.READY: "READY",
    ModelState.RELOADING: "READY",
    ModelState.UNLOADED: "UNAVAILABLE",
    ModelState.FAILED: "UNAVAILABLE",
}
_ERROR = {"model": V2Error}


def add_repository_routes(router: APIRouter, *, model_control: bool) -> None:
    @router.post(
        "/v2/repository/index",
        response_model=list[RepositoryModel],
        responses={400: _ERROR},
        summary="Every declared model and its state (the body may be empty)",
    )
    async def repository_index(request: Request) -> list[RepositoryModel]:
        query = _parse(RepositoryIndexRequest, await _body(request))
        return [
            index_entry(model)
            for model in registry_of(request).models
            if model.is_ready or not query.ready
        ]

    @router.post(
        "/v2/repository/models/{model_name}/load",
        responses={400: _ERROR, 404: _ERROR},
        summary="Load a declared model, or reload it without a pause in service",
    )
    async def repository_load(model_name: str, request: Request) -> Response:
        model = model_to_load(registry_of(request), model_name)
        body = _parse(RepositoryRequest, await _body(request))
        if not model_control:
            return _control_off()
        batching = load_batching(model, body.parameters or {})
        return await _apply(request, model.name, "load", batching)

    @router.post(
        "/v2/repository/models/{model_name}/unload",
        responses={400: _ERROR, 404: _ERROR},
        summary="Unload a model once its queued requests are answered",
    )
    async def repository_unload(model_name: str, request: Request) -> Response:
        model = find_model(registry_of(request), model_name)
        body = _parse(RepositoryRequest, await _body(request))
        check_unload_parameters(body.parameters or {}, under="body.parameters")
        if not model_control:
            return _control_off()
        return await _apply(request, model.name, "unload")


async def _body(request: Request) -> bytes:
    """The body, inflated as its Content-Encoding says (415 for a coding loadonce does not
    take), as every route's: these took a gzip body for broken JSON, and a body in any coding
    as plain."""
    return await parse_request_body(request, lambda raw: raw)


async def _apply(
    request: Request, name: str, action: Action, batching: BatchingChange | None = None
) -> Response:
    """Through the app's model control, so every worker follows; 400 naming any failure."""
    failed = await apply_control(LoadonceState.of(request), name, action, batching)
    if failed:
        return v2_error(400, failed)
    return JSONAnswer({"name": name, action: True})


def load_batching(model: Model, parameters: Mapping[str, Any]) -> BatchingChange:
    """What a load request's parameters ask of ``model`` (REST's or gRPC's): the batching
    declared at startup (Triton loads "the one in the model directory"), with the members its
    ``config`` sets, if any: an earlier load's config does not last into this one;
    ``file:`` parameters are refused (400)."""
    files = [key for key in parameters if key.startswith("file:")]
    if files:
        raise LoadRefusedError(
            model.name,
            f"loading with {', '.join(files)} is not supported: loadonce loads a model "
            "from the files declared at startup",
        )
    if "config" not in parameters:
        return "declared"
    return batching_from_config(model, parameters["config"])


def check_unload_parameters(parameters: Mapping[str, Any], *, under: str) -> None:
    """An unload request's parameters (REST's or gRPC's; ``under``: where they are, for the
    message): ``unload_dependents``, the one the extension defines, is a boolean. Accepted,
    it has nothing to act on: no model depends on another."""
    if "unload_dependents" in parameters and not isinstance(parameters["unload_dependents"], bool):
        raise InvalidRequestError([(f"{under}.unload_dependents", "must be true or false")])


async def apply_control(
    state: LoadonceState, name: str, action: Action, batching: BatchingChange | None = None
) -> str | None:
    """A load or unload through the app's model control, so every worker follows; what
    failed, if anything."""
    outcomes = await state.control.apply(
        ControlRequest(action=action, model=name, batching=batching)
    )
    return describe_failures(outcomes) or None


def index_entry(model: Model) -> RepositoryModel:
    """One model in the repository index: Triton's state names, and why it is not ready."""
    if model.state is ModelState.UNLOADED:
        reason = "unloaded" + (" on request" if not model.wanted else "")
    else:
        reason = model.public_error or ""
    return RepositoryModel(
        name=model.name, version=model.version, state=_STATES[model.state], reason=reason
    )


_Body = TypeVar("_Body", RepositoryIndexRequest, RepositoryRequest)


def _parse(schema: type[_Body], raw: bytes) -> _Body:
    """An empty body is allowed (tritonclient sends one for the index). A key given twice,
    in the body or its parameters, is refused as on the admin route: read either way, a
    ``file:`` parameter followed by ``"parameters": {}`` passed a filter reading the first
    and loaded here as if none was sent."""
    if not raw.strip():
        return schema()
    try:
        parsed = schema.model_validate_json(raw)
    except ValidationError as exc:
        raise InvalidRequestError.from_validation(exc) from None
    # Off the hot path: always checked.
    refuse_duplicate_keys(raw, held=None, members=("parameters",))
    return parsed


def _control_off() -> Response:
    return v2_error(400, "model control is off in this app (v2_router(model_control=False))")
