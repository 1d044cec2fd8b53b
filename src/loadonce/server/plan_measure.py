"""The memory plan's measuring child (``server/plan.py``): it starts the app a worker of the
config would serve, with its models, answers a request and each model's warm-up predictions,
and measures what the process holds then."""

from __future__ import annotations

import asyncio
import logging
import os
import resource
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from multiprocessing.connection import Connection

import psutil
from fastapi import FastAPI

from loadonce.app import create_app
from loadonce.core.errors import LoadonceError, describe_exception
from loadonce.core.memory import artifact_bytes, mapped_file_bytes
from loadonce.core.model import Model
from loadonce.core.registry import Registry
from loadonce.server.allocator import map_large_blocks
from loadonce.server.plan import ModelMeasure
from loadonce.server.settings import ServeConfig
from loadonce.server.user_app import load_app, serve_user_app
from loadonce.server.worker_process import exit_leaving_threads

# Predictions of each model's warm-up example after its load: a cache filled on first use, or
# a library's buffers sized by the first calls, are in the worker's memory from then on.
WARMUP_ROUNDS = 3


def measure_in_child(config: ServeConfig, pipe: Connection) -> None:
    """The planning child (``plan.make_plan``): load every model as a worker would, measure,
    and send the figures (or a failure's message) through ``pipe``."""
    # Loads here are a measurement: their lines would read as a worker's ("loaded in worker
    # pid ..."). A failure comes back through the pipe, and the caller reports it.
    logging.getLogger("loadonce").disabled = True
    process = psutil.Process()
    map_large_blocks(config.server.malloc_mmap_threshold)  # as a worker does
    # The fork server this child comes from holds the libraries once for every worker.
    libraries = int(psutil.Process(os.getppid()).memory_info().rss)
    registry = Registry(
        config.models,
        unloaded=config.unloaded,
        artifact_roots=config.server.artifact_roots,
        max_artifact_bytes=config.server.max_artifact_bytes or None,
    )
    app = _worker_app(config, registry)
    try:
        # As a worker does: the app's whole startup (the models' loads, the user's own
        # lifespan, metrics), and a request through every middleware, so that what a serving
        # worker holds besides its models is measured too.
        base, measures, resident = asyncio.run(_measured(app, registry, process))
    except LoadonceError as failure:
        pipe.send(str(failure))
        exit_leaving_threads(1)  # the supervisor reads the failure; a hung load stays behind
    except Exception as failure:  # the app's own startup (its lifespan) failed, not a model
        pipe.send(f"the app's startup failed: {describe_exception(failure)}")
        exit_leaving_threads(1)
    # The kernel's high-water mark of this process's resident memory (KiB on Linux), above
    # what it held once started: the mapped artifacts' pages it still maps are in both, and
    # those a load read and let go (a copy made from a mapping) in the mark only.
    highest = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    pipe.send((base, libraries, measures, max(0, highest - resident)))
    # Not multiprocessing's exit, which joins every thread that is not a daemon: one a loader
    # started (a client library's) kept the plan, and the server's start, waiting for good.
    exit_leaving_threads(0)


async def _measured(
    app: FastAPI, registry: Registry, process: psutil.Process
) -> tuple[int, list[ModelMeasure], int]:
    """Once the app started, answered a request and predicted each model's warm-up example
    a few times (before its models unload): the worker's own unique memory besides its
    models, each model's, and its resident memory then."""
    async with app.router.lifespan_context(app):
        await _get(app, "/readyz")
        loaded = [model for model in registry.models if model.wanted and model.is_ready]
        requests = {model.name: await _requests_growth(model, loaded, process) for model in loaded}
        worker_bytes = _unique_besides_mapped(loaded, process)
        measures = [_measure(model, *requests[model.name]) for model in loaded]
        resident = int(process.memory_info().rss)
    measured = [m for m in measures if m is not None]
    base = worker_bytes - sum(m.per_worker for m in measured)
    return max(0, base), measured, resident


async def _requests_growth(
    model: Model, loaded: list[Model], process: psutil.Process
) -> tuple[int, str | None]:
    """What WARMUP_ROUNDS predictions of the model's warm-up example added to this process's
    unique memory, and why it was not measured (None: it was)."""
    if model.spec.warmup is None:
        return 0, (
            "no warmup example, so what its requests allocate is left out of the plan "
            "(give it a warmup example to count it)"
        )
    before = _unique_besides_mapped(loaded, process)
    try:
        for _ in range(WARMUP_ROUNDS):
            await model.predict(model.spec.warmup)
    except Exception as exc:
        # Its warm-up at load succeeded: a model that fails later is the server's to report
        # when serving, not a reason to refuse to plan (or to start).
        return 0, (
            f"a prediction of its warmup example failed ({type(exc).__name__}), so what its "
            "requests allocate is left out of the plan"
        )
    return max(0, _unique_besides_mapped(loaded, process) - before), None


def _unique_besides_mapped(loaded: list[Model], process: psutil.Process) -> int:
    """This process's unique memory, less the resident pages of the artifacts it maps: those
    count as unique while one process maps them, and are shared by every worker (a
    prediction may read more of them)."""
    return int(process.memory_full_info().uss) - _mapped_resident(loaded)


def _mapped_resident(loaded: list[Model]) -> int:
    """The resident pages of the artifacts this process maps."""
    artifacts = {model.spec.artifact for model in loaded if model.spec.artifact is not None}
    return sum(mapped_file_bytes(artifact)[0] for artifact in artifacts)


def _measure(model: Model, requests_bytes: int, left_out: str | None) -> ModelMeasure | None:
    if model.load_memory is None:
        return None
    # A mapped artifact's pages are read on first use (or prefaulted), not by the load: count
    # it whole, once. (The page cache counts against a container's memory limit too.)
    whole = (artifact_bytes(model.spec.artifact) or 0) if model.shares_weights else 0
    return ModelMeasure(
        name=model.name,
        load_seconds=model.load_seconds or 0.0,
        # Mapped pages count as unique while one process maps them: they are shared.
        private_bytes=max(0, model.load_memory.uss - model.mapped_bytes),
        shared_bytes=max(model.mapped_bytes, whole),
        requests_bytes=requests_bytes,
        requests_left_out=left_out,
    )


def _worker_app(config: ServeConfig, registry: Registry) -> FastAPI:
    """The app a worker of this config serves."""
    options = config.server
    # Without metrics: in the workers' shared directory (set when the supervisor plans) they
    # would outlive this process as a worker that never served.
    if config.app is None:
        return create_app(
            registry, gc_freeze=options.gc_freeze, access=options.access(), metrics=False
        )
    return serve_user_app(
        load_app(config.app, factory=config.app_factory),
        registry=registry,
        options=options,
        on_loaded=None,
        load_gate=_no_gate,
        control=None,
        metrics=False,
    )


@asynccontextmanager
async def _no_gate() -> AsyncIterator[None]:
    yield


async def _get(app: FastAPI, path: str) -> None:
    """One GET through the app's whole ASGI stack, its answer dropped."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [(b"host", b"127.0.0.1")],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 80),
    }

    async def receive() -> dict[str, object]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: object) -> None:
        pass

    await app(scope, receive, send)
