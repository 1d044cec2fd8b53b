"""The ``loadonce`` command."""

from __future__ import annotations

import sys

import click

from loadonce._errors import ConfigError
from loadonce._version import __version__
from loadonce.server._resolve import resolve_serve_config
from loadonce.server._settings import LogLevel
from loadonce.server._supervisor import Supervisor
from loadonce.server._worker import serve_single_worker

_LOG_LEVELS: list[LogLevel] = ["critical", "error", "warning", "info", "debug", "trace"]
# Exit status for a command line or config file that cannot be used (click uses 2 as well).
USAGE_ERROR = 2


@click.group()
@click.version_option(__version__, prog_name="loadonce")
def main() -> None:
    """loadonce: serve machine-learning models, each loaded once per worker at startup."""


@main.command()
@click.argument("target", required=False, envvar="LOADONCE_TARGET")
@click.option("--demo", is_flag=True, help="Serve the built-in iris demo model.")
@click.option("--host", envvar="LOADONCE_HOST", help="Address to bind.  [default: 127.0.0.1]")
@click.option("--port", type=int, envvar="LOADONCE_PORT", help="Port to bind.  [default: 8000]")
@click.option(
    "--workers",
    type=int,
    envvar="LOADONCE_WORKERS",
    help="Worker processes; each loads its own copy of every model.  [default: 1]",
)
@click.option(
    "--log-level",
    type=click.Choice(_LOG_LEVELS),
    envvar="LOADONCE_LOG_LEVEL",
    help="Log level.  [default: info]",
)
@click.option(
    "--drain-timeout",
    type=int,
    envvar="LOADONCE_DRAIN_TIMEOUT_S",
    help="Seconds accepted requests may take to finish after SIGTERM.  [default: 30]",
)
@click.option(
    "--trust",
    is_flag=True,
    envvar="LOADONCE_TRUST",
    help="Allow pickle/joblib artifacts, which run code when loaded.",
)
def serve(
    target: str | None,
    demo: bool,
    host: str | None,
    port: int | None,
    workers: int | None,
    log_level: str | None,
    drain_timeout: int | None,
    trust: bool,
) -> None:
    """Serve TARGET: a TOML config file, one artifact, or a 'package.module:function' loader.

    Every option can also be set in the config file's [server] table and in a LOADONCE_*
    environment variable. Precedence: command line, then environment, then file, then default.
    """
    overrides = {
        "host": host,
        "port": port,
        "workers": workers,
        "log_level": log_level,
        "drain_timeout_s": drain_timeout,
    }
    try:
        config = resolve_serve_config(target, demo=demo, trust=trust, overrides=overrides)
    except ConfigError as exc:
        click.echo(f"loadonce: error: {exc}", err=True)
        sys.exit(USAGE_ERROR)
    if config.server.workers == 1:
        sys.exit(serve_single_worker(config))
    sys.exit(Supervisor(config).run())
