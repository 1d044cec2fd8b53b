"""The ``loadonce`` command."""

from __future__ import annotations

import atexit
import json
import os
import re
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from click.core import ParameterSource

from loadonce._version import __version__
from loadonce.core.control import NOT_TRIED, SWITCHED_BACK
from loadonce.core.errors import ConfigError, LoadonceError, describe_exception
from loadonce.core.imports import import_optional
from loadonce.core.integrity import file_sha256
from loadonce.core.spec import SHA256_PATTERN
from loadonce.server.demo import CACHE_VARIABLE
from loadonce.server.early_stop import restore_defaults
from loadonce.server.on_ray import ray_config_document, serve_on_ray
from loadonce.server.once_each import OnceEachGroup
from loadonce.server.plan import make_plan
from loadonce.server.resolve import resolve_serve_config
from loadonce.server.settings import LogLevel, ServeConfig, check_environment
from loadonce.server.stagger import LOCK_VARIABLE
from loadonce.server.supervisor import Supervisor
from loadonce.server.worker_process import STARTUP_FAILED, exit_leaving_threads
from loadonce.server.worker_start import USER_CODE_VARIABLE

if TYPE_CHECKING:
    import urllib.error

_LOG_LEVELS: list[LogLevel] = ["critical", "error", "warning", "info", "debug", "trace"]
# Exit status for a command line or config file that cannot be used (click uses 2 as well).
USAGE_ERROR = 2


class _VariableOption(click.Option):
    """An option that may be read from its LOADONCE_* variable: a value from the variable
    that click cannot use is reported under the variable's name (it said '--workers', which
    the operator never typed)."""

    def process_value(self, ctx: click.Context, value: Any) -> Any:
        try:
            return super().process_value(ctx, value)
        except click.BadParameter as exc:
            if ctx.get_parameter_source(self.name or "") is ParameterSource.ENVIRONMENT:
                exc.param_hint = f"{self.envvar} (for {self.opts[0]})"
            raise


def _named_by_variables(message: str) -> str:
    """A server option's problem named by the variable it was read from, where the operator
    set it there: 'workers (LOADONCE_WORKERS): ...'."""
    context = click.get_current_context()
    for parameter in context.command.params:
        name = parameter.name or ""
        if context.get_parameter_source(name) is ParameterSource.ENVIRONMENT:
            option = _SERVER_OPTION_OF.get(name, name)
            # The option's own name only: "port" is in "grpc_port" too.
            named = f"{option} ({parameter.envvar}):".replace("\\", "\\\\")
            message = re.sub(rf"(?<![\w.]){re.escape(option)}:", named, message, count=1)
    return message


# The server option a command-line parameter sets, where their names differ.
_SERVER_OPTION_OF = {"drain_timeout": "drain_timeout_s"}


@click.group(cls=OnceEachGroup)
@click.version_option(__version__, prog_name="loadonce")
@click.pass_context
def main(context: click.Context) -> None:
    """loadonce: serve machine-learning models, each loaded once per worker at startup."""
    if context.invoked_subcommand != "serve":
        # An early stop is serve's (server/early_stop.py); the other commands stop on Ctrl-C
        # as any command does.
        restore_defaults()


