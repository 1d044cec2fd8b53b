"""ServeConfig: the server's options and models, merged from defaults, file, env and CLI."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator

from loadonce._errors import ConfigError, describe_validation
from loadonce._limits import MIB, Limits
from loadonce._security import AccessKeys
from loadonce._spec import ModelSpec

LogLevel = Literal["critical", "error", "warning", "info", "debug", "trace"]


class ServerOptions(BaseModel):
    """The ``[server]`` table of a config file; each also a CLI option and a LOADONCE_* variable."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=0, le=65535)] = 8000
    workers: Annotated[int, Field(ge=1, le=256)] = 1
    log_level: LogLevel = "info"
    # With several workers: load one worker at a time (one load's memory peak, not N).
    stagger_loading: bool = True
    # With several workers: measure the models in a child process first, refuse what cannot
    # fit (server/_plan.py). The loaders then run once more, in that child.
    memory_plan: bool = True
    # "json": one JSON object per log line (request lines carry request_id, status...).
    log_format: Literal["plain", "json"] = "plain"
    # On SIGTERM: how long accepted requests (queued and running) may take to finish.
    drain_timeout_s: Annotated[int, Field(ge=0)] = 30
    # API keys (loadonce._security): SecretStr, so a repr or a validation error never shows them.
    api_keys: list[SecretStr] = Field(default_factory=list)
    admin_api_keys: list[SecretStr] = Field(default_factory=list)
    protect_metrics: bool = False
    # Request size limits in bytes; 0 turns one off.
    max_body_bytes: Annotated[int, Field(ge=0)] = 64 * MIB
    max_element_bytes: Annotated[int, Field(ge=0)] = 16 * MIB

    @model_validator(mode="after")
    def _keys_are_usable(self) -> ServerOptions:
        try:
            self.access()
        except ConfigError as exc:
            raise ValueError(str(exc)) from None
        return self

    def access(self) -> AccessKeys:
        return AccessKeys(
            inference=tuple(k.get_secret_value() for k in self.api_keys),
            admin=tuple(k.get_secret_value() for k in self.admin_api_keys),
            protect_metrics=self.protect_metrics,
        )

    def limits(self) -> Limits:
        return Limits(
            max_body_bytes=self.max_body_bytes or None,
            max_element_bytes=self.max_element_bytes or None,
        )


class ServeConfig(BaseModel):
    """Everything one ``loadonce serve`` needs; pickled to each worker process."""

    model_config = ConfigDict(frozen=True)

    server: ServerOptions
    models: list[ModelSpec]
    # Models an operator unloaded while the server ran: a replacement worker leaves them so.
    unloaded: list[str] = Field(default_factory=list)


def resolve_server_options(
    from_file: Mapping[str, Any], overrides: Mapping[str, Any | None]
) -> ServerOptions:
    """Precedence, highest first: command line, LOADONCE_* environment, config file, default.

    ``overrides`` holds the command line and environment already merged (the CLI reads each
    option from its flag, else from its variable); ``None`` means neither gave a value.
    """
    merged = {
        **from_file,
        **environment_options(),
        **{k: v for k, v in overrides.items() if v is not None},
    }
    try:
        return ServerOptions.model_validate(merged)
    except ValidationError as exc:
        raise ConfigError(f"invalid server option: {describe_validation(exc)}") from None


# Options read from the environment only: keys do not belong on a command line (ps shows it).
_ENVIRONMENT_ONLY = {
    "api_keys": "LOADONCE_API_KEYS",
    "admin_api_keys": "LOADONCE_ADMIN_API_KEYS",
    "protect_metrics": "LOADONCE_PROTECT_METRICS",
    "max_body_bytes": "LOADONCE_MAX_BODY_BYTES",
    "max_element_bytes": "LOADONCE_MAX_ELEMENT_BYTES",
    "stagger_loading": "LOADONCE_STAGGER_LOADING",
    "memory_plan": "LOADONCE_MEMORY_PLAN",
}


def environment_options() -> dict[str, Any]:
    """The options set by LOADONCE_* variables that have no command-line flag; key lists are
    comma-separated."""
    found: dict[str, Any] = {}
    for option, variable in _ENVIRONMENT_ONLY.items():
        value = os.environ.get(variable)
        if value is None or not value.strip():
            continue
        if option.endswith("keys"):
            found[option] = [key.strip() for key in value.split(",") if key.strip()]
        else:
            found[option] = value.strip()
    return found
