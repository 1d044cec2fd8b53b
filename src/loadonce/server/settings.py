"""ServeConfig: the server's options and models, merged from defaults, file, env and CLI."""

from __future__ import annotations

import difflib
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ByteSize,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from loadonce.core.artifacts import DEFAULT_MAX_ARTIFACT_BYTES
from loadonce.core.config_model import ConfigModel
from loadonce.core.errors import ConfigError, describe_validation
from loadonce.core.limits import MIB, Limits
from loadonce.core.spec import MOST_SECONDS, ModelSpec
from loadonce.http.access_keys import AccessKeys
from loadonce.http.allowed_hosts import check_allowed_hosts
from loadonce.http.cors_origins import check_cors_origins
from loadonce.server.allocator import MOST_THRESHOLD_BYTES
from loadonce.tracing import TracingOptions, check_tracing

LogLevel = Literal["critical", "error", "warning", "info", "debug", "trace"]


def _kubernetes_units(value: object) -> object:
    """Kubernetes' binary suffixes (``16Gi``, ``512Mi``) as pydantic's ``ByteSize`` spells
    them (``16GiB``); its decimal ones (``16G``) it reads already."""
    if isinstance(value, str) and value.strip()[-2:] in ("Ki", "Mi", "Gi", "Ti", "Pi", "Ei"):
        return value.strip() + "B"
    return value


# A memory size: bytes, or 16GiB, 16Gi (Kubernetes), 16G, 500MB...
MemorySize = Annotated[ByteSize, BeforeValidator(_kubernetes_units)]


def _not_every_interface_by_accident(host: object) -> object:
    """An empty host is refused: uvicorn binds "" to every interface, the network included,
    where an unset variable or a typo meant the default (this machine only)."""
    if isinstance(host, str) and not host.strip():
        raise ValueError(
            "must not be empty (it would listen on every interface): 127.0.0.1 for this "
            "machine only, 0.0.0.0 for every interface"
        )
    return host