@main.command()
@click.argument("target", required=False, envvar="LOADONCE_TARGET")
@click.option("--demo", is_flag=True, help="Serve the built-in iris demo model.")
@click.option(
    "--host",
    envvar="LOADONCE_HOST",
    help="Address to bind.  [default: 127.0.0.1]",
    cls=_VariableOption,
)
@click.option(
    "--port",
    type=int,
    envvar="LOADONCE_PORT",
    help="Port to bind.  [default: 8000]",
    cls=_VariableOption,
)
@click.option(
    "--grpc-port",
    type=int,
    envvar="LOADONCE_GRPC_PORT",
    help="Also serve the Open Inference Protocol over gRPC on this port (same host; every "
    "worker shares it). Needs loadonce[grpc].  [default: off]",
    cls=_VariableOption,
)
@click.option(
    "--workers",
    type=int,
    envvar="LOADONCE_WORKERS",
    help="Worker processes; each loads its own copy of every model.  [default: 1]",
    cls=_VariableOption,
)
@click.option(
    "--log-level",
    type=click.Choice(_LOG_LEVELS),
    envvar="LOADONCE_LOG_LEVEL",
    help="Log level.  [default: info]",
    cls=_VariableOption,
)
@click.option(
    "--log-format",
    type=click.Choice(["plain", "json"]),
    envvar="LOADONCE_LOG_FORMAT",
    help="Log lines as plain text or one JSON object each.  [default: plain]",
    cls=_VariableOption,
)
@click.option(
    "--drain-timeout",
    type=float,
    envvar="LOADONCE_DRAIN_TIMEOUT_S",
    help="Seconds accepted requests may take to finish after SIGTERM.  [default: 30]",
    cls=_VariableOption,
)
@click.option(
    "--trust",
    is_flag=True,
    envvar="LOADONCE_TRUST",
    help="Allow pickle/joblib artifacts, which run code when loaded.",
    cls=_VariableOption,
)
@click.option(
    "--memory-limit",
    envvar="LOADONCE_MEMORY_LIMIT",
    help="Plan against this much memory (16Gi, 16GiB, 500MB...) instead of what is available.",
    cls=_VariableOption,
)
@click.option(
    "--force", is_flag=True, help="Start several workers even if the memory plan says no."
)
@click.option(
    "--factory",
    is_flag=True,
    envvar="LOADONCE_FACTORY",
    help="TARGET 'package.module:function' is a function returning the app to serve.",
    cls=_VariableOption,
)
@click.option(
    "--name",
    envvar="LOADONCE_MODEL_NAME",
    help="For a single artifact or loader: the name to serve it under.  [default: from the "
    "artifact's file name or the loader's]",
    cls=_VariableOption,
)
@click.option(
    "--input-shape",
    help="For a single loader or torch artifact: the shape of one example, '4' or "
    "'3,224,224' (-1 for any size); a wrong shape is then a 400. (Other artifacts record "
    "their inputs: refused for them.)",
)
@click.option(
    "--input-dtype",
    help="For a single artifact or loader: the dtype of one example (float32, int64...).",
)
@click.option(
    "--no-batching",
    "no_batching",
    is_flag=True,
    help="For a single artifact or loader: no batching (one call per request), where its "
    "runtime would batch by default (batching = false in a config file's [[models]]).",
)
@click.option(
    "--tracing/--no-tracing",
    default=None,
    envvar="LOADONCE_TRACING",
    help="OpenTelemetry tracing (the otel extra), exported over OTLP/HTTP; see [tracing].  "
    "[default: on when OTEL_TRACES_EXPORTER names an exporter]",
    cls=_VariableOption,
)
@click.option(
    "--ray",
    "on_ray",
    is_flag=True,
    envvar="LOADONCE_RAY",
    help="Serve on Ray Serve (a local Ray, or RAY_ADDRESS's cluster); replicas from [ray].",
    cls=_VariableOption,
)
def serve(
    target: str | None,
    demo: bool,
    host: str | None,
    port: int | None,
    grpc_port: int | None,
    workers: int | None,
    log_level: str | None,
    log_format: str | None,
    drain_timeout: float | None,
    trust: bool,
    memory_limit: str | None,
    force: bool,
    factory: bool,
    name: str | None,
    input_shape: str | None,
    input_dtype: str | None,
    no_batching: bool,
    tracing: bool | None,
    on_ray: bool,
) -> None:
    """Serve TARGET: a TOML config file, one artifact, a 'package.module:function' loader, or
    your own FastAPI app, 'package.module:app' (its loadonce.lifespan declares the models).

    Every option can also be set in the config file's [server] table and in a LOADONCE_*
    environment variable. Precedence: command line, then environment, then file, then default.
    """
    overrides = {
        "host": host,
        "port": port,
        "grpc_port": grpc_port,
        "workers": workers,
        "log_level": log_level,
        "log_format": log_format,
        "drain_timeout_s": drain_timeout,
        "memory_limit": memory_limit,
    }
    target = _target_unless_demo(target, demo)
    try:
        check_environment(_command_variables(), internal=(USER_CODE_VARIABLE, LOCK_VARIABLE))
        config = resolve_serve_config(
            target,
            demo=demo,
            trust=trust,
            overrides=overrides,
            factory=factory,
            model_fields=_model_fields(name, input_shape, input_dtype, no_batching),
            environment_fields=_model_fields_from_environment(),
            tracing=tracing,
        )
    except ConfigError as exc:
        click.echo(f"loadonce: error: {_named_by_variables(str(exc))}", err=True)
        sys.exit(USAGE_ERROR)
    if on_ray and config.app is not None:
        click.echo(
            "loadonce: error: to serve your own app on Ray Serve, deploy "
            "loadonce.integrations.ray.application_from_app (docs/scaling-out.md)",
            err=True,
        )
        sys.exit(USAGE_ERROR)
    if config.server.grpc_port is not None:
        _check_grpc(config, on_ray)
    if on_ray:
        if workers is not None and workers != 1:
            click.echo(
                "loadonce: error: on Ray, each replica is one process: scale with "
                "[ray] num_replicas, not --workers",
                err=True,
            )
            sys.exit(USAGE_ERROR)
        # A config file's workers (for loadonce serve without --ray) does not apply on Ray.
        sys.exit(serve_on_ray(config))
    if config.server.workers == 1:
        # Imported here: the worker's stack (the app, uvicorn, the models' libraries) is this
        # process's only when it serves itself; the supervisor of several workers never needs it.
        from loadonce.server.worker import serve_single_worker

        code = serve_single_worker(config)
        if code == STARTUP_FAILED or _threads_left_running():
            # A normal exit joins every thread that is not a daemon: one the models' code
            # left running (a client library's) kept the server from ever ending after its
            # SIGTERM. The exit handlers still run (an app's telemetry flush, temporary files).
            if code != STARTUP_FAILED:
                atexit._run_exitfuncs()
            exit_leaving_threads(code)
        sys.exit(code)
    sys.exit(Supervisor(config, memory_limit=config.server.memory_limit, force=force).run())


