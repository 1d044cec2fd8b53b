"""ServeConfig: the server's options and models, merged from defaults, file, env and CLI."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from loadonce._errors import ConfigError
from loadonce._spec import ModelSpec

LogLevel = Literal["critical", "error", "warning", "info", "debug", "trace"]


class ServerOptions(BaseModel):
    """The ``[server]`` table of a config file; each also a CLI option and a LOADONCE_* variable."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=0, le=65535)] = 8000
    workers: Annotated[int, Field(ge=1, le=256)] = 1
    log_level: LogLevel = "info"
    # On SIGTERM: how long accepted requests (queued and running) may take to finish.
    drain_timeout_s: Annotated[int, Field(ge=0)] = 30


class ServeConfig(BaseModel):
    """Everything one ``loadonce serve`` needs; pickled to each worker process."""

    model_config = ConfigDict(frozen=True)

    server: ServerOptions
    models: list[ModelSpec]


def resolve_server_options(
    from_file: Mapping[str, Any], overrides: Mapping[str, Any | None]
) -> ServerOptions:
    """Precedence, highest first: command line, LOADONCE_* environment, config file, default.

    ``overrides`` holds the command line and environment already merged (the CLI reads each
    option from its flag, else from its variable); ``None`` means neither gave a value.
    """
    merged = {**from_file, **{k: v for k, v in overrides.items() if v is not None}}
    try:
        return ServerOptions.model_validate(merged)
    except ValidationError as exc:
        raise ConfigError(f"invalid server option: {describe_validation(exc)}") from None


def describe_validation(exc: ValidationError) -> str:
    """Pydantic's errors as one line: each field's dotted path and what is wrong with it."""
    parts = []
    for error in exc.errors():
        where = ".".join(str(p) for p in error["loc"]) or "value"
        parts.append(f"{where}: {error['msg']}")
    return "; ".join(parts)
