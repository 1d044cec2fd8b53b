"""How the Open Inference Protocol routes answer errors: ``{"error": "<message>"}``, always."""

from __future__ import annotations

from fastapi.exceptions import RequestValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from loadonce._errors import LoadonceError, ModelNotFoundError
from loadonce._http import REQUEST_ID_HEADER, LoadonceRoute, invalid_fields, status_and_message
from loadonce.protocols.v2._body import UnsupportedEncodingError


class VersionNotFoundError(ModelNotFoundError):
    """The model is served, but not in the version the path names (HTTP 404)."""

    def __init__(self, name: str, version: str, served: str) -> None:
        self.name = name
        LoadonceError.__init__(
            self, f"model '{name}' has no version '{version}'; it serves version '{served}'"
        )


def v2_error(status: int, message: str, request_id: str | None = None) -> JSONResponse:
    headers = {} if request_id is None else {REQUEST_ID_HEADER: request_id}
    if status == 503:
        headers["Retry-After"] = "1"
    return JSONResponse({"error": message}, status_code=status, headers=headers)


class V2Route(LoadonceRoute):
    """The protocol's error body, and 400 (not 422) for a request that is not valid."""

    @staticmethod
    def error_for(exc: Exception, request: Request, request_id: str) -> Response:
        if isinstance(exc, RequestValidationError):
            summary = "; ".join(f"{f['field']}: {f['message']}" for f in invalid_fields(exc))
            return v2_error(400, f"invalid request: {summary}", request_id)
        if isinstance(exc, UnsupportedEncodingError):
            return v2_error(415, str(exc), request_id)
        status, message = status_and_message(exc, request, request_id)
        return v2_error(status, message, request_id)