def _command_variables() -> set[str]:
    """The LOADONCE_* variables the ``loadonce`` commands read besides the server options':
    their options' (LOADONCE_URL is reload's: a shell may set it for both), the reload's
    admin key, the demo's cache."""
    found = {"LOADONCE_ADMIN_KEY", CACHE_VARIABLE}
    for command in main.commands.values():
        for parameter in command.params:
            envvar = getattr(parameter, "envvar", None)
            found.update([envvar] if isinstance(envvar, str) else envvar or ())
    return found


def _threads_left_running() -> bool:
    """Whether a thread that is not a daemon runs besides this one: exiting would wait for it."""
    current = threading.current_thread()
    return any(t is not current and t.is_alive() and not t.daemon for t in threading.enumerate())


def _check_grpc(config: ServeConfig, on_ray: bool) -> None:
    """gRPC needs its extra, a port of its own, and a server of loadonce's (not Ray's)."""
    problem = None
    if on_ray:
        problem = "gRPC is not served on Ray Serve: leave grpc_port unset with --ray"
    elif config.server.grpc_port == config.server.port:
        problem = f"grpc_port and port are both {config.server.port}: give gRPC a port of its own"
    else:
        try:
            import_optional("grpc", extra="grpc")
            import_optional("google.protobuf", extra="grpc")
        except ImportError as missing:
            problem = f"--grpc-port needs gRPC: {missing}"
    if problem is not None:
        click.echo(f"loadonce: error: {problem}", err=True)
        sys.exit(USAGE_ERROR)


def _from_environment(parameter: str) -> bool:
    """Whether the command's ``parameter`` was read from its LOADONCE_* variable."""
    context = click.get_current_context()
    return context.get_parameter_source(parameter) is ParameterSource.ENVIRONMENT


def _target_unless_demo(target: str | None, demo: bool) -> str | None:
    """The command line beats the environment: ``--demo`` typed with LOADONCE_TARGET set
    serves the demo (it was "give either a TARGET or --demo")."""
    return None if demo and _from_environment("target") else target


def _model_fields_from_environment() -> set[str]:
    """Which of ``_model_fields``' fields were read from LOADONCE_* variables, not typed."""
    fields = {"name": "name", "input_shape": "input_shape", "input_dtype": "options"}
    return {field for parameter, field in fields.items() if _from_environment(parameter)}