class ServerOptions(ConfigModel):
    """The ``[server]`` table of a config file; each also a CLI option and a LOADONCE_* variable.

    Every duration is finite and at most MOST_SECONDS (about 116 days), as a model's are:
    ``startup_timeout_s = 1e300`` passed, then a thread's wait on it raised OverflowError.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    host: Annotated[str, BeforeValidator(_not_every_interface_by_accident)] = "127.0.0.1"
    port: Annotated[int, Field(ge=0, le=65535)] = 8000
    # The Open Inference Protocol over gRPC on this port, same host, every worker (None: off).
    grpc_port: Annotated[int, Field(ge=1, le=65535)] | None = None
    workers: Annotated[int, Field(ge=1, le=256)] = 1
    log_level: LogLevel = "info"
    # With several workers: load one worker at a time (one load's memory peak, not N).
    stagger_loading: bool = True
    # With several workers: measure the models in a child process first, refuse what cannot
    # fit (server/plan.py). The loaders then run once more, in that child.
    memory_plan: bool = True
    # "json": one JSON object per log line (request lines carry request_id, status...).
    log_format: Literal["plain", "json"] = "plain"
    # On SIGTERM: how long accepted requests (queued and running) may take to finish.
    drain_timeout_s: Annotated[float, Field(ge=0, le=MOST_SECONDS)] = 30
    # Allow pickle/joblib artifacts (they run code when loaded) for every model served.
    trust: bool = False
    # Plan the workers against this much memory instead of what the machine has available.
    memory_limit: Annotated[MemorySize, Field(gt=0)] | None = None
    # On SIGTERM: how long a worker goes on serving, /readyz at 503, before its listener
    # closes, so that a readiness probe sees it leave (0: close at once).
    stop_delay_s: Annotated[float, Field(ge=0, le=300)] = 2.0
    # With several workers: a worker whose event loop sends no heartbeat for this long
    # (stopped, deadlocked) is killed and replaced (server/worker_process.py).
    heartbeat_timeout_s: Annotated[float, Field(ge=2, le=MOST_SECONDS)] = 30.0
    # With several workers: how long a worker may take, once every worker loaded its models,
    # to start serving (an app's own lifespan: a database migration); its heartbeats are
    # judged only after. Past it, the server stops: a hung startup ends, with one line.
    startup_timeout_s: Annotated[float, Field(gt=0, le=MOST_SECONDS)] = 600.0
    # Once started, leave the loaded models out of garbage collection (loadonce.core.collector).
    gc_freeze: bool = True
    # Each worker's allocator gives blocks of this size or more back to the system when they
    # are freed (server/allocator.py); 0 leaves glibc's default.
    malloc_mmap_threshold: Annotated[MemorySize, Field(ge=0, le=MOST_THRESHOLD_BYTES)] = ByteSize(
        16 * MIB
    )
    # API keys (loadonce.http.access): SecretStr, so a repr or a validation error never shows them.
    api_keys: list[SecretStr] = Field(default_factory=list)
    admin_api_keys: list[SecretStr] = Field(default_factory=list)
    protect_metrics: bool = False
    # Request size limits in bytes; 0 turns one off.
    max_body_bytes: Annotated[int, Field(ge=0)] = 64 * MIB
    max_element_bytes: Annotated[int, Field(ge=0)] = 16 * MIB
    # The bytes of request bodies a worker holds at once (core/body_budget.py).
    max_body_bytes_in_flight: Annotated[int, Field(ge=0)] = 1024 * MIB
    # Where a control request (reload, repository load) may name a new artifact; by default
    # the directories of the configured artifacts (loadonce.core.artifacts).
    artifact_roots: list[Path] | None = None
    # The largest file a control request may name; 0: no limit.
    max_artifact_bytes: Annotated[int, Field(ge=0)] = DEFAULT_MAX_ARTIFACT_BYTES
    # Host names a request arriving on a loopback address may carry besides loopback names
    # (a proxy on the same machine that passes on its own Host): "api.example.com",
    # "*.example.com", "*" (http/browser_guard.py).
    allowed_hosts: list[str] = Field(default_factory=list)
    # The origins of web pages that may call the server from a browser: CORS headers on the
    # answers, preflights answered, and inference routes let them in (http/cors_origins.py).
    cors_allow_origins: list[str] = Field(default_factory=list)
    # Slow and hostile clients (server/http_protocol.py): a request head must arrive within
    # header_timeout_s, a body may pause at most body_timeout_s, a head holds at most
    # max_header_bytes in max_header_fields fields; past max_connections open connections,
    # a worker answers 503.
    header_timeout_s: Annotated[float, Field(gt=0, le=MOST_SECONDS)] = 10.0
    body_timeout_s: Annotated[float, Field(gt=0, le=MOST_SECONDS)] = 30.0
    max_header_bytes: Annotated[int, Field(ge=1024)] = 64 * 1024
    max_header_fields: Annotated[int, Field(ge=8)] = 100
    max_connections: Annotated[int, Field(ge=1)] = 1000

    @field_validator(
        "api_keys", "admin_api_keys", "allowed_hosts", "cors_allow_origins", mode="before"
    )
    @classmethod
    def _comma_separated(cls, value: Any) -> Any:
        """A config file may give these as one comma-separated string, as the environment
        does (the docs said "comma-separated": a string was "not a valid list"). Written but
        empty (``""``, ``[]``) is a mistake, as it is in the environment: never an open
        server by mistake."""
        if isinstance(value, str):
            value = [item.strip() for item in value.split(",") if item.strip()]
        if isinstance(value, list) and not value:
            raise ValueError("is empty: list at least one, or leave it out")
        return value

    @field_validator("api_keys", "admin_api_keys")
    @classmethod
    def _each_key_is_usable(cls, keys: list[SecretStr]) -> list[SecretStr]:
        # Here, per field, so the one line names the list (the whole check below said
        # "value"); AccessKeys says what a usable key is.
        try:
            AccessKeys(inference=tuple(key.get_secret_value() for key in keys))
        except ConfigError as exc:
            raise ValueError(str(exc)) from None
        return keys

    @field_validator("allowed_hosts")
    @classmethod
    def _each_host_is_a_name(cls, hosts: list[str]) -> list[str]:
        try:
            check_allowed_hosts(hosts)
        except ConfigError as exc:  # the field's name is said once, by the caller
            raise ValueError(str(exc).removeprefix("allowed_hosts: ")) from None
        return hosts

    @field_validator("cors_allow_origins")
    @classmethod
    def _each_origin_is_one(cls, origins: list[str]) -> list[str]:
        try:
            return list(check_cors_origins(origins))
        except ConfigError as exc:  # the field's name is said once, by the caller
            raise ValueError(str(exc).removeprefix("cors_allow_origins: ")) from None

    @field_validator("artifact_roots")
    @classmethod
    def _each_root_is_a_directory(cls, roots: list[Path] | None) -> list[Path] | None:
        # A root that is not there (a typo, a volume not mounted) refused every reload later,
        # with nothing said at startup.
        for root in roots or ():
            if not root.is_dir():
                raise ValueError(f"{str(root)!r} is not a directory")
        return roots

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
            max_body_bytes_in_flight=self.max_body_bytes_in_flight or None,
        )


class RayOptions(ConfigModel):
    """The ``[ray]`` table: how ``loadonce serve --ray`` and ``loadonce ray-config`` deploy
    the models on Ray Serve (loadonce.integrations.ray). Each replica is one process that
    loads every model once, like one worker."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # The Serve application's name, and where its routes start on Ray's HTTP proxy.
    name: Annotated[str, Field(min_length=1)] = "loadonce"
    # As Ray takes it: "/" or a path without a final "/" and without braces.
    route_prefix: Annotated[str, Field(pattern=r"^/([^{}]*[^/{}])?$")] = "/"
    # A fixed count, or "auto": Ray scales between bounds, with autoscaling_config (Ray's own
    # keys: min_replicas, max_replicas, target_ongoing_requests...) or Ray's defaults.
    num_replicas: Annotated[int, Field(ge=1)] | Literal["auto"] = 1
    autoscaling_config: dict[str, Any] | None = None
    # Ray's resources per replica: num_cpus, num_gpus, memory, runtime_env...
    ray_actor_options: dict[str, Any] = Field(default_factory=dict)
    # Requests Ray lets into one replica at once. Ray's default (5) would cap a batch at 5
    # and hold the rest in Ray's router, out of sight of loadonce's queue bound and deadlines.
    max_ongoing_requests: Annotated[int, Field(ge=1, le=2**31 - 1)] = 256
    # Requests Ray's router may hold waiting for a replica before answering 503 (-1: no bound).
    max_queued_requests: Annotated[int, Field(ge=-1)] = -1
    # Failed replica starts (a model that fails to load) before Ray marks the deployment
    # failed. Ray's default, 20, would retry a broken model for minutes; a failed load is
    # usually the file, not the node.
    max_constructor_retry_count: Annotated[int, Field(ge=1)] = 3
    health_check_period_s: Annotated[float, Field(gt=0, le=MOST_SECONDS)] = 10.0
    health_check_timeout_s: Annotated[float, Field(gt=0, le=MOST_SECONDS)] = 30.0

    @model_validator(mode="after")
    def _one_way_to_scale(self) -> RayOptions:
        if self.autoscaling_config is not None and self.num_replicas != "auto":
            raise ValueError(
                'autoscaling_config needs num_replicas = "auto" (Ray scales the count itself)'
            )
        return self

    # Checked here, as Ray would check them once started: it then stopped with exit 3 (a
    # model's failed load) and the first line of its error, which named no field.
    @field_validator("max_queued_requests")
    @classmethod
    def _a_bound_or_none(cls, value: int) -> int:
        if value == 0:
            raise ValueError("must be -1 (no bound) or at least 1")
        return value

    @field_validator("autoscaling_config")
    @classmethod
    def _bounds_in_order(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        low, high = (value or {}).get("min_replicas"), (value or {}).get("max_replicas")
        if isinstance(low, int) and isinstance(high, int) and low > high:
            raise ValueError(f"min_replicas ({low}) is above max_replicas ({high})")
        return value

    @field_validator("ray_actor_options")
    @classmethod
    def _resources_not_negative(cls, value: dict[str, Any]) -> dict[str, Any]:
        for name in ("num_cpus", "num_gpus", "memory"):
            amount = value.get(name)
            if isinstance(amount, int | float) and not isinstance(amount, bool) and amount < 0:
                raise ValueError(f"{name} cannot be negative")
        return value


class ServeConfig(BaseModel):
    """Everything one ``loadonce serve`` needs; pickled to each worker process."""

    model_config = ConfigDict(frozen=True)

    server: ServerOptions
    models: list[ModelSpec]
    ray: RayOptions = Field(default_factory=RayOptions)
    # OpenTelemetry tracing (the [tracing] table); each worker starts its own after it forked.
    tracing: TracingOptions = Field(default_factory=TracingOptions)
    # Models an operator unloaded while the server ran: a replacement worker leaves them so.
    unloaded: list[str] = Field(default_factory=list)
    # The models as the operator declared them, once control requests changed ``models`` (the
    # supervisor's remembered config): a replacement worker's load "as declared", and a
    # repository load's config, start from these, as the other workers' do.
    declared: list[ModelSpec] | None = None
    # A user's own app ("pkg.module:app") serving ``models`` (read from its loadonce lifespan),
    # instead of the app create_app builds; ``app_factory``: the reference is a function
    # returning the app.
    app: str | None = None
    app_factory: bool = False
    # The directory ``pkg.module`` references resolve from (the config file's, or the current
    # one): made importable again where the config is used in another process that did not
    # start with this one's sys.path (a Ray Serve replica).
    code_directory: str | None = None


def resolve_server_options(
    from_file: Mapping[str, Any], overrides: Mapping[str, Any | None]
) -> ServerOptions:
    """Precedence, highest first: command line, LOADONCE_* environment, config file, default.

    ``overrides`` holds the command line and environment already merged (the CLI reads each
    option from its flag, else from its variable); ``None`` means neither gave a value.
    """
    from_environment = environment_options()
    given = {k: v for k, v in overrides.items() if v is not None}
    merged = {**from_file, **from_environment, **given}
    try:
        return ServerOptions.model_validate(merged)
    except ValidationError as exc:
        problems = describe_validation(exc)
        # A value from the environment is named by its variable, where the operator set it.
        for option in set(from_environment) - set(given):
            problems = problems.replace(f"{option}:", f"{option} ({_ENVIRONMENT_ONLY[option]}):", 1)
        raise ConfigError(f"invalid server option: {problems}") from None


# The [tracing] table's options from the environment (``enabled`` also: --tracing/--no-tracing,
# LOADONCE_TRACING). OpenTelemetry's own OTEL_* variables are read by its SDK, beneath these.
_TRACING_ENVIRONMENT = {
    "sample_ratio": "LOADONCE_TRACING_SAMPLE_RATIO",
    "endpoint": "LOADONCE_TRACING_ENDPOINT",
    "service_name": "LOADONCE_TRACING_SERVICE_NAME",
}


def resolve_tracing_options(from_file: Mapping[str, Any], enabled: bool | None) -> TracingOptions:
    """The [tracing] table under its LOADONCE_TRACING_* variables and the command line's
    --tracing/--no-tracing (``enabled``, None: not given), checked now: tracing asked for
    without the otel extra fails here, in one line, before any worker starts."""
    merged = dict(from_file)
    for option, variable in _TRACING_ENVIRONMENT.items():
        value = os.environ.get(variable, "").strip()
        if value:
            merged[option] = value
    if enabled is not None:
        merged["enabled"] = enabled
    try:
        options = TracingOptions.model_validate(merged)
    except ValidationError as exc:
        raise ConfigError(f"invalid tracing option: {describe_validation(exc)}") from None
    check_tracing(options)
    return options


# Options read from the environment only: keys do not belong on a command line (ps shows it).
_ENVIRONMENT_ONLY = {
    "api_keys": "LOADONCE_API_KEYS",
    "admin_api_keys": "LOADONCE_ADMIN_API_KEYS",
    "protect_metrics": "LOADONCE_PROTECT_METRICS",
    "max_body_bytes": "LOADONCE_MAX_BODY_BYTES",
    "max_element_bytes": "LOADONCE_MAX_ELEMENT_BYTES",
    "max_body_bytes_in_flight": "LOADONCE_MAX_BODY_BYTES_IN_FLIGHT",
    "stagger_loading": "LOADONCE_STAGGER_LOADING",
    "memory_plan": "LOADONCE_MEMORY_PLAN",
    "gc_freeze": "LOADONCE_GC_FREEZE",
    "malloc_mmap_threshold": "LOADONCE_MALLOC_MMAP_THRESHOLD",
    "artifact_roots": "LOADONCE_ARTIFACT_ROOTS",
    "allowed_hosts": "LOADONCE_ALLOWED_HOSTS",
    "cors_allow_origins": "LOADONCE_CORS_ALLOW_ORIGINS",
    "max_artifact_bytes": "LOADONCE_MAX_ARTIFACT_BYTES",
    "stop_delay_s": "LOADONCE_STOP_DELAY_S",
    "heartbeat_timeout_s": "LOADONCE_HEARTBEAT_TIMEOUT_S",
    "startup_timeout_s": "LOADONCE_STARTUP_TIMEOUT_S",
    "header_timeout_s": "LOADONCE_HEADER_TIMEOUT_S",
    "body_timeout_s": "LOADONCE_BODY_TIMEOUT_S",
    "max_header_bytes": "LOADONCE_MAX_HEADER_BYTES",
    "max_header_fields": "LOADONCE_MAX_HEADER_FIELDS",
    "max_connections": "LOADONCE_MAX_CONNECTIONS",
    "trust": "LOADONCE_TRUST",
    "memory_limit": "LOADONCE_MEMORY_LIMIT",
}
# Lists: comma-separated (artifact_roots: separated like PATH, by os.pathsep).
_LISTS = {
    "api_keys": ",",
    "admin_api_keys": ",",
    "artifact_roots": os.pathsep,
    "allowed_hosts": ",",
    "cors_allow_origins": ",",
}


_PREFIX = "LOADONCE_"


def check_environment(known: Iterable[str], internal: Iterable[str] = ()) -> None:
    """Every LOADONCE_* variable set is one loadonce reads (``known``, and those of the
    options read here), and holds a value: one that is not was ignored without a word
    (LOADONCE_API_KEY for LOADONCE_API_KEYS served with no key at all; LOADONCE_WORKERS=""
    with one worker). ``internal``: set by loadonce for its own processes, maybe empty."""
    internal = set(internal)
    read = {*known, *_ENVIRONMENT_ONLY.values(), *_TRACING_ENVIRONMENT.values(), *internal}
    for variable, value in sorted(os.environ.items()):
        if not variable.startswith(_PREFIX):
            continue
        if variable not in read:
            close = difflib.get_close_matches(variable, sorted(read), n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise ConfigError(f"{variable} is not a loadonce variable{hint}; unset it")
        if not value.strip() and variable not in internal:
            raise ConfigError(f"{variable} is set but holds no value; unset it, or give one")


def environment_options() -> dict[str, Any]:
    """The options set by LOADONCE_* variables that have no command-line flag. A list that is
    set but holds nothing (``LOADONCE_API_KEYS=""`` or ``","``) is a mistake, never an open
    server: it is refused."""
    found: dict[str, Any] = {}
    for option, variable in _ENVIRONMENT_ONLY.items():
        value = os.environ.get(variable)
        if value is None:
            continue
        separator = _LISTS.get(option)
        if separator is not None:
            items = [item.strip() for item in value.split(separator) if item.strip()]
            if not items:
                raise ConfigError(
                    f"{variable} is set but holds no value; unset it, or give at least one"
                )
            found[option] = items
        elif value.strip():
            found[option] = value.strip()
    return found
