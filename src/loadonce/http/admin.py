"""Admin routes: reload a model, in every worker, without a pause in service."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.requests import Request

from loadonce.core.control import (
    ControlRequest,
    WorkerOutcome,
    describe_failures,
)
from loadonce.core.errors import InvalidRequestError
from loadonce.http.duplicate_keys import refuse_duplicate_keys
from loadonce.http.json_answer import JSONAnswer
from loadonce.http.large_bodies import parse_request_body
from loadonce.http.routes import LoadonceRoute
from loadonce.http.schemas import ErrorBody
from loadonce.http.state import LoadonceState


class ReloadRequest(BaseModel):
    """All optional: without them, the model reloads from its current spec (the same artifact
    path, read again: a file changed on disk)."""

    model_config = ConfigDict(extra="forbid")

    artifact: str | None = Field(default=None, description="A new artifact, as an absolute path.")
    version: str | None = Field(default=None, description="The version it is served as.")
    sha256: str | None = Field(default=None, description="The new artifact's pin, if pinned.")


class WorkerResult(BaseModel):
    pid: int
    ok: bool
    version: str = Field(description="The version this worker serves after the call.")
    state: str
    error: str | None = None


class ReloadResponse(BaseModel):
    model: str
    ok: bool = Field(description="True when every worker loaded the new version.")
    workers: list[WorkerResult]


def outcome_response(model: str, outcomes: list[WorkerOutcome]) -> JSONAnswer:
    ok = all(o.ok for o in outcomes)
    body = ReloadResponse(
        model=model,
        ok=ok,
        workers=[
            WorkerResult(pid=o.pid, ok=o.ok, version=o.version, state=o.state, error=o.error)
            for o in outcomes
        ],
    )
    if not ok:
        failed = describe_failures(outcomes)
        return JSONAnswer({"error": failed, **body.model_dump()}, status_code=400)
    return JSONAnswer(body.model_dump())


def admin_router() -> APIRouter:
    """``POST /admin/models/{name}/reload``; admin routes need an admin key once keys are set."""
    router = APIRouter(route_class=LoadonceRoute, tags=["admin"])

    @router.post(
        "/admin/models/{name}/reload",
        response_model=ReloadResponse,
        responses={
            400: {"model": ErrorBody, "description": "The new version failed to load somewhere"},
            404: {"model": ErrorBody, "description": "No model of that name"},
            422: {"model": ErrorBody, "description": "The body is not of the expected form"},
        },
        summary="Reload a model in every worker; the loaded version serves until then",
    )
    async def reload_model(
        name: Annotated[str, Path(description="The model's name, as declared.")],
        request: Request,
    ) -> JSONAnswer:
        # Inflated as its Content-Encoding says, as every route's body (415 for another).
        raw = await parse_request_body(request, lambda body: body)
        try:
            body = ReloadRequest.model_validate_json(raw) if raw.strip() else ReloadRequest()
        except ValidationError as exc:
            raise InvalidRequestError.from_validation(exc) from None
        # Off the hot path: always checked (an artifact or pin given twice, read either way).
        refuse_duplicate_keys(raw, held=None)
        outcomes = await LoadonceState.of(request).control.apply(
            ControlRequest(
                action="load",
                model=name,
                artifact=body.artifact,
                version=body.version,
                sha256=body.sha256,
            )
        )
        return outcome_response(name, outcomes)

    return router