def _model_fields(
    name: str | None, input_shape: str | None, input_dtype: str | None, no_batching: bool = False
) -> dict[str, Any]:
    """--name, --input-shape, --input-dtype and --no-batching as ModelSpec fields (validated
    there)."""
    fields: dict[str, Any] = {}
    if no_batching:
        fields["batching"] = False
    if name is not None:
        fields["name"] = name
    if input_shape is not None:
        try:
            fields["input_shape"] = [int(size) for size in input_shape.split(",")]
        except ValueError:
            raise ConfigError(
                f"--input-shape must be sizes separated by commas, like 4 or 3,224,224; got "
                f"{input_shape!r}"
            ) from None
    if input_dtype is not None:
        fields["options"] = {"input_dtype": input_dtype}
    return fields


PLAN_WONT_FIT = 1


def _run_plan(config: ServeConfig) -> int:
    """Print the plan; 0 it fits, 1 it does not, 3 a model failed to load."""
    try:
        plan = make_plan(config, config.server.workers, limit=config.server.memory_limit)
    except ConfigError as exc:
        click.echo(f"loadonce: error: {exc}", err=True)
        sys.exit(USAGE_ERROR)
    except LoadonceError as exc:
        click.echo(f"loadonce: planning failed: {exc}", err=True)
        return STARTUP_FAILED
    click.echo(plan.table())
    return 0 if plan.fits else PLAN_WONT_FIT


@main.command()
@click.argument("target", required=False, envvar="LOADONCE_TARGET")
@click.option("--demo", is_flag=True, help="Plan for the built-in iris demo model.")
@click.option(
    "--workers",
    type=int,
    envvar="LOADONCE_WORKERS",
    help="Workers to plan for.",
    cls=_VariableOption,
)
@click.option(
    "--memory-limit",
    envvar="LOADONCE_MEMORY_LIMIT",
    help="Plan against this much memory (16Gi, 16GiB, 500MB...) instead of what is available.",
    cls=_VariableOption,
)
@click.option(
    "--trust", is_flag=True, envvar="LOADONCE_TRUST", help="As for serve.", cls=_VariableOption
)
@click.option(
    "--factory", is_flag=True, envvar="LOADONCE_FACTORY", help="As for serve.", cls=_VariableOption
)
def plan(
    target: str | None,
    demo: bool,
    workers: int | None,
    memory_limit: str | None,
    trust: bool,
    factory: bool,
) -> None:
    """Load TARGET's models once, measure them, and say whether N workers fit in memory.

    Exit status: 0 it fits, 1 it does not, 2 a usage error, 3 a model failed to load.
    """
    target = _target_unless_demo(target, demo)
    try:
        check_environment(_command_variables(), internal=(USER_CODE_VARIABLE, LOCK_VARIABLE))
        config = resolve_serve_config(
            target,
            demo=demo,
            trust=trust,
            overrides={"workers": workers, "memory_limit": memory_limit},
            factory=factory,
        )
    except ConfigError as exc:
        click.echo(f"loadonce: error: {exc}", err=True)
        sys.exit(USAGE_ERROR)
    sys.exit(_run_plan(config))


@main.command("ray-config")
@click.argument("target", required=False, envvar="LOADONCE_TARGET")
@click.option("--demo", is_flag=True, help="Deploy the built-in iris demo model.")
@click.option(
    "--path-on-cluster",
    help="The config file's path as the cluster's nodes see it.  [default: TARGET, absolute]",
)
@click.option(
    "--host",
    envvar="LOADONCE_HOST",
    help="Address Ray's proxies bind (0.0.0.0 in a cluster).",
    cls=_VariableOption,
)
@click.option(
    "--port",
    type=int,
    envvar="LOADONCE_PORT",
    help="Port of Ray's HTTP proxies.",
    cls=_VariableOption,
)
@click.option("--trust", is_flag=True, help="As for serve.")
def ray_config(
    target: str | None,
    demo: bool,
    path_on_cluster: str | None,
    host: str | None,
    port: int | None,
    trust: bool,
) -> None:
    """Print the Ray Serve config file (YAML) that deploys TARGET's models on a cluster:
    ``serve deploy`` it, or paste it as a KubeRay RayService's serveConfigV2.

    TARGET must be a config file (.toml), which every node reads at the printed path; its
    [ray] table gives replicas, autoscaling and resources, its [server] table the HTTP port.
    """
    target = _target_unless_demo(target, demo)
    if target is not None and not target.lower().endswith(".toml"):
        click.echo("loadonce: error: ray-config takes a config file (.toml) or --demo", err=True)
        sys.exit(USAGE_ERROR)
    overrides = {"host": host, "port": port}
    try:
        config = resolve_serve_config(target, demo=demo, trust=trust, overrides=overrides)
    except ConfigError as exc:
        click.echo(f"loadonce: error: {exc}", err=True)
        sys.exit(USAGE_ERROR)
    config_path = None
    if target is not None:
        # The path as named, not its link's target: the artifacts are read beside it.
        config_path = Path(path_on_cluster) if path_on_cluster else Path(target).absolute()
    try:
        yaml = import_optional("yaml", extra="ray")
        document = ray_config_document(config, config_path=config_path, demo=demo, trust=trust)
    except ImportError as missing:
        click.echo(f"loadonce: error: {missing}", err=True)
        sys.exit(USAGE_ERROR)
    click.echo(yaml.safe_dump(document, sort_keys=False), nl=False)


