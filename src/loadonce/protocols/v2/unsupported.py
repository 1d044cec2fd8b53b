"""Triton's extensions that loadonce does not offer, refused by name on REST and gRPC alike.

tritonclient has a method for each (trace and log settings, system and CUDA shared memory).
Unrouted, REST answered them 404 "no such endpoint" (which reads as a wrong URL or server)
and gRPC "Method not found!" (grpcio's words, naming nothing). Each is now answered as
Triton answers a feature it was built without: its UNSUPPORTED error, HTTP 501 and gRPC
UNIMPLEMENTED, with a message that says what is not offered and what to do.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from fastapi import APIRouter
from starlette.requests import Request

from loadonce.core.errors import LoadonceError

_NOT_HERE = "not supported by this server (loadonce)"


@dataclass(frozen=True)
class Unsupported:
    """A feature of Triton's that loadonce does not offer: ``message`` says so; its REST
    ``paths`` (with their ``methods``) and gRPC ``rpcs`` are refused with it."""

    message: str
    paths: tuple[str, ...] = ()
    methods: tuple[str, ...] = ("GET", "POST")
    rpcs: tuple[str, ...] = ()


class NotSupportedError(LoadonceError):
    """A request for a feature loadonce does not offer (HTTP 501, gRPC UNIMPLEMENTED)."""

    status = 501


def _shared_memory(kind: str, root: str, prefix: str) -> Unsupported:
    return Unsupported(
        message=f"{kind} shared memory is {_NOT_HERE}: send the tensors' data in the "
        "request (JSON or binary) instead",
        paths=(
            f"/v2/{root}/status",
            f"/v2/{root}/region/{{region}}/status",
            f"/v2/{root}/region/{{region}}/register",
            f"/v2/{root}/unregister",
            f"/v2/{root}/region/{{region}}/unregister",
        ),
        rpcs=(f"{prefix}Status", f"{prefix}Register", f"{prefix}Unregister"),
    )


UNSUPPORTED = (
    Unsupported(
        message=f"trace settings are {_NOT_HERE}: it traces with OpenTelemetry, configured "
        "when it starts ([tracing] in its configuration, or the OTEL_* environment variables)",
        paths=("/v2/trace/setting", "/v2/models/{model_name}/trace/setting"),
        rpcs=("TraceSetting",),
    ),
    Unsupported(
        message=f"log settings are {_NOT_HERE}: its log level is set when it starts "
        "(--log-level, or LOADONCE_LOG_LEVEL)",
        paths=("/v2/logging",),
        rpcs=("LogSettings",),
    ),
    _shared_memory("system", "systemsharedmemory", "SystemSharedMemory"),
    _shared_memory("CUDA", "cudasharedmemory", "CudaSharedMemory"),
)


def add_unsupported_routes(router: APIRouter) -> None:
    """A route for each REST path of ``UNSUPPORTED``: 501 with its message (before the
    catch-all, which said 404)."""
    for feature in UNSUPPORTED:
        for path in feature.paths:
            router.add_api_route(
                path,
                _refusal(feature.message),
                methods=list(feature.methods),
                include_in_schema=False,
            )


def _refusal(message: str) -> Callable[[Request], Awaitable[None]]:
    async def refuse(request: Request) -> None:
        raise NotSupportedError(message)

    return refuse
