"""The Open Inference Protocol (KServe V2) REST routes: health, metadata and inference."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.routing import APIRoute
from starlette.requests import Request
from starlette.responses import Response

from loadonce._version import __version__
from loadonce.core.errors import ModelNotReadyError, passes_on_its_own
from loadonce.core.log_safe import quoted
from loadonce.core.model import Model
from loadonce.http.dependencies import registry_of
from loadonce.http.disconnect import unless_disconnected
from loadonce.http.endpoints import InferenceEndpoint, add_inference_route
from loadonce.http.errors import v2_error
from loadonce.http.json_answer import JSONAnswer
from loadonce.http.large_bodies import parse_request_body
from loadonce.http.request_info import arrival_of, requested_timeout, timeout_header_parameter
from loadonce.http.routes import V2Route
from loadonce.http.state import LoadonceState
from loadonce.protocols.v2.body import HEADER_LENGTH, SplitBody, split_body
from loadonce.protocols.v2.classification import EXTENSION as CLASSIFICATION
from loadonce.protocols.v2.described import described_inputs, described_outputs
from loadonce.protocols.v2.errors import find_model
from loadonce.protocols.v2.generate import EXTENSION as GENERATE
from loadonce.protocols.v2.generate import GENERATE_ENDPOINTS
from loadonce.protocols.v2.infer import infer, parse_request
from loadonce.protocols.v2.model_config import model_config
from loadonce.protocols.v2.repository import add_repository_routes
from loadonce.protocols.v2.request_counts import check_counts_before_parsing
from loadonce.protocols.v2.schemas import (
    InferenceRequest,
    InferenceResponse,
    ModelMetadata,
    ModelReady,
    ServerLive,
    ServerMetadata,
    ServerReady,
    V2Error,
)
from loadonce.protocols.v2.statistics import EXTENSION as STATISTICS
from loadonce.protocols.v2.statistics import add_statistics_routes
from loadonce.protocols.v2.unsupported import add_unsupported_routes

SERVER_NAME = "loadonce"
_MODEL = "/v2/models/{model_name}"
_MODEL_VERSION = "/v2/models/{model_name}/versions/{model_version}"
_CATCH_ALL = "/v2/{rest:path}"
_ACCEPT_ENCODING = b"accept-encoding"
_ERROR = {"model": V2Error}
_PATH_PARAMETERS: dict[str, Any] = {
    "parameters": [
        {"name": "model_name", "in": "path", "required": True, "schema": {"type": "string"}},
    ]
}
_VERSION_PARAMETER = {
    "name": "model_version",
    "in": "path",
    "required": True,
    "schema": {"type": "string"},
    "description": "Must be the model's declared version.",
}


def model_of(request: Request) -> Model:
    """The model the path names, in the version it names (if it names one)."""
    params = request.path_params
    return find_model(registry_of(request), params["model_name"], params.get("model_version"))


async def model_infer(request: Request) -> Response:
    """The infer route's work: run by FastAPI's routing, or before it by the inference
    middleware (``http/endpoints.py``); raises loadonce's errors, which the caller answers.
    As the JSON route: no FastAPI parameters to solve, and a full queue refuses before the
    body is read."""
    model = _ready_model(request)
    model.refuse_if_full()
    limits = LoadonceState.of(request).limits
    headers = request.scope["headers"]

    def read(raw: bytes) -> tuple[SplitBody, InferenceRequest]:
        body = split_body(raw, headers)
        check_counts_before_parsing(body.json)
        return body, parse_request(body.json)

    body, parsed = await parse_request_body(request, read)
    encoded = await unless_disconnected(
        request,
        infer(
            model,
            parsed,
            body,
            timeout_s=requested_timeout(request),
            accept_encoding=_header(request, _ACCEPT_ENCODING),
            max_element_bytes=limits.max_element_bytes,
            arrived=arrival_of(request),
        ),
    )
    return Response(encoded.body, headers=encoded.headers)


def _infer_endpoint(versioned: bool) -> InferenceEndpoint:
    return InferenceEndpoint(
        template=f"{_MODEL_VERSION if versioned else _MODEL}/infer",
        handle=model_infer,
        route_class=V2Route,
        openapi={
            "response_model": InferenceResponse,
            "responses": dict.fromkeys((400, 404, 413, 415, 500, 503, 504), _ERROR),
            "summary": "Inference" + (" (one version)" if versioned else ""),
            "openapi_extra": _infer_openapi(_path_parameters(versioned)),
        },
    )


def v2_router(*, model_control: bool = True) -> APIRouter:
    """Every Open Inference Protocol route under ``/v2``; mount it with ``include_router``.

    ``model_control``: whether ``/v2/repository/models/{name}/load`` and ``/unload`` act (off:
    they answer 400, and the server's metadata leaves out the ``model_repository``
    extension). The limits on compressed bodies and BYTES elements are the app's
    (``lifespan(limits=...)``).
    """
    router = APIRouter(route_class=V2Route, tags=["open inference protocol"])
    extensions = ["binary_tensor_data", CLASSIFICATION, "parameters", GENERATE]
    if model_control:
        extensions.append("model_repository")

    async def model_metadata(request: Request) -> ModelMetadata:
        model = _ready_model(request)
        return ModelMetadata(
            name=model.name,
            versions=[model.version],
            platform=model.runtime_name or "",
            inputs=described_inputs(model),
            outputs=described_outputs(model),
        )

    async def model_configuration(request: Request) -> dict[str, Any]:
        return model_config(_ready_model(request))

    async def model_ready(request: Request) -> ModelReady:
        model = model_of(request)
        if not model.is_ready:
            hung = f", {model.hung_calls} hung call(s)" if model.hung_calls else ""
            raise ModelNotReadyError(model.name, f"{model.state.value}{hung}")
        return ModelReady(name=model.name, ready=True)

    # Registered first: routes are matched in order, and inference is the hot path.
    for endpoint in (*INFER_ENDPOINTS, *GENERATE_ENDPOINTS):
        add_inference_route(router, endpoint)

    async def server_metadata(request: Request) -> ServerMetadata:
        listed = list(extensions)
        if LoadonceState.of(request).metrics is not None:
            listed.append(STATISTICS)  # read from the metrics: none without them
        return ServerMetadata(name=SERVER_NAME, version=__version__, extensions=listed)

    # With and without the slash: clients join "v2" and "/" either way.
    for path in ("/v2", "/v2/"):
        router.add_api_route(
            path,
            server_metadata,
            methods=["GET"],
            response_model=ServerMetadata,
            summary="Server metadata",
            include_in_schema=path == "/v2",
        )

    @router.get("/v2/health/live", response_model=ServerLive, summary="The server is live")
    async def server_live() -> ServerLive:
        return ServerLive(live=True)

    @router.get(
        "/v2/health/ready",
        response_model=ServerReady,
        responses={503: _ERROR},
        summary="Every model is ready (models unloaded on request aside)",
    )
    async def server_ready(request: Request) -> Response:
        registry = registry_of(request)
        if registry.is_ready:
            return JSONAnswer({"ready": True})
        if registry.draining:
            return v2_error(503, "the server is stopping: it finishes what it accepted")
        unready = [m for m in registry.models if m.wanted and not m.is_ready]
        waiting = [f"{m.name} ({m.state})" for m in unready]
        why = f"models not ready: {', '.join(waiting)}" if waiting else "no model is loaded"
        answer = v2_error(503, f"not ready; {why}")
        if unready and all(passes_on_its_own(m.state.value) for m in unready):
            answer.headers["Retry-After"] = "1"  # still loading: ready soon (not if failed)
        return answer

    # Before the metadata routes: /v2/models/{model_name} would take "stats" for a name.
    add_statistics_routes(router)

    for path, versioned in ((_MODEL, False), (_MODEL_VERSION, True)):
        parameters = _path_parameters(versioned)
        router.add_api_route(
            path,
            model_metadata,
            methods=["GET"],
            response_model=ModelMetadata,
            responses={404: _ERROR, 503: _ERROR},
            summary="Model metadata: inputs and outputs" + (" (one version)" if versioned else ""),
            openapi_extra=parameters,
        )
        router.add_api_route(
            f"{path}/config",
            model_configuration,
            methods=["GET"],
            responses={404: _ERROR, 503: _ERROR},
            summary="Model configuration, as Triton writes it"
            + (" (one version)" if versioned else ""),
            openapi_extra=parameters,
        )
        router.add_api_route(
            f"{path}/ready",
            model_ready,
            methods=["GET"],
            response_model=ModelReady,
            responses={404: _ERROR, 503: _ERROR},
            summary="The model is ready" + (" (one version)" if versioned else ""),
            openapi_extra=parameters,
        )

    add_repository_routes(router, model_control=model_control)
    add_unsupported_routes(router)

    @router.api_route(
        _CATCH_ALL,
        # Not HEAD: a HEAD matches a GET route partly, and that route answers it (PlainRoute).
        methods=["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE"],
        include_in_schema=False,
    )
    async def unknown_route(request: Request) -> Response:
        # So that a client of another server's extensions (statistics, shared memory...) reads
        # an {"error"} it can report, not FastAPI's {"detail"}.
        allowed = _methods_for_path(router, request)
        if allowed:
            response = v2_error(
                405, f"{request.method} is not allowed here; use {', '.join(sorted(allowed))}"
            )
            response.headers["Allow"] = ", ".join(sorted(allowed))
            return response
        return v2_error(404, f"no such endpoint: {request.method} {quoted(request.url.path)}")

    return router


def _ready_model(request: Request) -> Model:
    model = model_of(request)
    if not model.is_serving:
        # Its inputs and outputs are known from the loaded instances only.
        raise ModelNotReadyError(model.name, model.state.value)
    return model


def _header(request: Request, key: bytes) -> str:
    for name, value in request.scope["headers"]:
        if name == key:
            decoded: str = value.decode("latin-1")
            return decoded
    return ""


def _methods_for_path(router: APIRouter, request: Request) -> set[str]:
    """The methods this router's routes accept at the requested path (empty: no such path)."""
    path = "/v2/" + request.path_params["rest"]
    allowed: set[str] = set()
    for route in router.routes:
        if (
            isinstance(route, APIRoute)
            and route.path != _CATCH_ALL
            and route.path_regex.match(path)
        ):
            allowed |= route.methods or set()
    return allowed | {"HEAD"} if "GET" in allowed else allowed


def _path_parameters(versioned: bool) -> dict[str, Any]:
    parameters = list(_PATH_PARAMETERS["parameters"])
    if versioned:
        parameters.append(_VERSION_PARAMETER)
    return {"parameters": parameters}


def _infer_openapi(path_parameters: dict[str, Any]) -> dict[str, Any]:
    return {
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": InferenceRequest.model_json_schema()},
                "application/octet-stream": {
                    "schema": {"type": "string", "format": "binary"},
                    "description": f"JSON of {HEADER_LENGTH} bytes, then the binary inputs",
                },
            },
        },
        "parameters": [
            *path_parameters["parameters"],
            {
                "name": HEADER_LENGTH,
                "in": "header",
                "required": False,
                "schema": {"type": "integer", "minimum": 0},
                "description": "Size of the JSON at the start of the body; the binary "
                "inputs follow it (binary tensor data extension).",
            },
            timeout_header_parameter(
                "Seconds this request may wait for its answer, queue "
                "included; at most the model's own timeout_s. Past it: 504."
            ),
        ],
    }


# The protocol's inference endpoints, the hot path.
INFER_ENDPOINTS = (_infer_endpoint(versioned=False), _infer_endpoint(versioned=True))