def _checked_sha256(value: str | None) -> str | None:
    """A usage error now, before the request: the server's 400 made it exit 1, as a failed
    load does."""
    if value is not None and not re.fullmatch(SHA256_PATTERN, value):
        raise click.BadParameter(f"{value!r} is not a sha256 (64 hexadecimal digits)")
    return value


@main.command()
@click.argument("name")
@click.option(
    "--artifact",
    type=click.Path(dir_okay=True, path_type=Path),
    help="Load this artifact instead (made absolute here; the server must see the same path).",
)
@click.option("--version", "version", help="Serve it as this version.")
@click.option(
    "--sha256",
    callback=lambda _context, _parameter, value: _checked_sha256(value),
    help="The new artifact's sha256, if the model is pinned.",
)
@click.option(
    "--url",
    default="http://127.0.0.1:8000",
    envvar="LOADONCE_URL",
    show_default=True,
    help="The running server.",
    cls=_VariableOption,
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=600,
    show_default=True,
    help="Seconds to wait.",
)
def reload(
    name: str,
    artifact: Path | None,
    version: str | None,
    sha256: str | None,
    url: str,
    timeout: float,
) -> None:
    """Reload model NAME in every worker of a running server, without a pause in service.

    The loaded version serves until the new one is loaded and warm; if the new one fails to
    load, the loaded one goes on serving and this command exits 1. An admin key, when the
    server needs one, is read from LOADONCE_ADMIN_KEY.
    """
    if not url.startswith(("http://", "https://")):
        click.echo(f"loadonce: error: --url must be http:// or https://, got {url!r}", err=True)
        sys.exit(USAGE_ERROR)
    body: dict[str, str] = {}
    if artifact is not None:
        body["artifact"] = os.path.realpath(artifact)  # resolve() raises on a link loop
    if version is not None:
        body["version"] = version
    if sha256 is not None:
        body["sha256"] = sha256
    # Imported here: urllib brings ssl, which the supervisor of `--workers N` never needs.
    import http.client
    import urllib.error
    import urllib.parse
    import urllib.request

    try:
        request = urllib.request.Request(  # noqa: S310 - the scheme is checked above
            f"{url.rstrip('/')}/admin/models/{urllib.parse.quote(name, safe='')}/reload",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
    except ValueError as malformed:  # "http://[::1", an unclosed bracket
        click.echo(f"loadonce: error: --url {url!r} is not a URL: {malformed}", err=True)
        sys.exit(USAGE_ERROR)
    key = os.environ.get("LOADONCE_ADMIN_KEY")
    if key:
        request.add_header("Authorization", f"Bearer {key}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
            answer = _reload_answer(response.read())
    except urllib.error.HTTPError as failure:
        answer = _error_body(failure)
        if "workers" not in answer:
            hint = ""
            if failure.code in (401, 403) and "key" in str(answer["error"]):
                hint = " (this command sends the admin key it reads from LOADONCE_ADMIN_KEY)"
            click.echo(
                f"loadonce: reload failed ({failure.code}): {answer['error']}{hint}", err=True
            )
            sys.exit(1)
    except TimeoutError:
        # Reached, and the reload asked for: it goes on in the server, which this command
        # stopped waiting for (it said "cannot reach", exit 2, while the reload completed).
        click.echo(
            f"loadonce: no answer from {url} within {timeout:g} s (--timeout): the reload may "
            "still be running; GET /models shows each worker's version",
            err=True,
        )
        sys.exit(1)
    except (urllib.error.URLError, OSError) as failure:
        if isinstance(getattr(failure, "reason", None), TimeoutError):  # the connection's
            click.echo(f"loadonce: cannot reach {url}: timed out connecting", err=True)
        else:
            click.echo(f"loadonce: cannot reach {url}: {failure}", err=True)
        sys.exit(USAGE_ERROR)
    except (ValueError, http.client.HTTPException) as failure:  # a port not a number, a
        # space in the host, an answer that is not loadonce's
        click.echo(f"loadonce: cannot reload through {url}: {failure}", err=True)
        sys.exit(USAGE_ERROR)
    wanted = f"version {version}" if version else "the new version"
    serving = set()
    for worker in answer["workers"]:
        pid, served = worker["pid"], worker["version"] or "?"
        if worker["ok"]:
            click.echo(f"worker pid {pid}: version {served} loaded")
            continue
        serving.add(served)
        if worker["state"] == NOT_TRIED:
            click.echo(f"worker pid {pid}: not tried ({worker['error']}); version {served} serves")
        elif str(worker["error"]).startswith(SWITCHED_BACK):
            then = f"then {worker['error']} (version {served})"
            click.echo(f"worker pid {pid}: {wanted} loaded, {then}")
        else:
            click.echo(f"worker pid {pid}: {wanted} failed: {worker['error']}")
    if not answer["ok"]:
        goes_on = f"version {serving.pop()}" if len(serving) == 1 else "the loaded version"
        click.echo(
            f"loadonce: model '{name}': {wanted} failed; {goes_on} goes on serving", err=True
        )
        sys.exit(1)
    click.echo(f"model '{name}' reloaded in {len(answer['workers'])} worker(s)")


def _reload_answer(raw: bytes) -> dict[str, Any]:
    """A reload's answer, or a ValueError saying the server that answered is not loadonce
    (a proxy's page, another service at that URL)."""
    try:
        answer = json.loads(raw)
    except ValueError:
        answer = None
    workers = answer.get("workers") if isinstance(answer, dict) else None
    valid = isinstance(workers, list) and all(
        isinstance(w, dict) and {"pid", "ok", "version", "state"} <= w.keys() for w in workers
    )
    if not valid or not isinstance(answer, dict) or "ok" not in answer:
        raise ValueError("its answer is not a loadonce reload's (is this loadonce's URL?)")
    return answer


def _error_body(failure: urllib.error.HTTPError) -> dict[str, object]:
    try:
        body = json.loads(failure.read())
    except ValueError:
        return {"error": failure.reason}
    return body if isinstance(body, dict) and "error" in body else {"error": failure.reason}


@main.command()
@click.argument("source", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument("destination", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--trust",
    is_flag=True,
    help="Required: reading a joblib or pickle file runs code from it.",
)
def convert(source: Path, destination: Path, trust: bool) -> None:
    """Rewrite a compressed joblib (or pickle) file as an uncompressed joblib file, whose
    NumPy arrays every worker can then map and share (share = "mmap").

    Prints the new file's sha256, to pin it in the config.
    """
    if not trust:
        click.echo(
            "loadonce: error: reading a joblib or pickle file runs code from it; pass --trust "
            "if you trust this file's origin",
            err=True,
        )
        sys.exit(USAGE_ERROR)
    if destination.suffix.lower() != ".joblib":
        click.echo("loadonce: error: DESTINATION must end in .joblib", err=True)
        sys.exit(USAGE_ERROR)
    if destination.exists():
        click.echo(f"loadonce: error: {destination} exists; it is not overwritten", err=True)
        sys.exit(USAGE_ERROR)
    joblib = import_optional("joblib", extra="sklearn")
    try:
        model = joblib.load(source)
    except Exception as exc:  # whatever the unpickler meets in a file of another kind
        click.echo(
            f"loadonce: error: {source} is not a joblib or pickle file joblib can read "
            f"({describe_exception(exc)})",
            err=True,
        )
        sys.exit(USAGE_ERROR)
    partial = destination.with_name(destination.name + ".partial")
    joblib.dump(model, partial, compress=0)
    partial.rename(destination)  # never a half-written file under the final name
    click.echo(f'{destination}: uncompressed, sha256 = "{file_sha256(destination)}"')
