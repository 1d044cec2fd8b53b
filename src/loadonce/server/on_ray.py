"""``loadonce serve --ray`` and ``loadonce ray-config``: the command line's ways onto Ray Serve.

``serve --ray`` starts a local Ray (or joins the cluster RAY_ADDRESS names, as ``ray.init``
does), deploys the config's models as one Serve application (loadonce.integrations.ray) and
waits: the port answers once every replica has loaded every model, as with ``--workers``.
SIGINT or SIGTERM deletes the application (Ray lets each replica finish its requests for the
drain timeout) and stops Ray.

``ray-config`` prints the Serve config file of the same application, for ``serve deploy`` on
a running cluster (or a KubeRay RayService's ``serveConfigV2``).
"""

from __future__ import annotations

import logging
import logging.config
import signal
import time
from pathlib import Path
from types import FrameType
from typing import Any

from loadonce.core.imports import import_optional
from loadonce.server.log_format import log_config
from loadonce.server.settings import ServeConfig
from loadonce.server.worker_process import STARTUP_FAILED

logger = logging.getLogger("loadonce")

# The application builder a Serve config file names (loadonce.integrations.ray.build).
BUILDER = "loadonce.integrations.ray:build"


def serve_on_ray(config: ServeConfig) -> int:
    """Serve until SIGINT or SIGTERM; 3 when the application cannot be deployed."""
    options = config.server
    logging.config.dictConfig(log_config(options.log_level, options.log_format))
    try:
        ray = import_optional("ray", extra="ray")
        from loadonce.integrations import ray as integration
    except ImportError as missing:
        logger.error("startup failed: %s", missing)
        return STARTUP_FAILED
    # A signal handler runs on the main thread between any two bytecodes, maybe while that
    # thread holds a lock: it only records the signal (an Event's set takes the lock its
    # wait holds, and could wait for it forever); the main thread looks every half second.
    stop_signals: list[int] = []

    deploying = [False]

    def ask_to_stop(signum: int, frame: FrameType | None) -> None:
        stop_signals.append(signum)
        if deploying[0]:
            deploying[0] = False  # once
            raise _StopDeployingError

    ray.init(include_dashboard=False, log_to_driver=options.log_level in ("debug", "trace"))
    # After ray.init, which installs its own crash handler for SIGTERM (it exits at once).
    previous = {sig: signal.signal(sig, ask_to_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    serve = integration.serve
    try:
        serve.start(http_options={"host": options.host, "port": options.port})
        address = f"http://{options.host}:{options.port}{config.ray.route_prefix}"
        logger.info(
            "deploying %d model(s) on Ray Serve as application '%s' (%s replica(s)); each "
            "replica process loads its own copy of every model",
            len(config.models),
            config.ray.name,
            config.ray.num_replicas,
        )
        # serve.run blocks until every replica is up, which is never for one Ray cannot place
        # (num_cpus above the cluster's): a stop signal meanwhile interrupts it (SIGTERM and
        # SIGINT waited for it, forever). Raised from the handler, on the main thread, only
        # while deploying: the application is deleted and Ray shut down just after.
        deploying[0] = True
        try:
            serve.run(
                integration.application(config),
                name=config.ray.name,
                route_prefix=config.ray.route_prefix,
            )
        except _StopDeployingError:
            logger.info("stopping while the application deploys: deleting it")
            serve.delete(config.ray.name)
            serve.shutdown()
            return 0
        except Exception as failure:  # Ray reports a failed deployment with its own types
            logger.error("startup failed: %s", _reason(failure, serve, config.ray.name))
            return STARTUP_FAILED
        finally:
            deploying[0] = False
        logger.info("all replicas loaded; accepting connections on %s", address.rstrip("/"))
        while not stop_signals:
            time.sleep(0.5)
        logger.info("stopping: Ray lets each replica finish its requests, then unloads")
        serve.delete(config.ray.name)
        serve.shutdown()
        return 0
    finally:
        ray.shutdown()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


class _StopDeployingError(BaseException):
    """A stop signal while serve.run waits for the replicas (BaseException: Ray's own
    ``except Exception`` must not swallow it)."""


def _reason(failure: BaseException, serve: Any, name: str) -> str:
    """One line: the failed model's, found in the deployments' status (Ray's exception says
    only that the deployment failed; the replica's error is in its status message)."""
    text = str(failure)
    try:
        for deployment in serve.status().applications[name].deployments.values():
            text += "\n" + deployment.message
    except Exception:  # noqa: S110 - the status is a better message, not a required one
        pass
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    causes = [line for line in lines if "failed to load" in line]
    if causes:
        return causes[-1].removeprefix("RuntimeError: ")
    return lines[0] if lines else type(failure).__name__


def ray_config_document(
    config: ServeConfig, *, config_path: Path | None, demo: bool, trust: bool
) -> dict[str, Any]:
    """The Serve config file (as a mapping) that deploys ``config`` with ``serve deploy``."""
    from loadonce.integrations.ray import DEPLOYMENT_NAME, deployment_options

    args: dict[str, Any] = {"demo": True} if demo else {"config": str(config_path)}
    if trust:
        args["trust"] = True
    options = deployment_options(config.ray, drain_timeout_s=config.server.drain_timeout_s)
    # Not a field a Serve config file may set (ServeDeploySchema drops it, silently): the
    # builder applies the [ray] table's, and an edit in the YAML changed nothing.
    options.pop("max_constructor_retry_count")
    deployment = {"name": DEPLOYMENT_NAME, **options}
    return {
        "proxy_location": "EveryNode",
        "http_options": {"host": config.server.host, "port": config.server.port},
        "applications": [
            {
                "name": config.ray.name,
                "route_prefix": config.ray.route_prefix,
                "import_path": BUILDER,
                "args": args,
                "deployments": [deployment],
            }
        ],
    }
