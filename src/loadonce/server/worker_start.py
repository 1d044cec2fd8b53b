"""How worker processes start: forked from one process that imported the libraries once.

A spawned worker imports PyTorch, scikit-learn, FastAPI... itself, and what those imports build
(Python module objects, operator tables, compiled regexes) is private to it: with PyTorch about
150 MiB per worker, held N times. Workers here come from multiprocessing's fork server instead:
a fresh, single-threaded process (not a fork of the supervisor, whose threads and state would
be copied) that imports the worker's code and the model libraries the config needs, then forks
one child per worker. The children share those pages copy-on-write; each keeps privately only
what it writes. The plan (server/plan.py) starts its measuring child the same way, so that it
measures what a worker really costs.

The fork server starts with the first process started through it and reads its environment
then: the supervisor sets the variables workers need (metrics directory, load lock) before.
"""

from __future__ import annotations

import multiprocessing
import os
from multiprocessing.context import ForkServerContext

from loadonce.runtimes import resolve_runtime
from loadonce.server.settings import ServeConfig

# Imported by the fork server whatever the models: the worker's own code (FastAPI, uvicorn,
# Pydantic, NumPy come with it), then what that code imports only once a worker runs: uvicorn's
# loop, lifespan and WebSocket implementations (chosen by name when its config is loaded),
# anyio's asyncio backend (at the first call handed to a thread), the pydantic.v1 FastAPI looks
# into when it builds routes, the log's buffered handler (named in the logging config). Each
# worker imported them itself, 3.8 MiB of private memory each; one a library no longer has is
# skipped (multiprocessing's fork server ignores a preload that fails to import).
_WORKER_MODULES = (
    "loadonce.server.worker",
    "loadonce.server.log_stream",
    "uvicorn.loops.auto",
    "uvicorn.loops.uvloop",
    "uvloop",
    "uvicorn.lifespan.on",
    "uvicorn.protocols.websockets.auto",
    "anyio._backends._asyncio",
    "concurrent.futures.thread",
    "pydantic.v1",
    "fastapi.telemetry._runtime",
)


# Imported after the libraries: the user's own code (preload_user_code.py), each module named
# in this variable, which the fork server reads from the supervisor's environment.
USER_CODE_MODULE = "loadonce.server.preload_user_code"
USER_CODE_VARIABLE = "LOADONCE_PRELOAD_USER_CODE"

# Imported last, with gc_freeze on: freezes everything the imports before it built.
FREEZE_MODULE = "loadonce.server.freeze_preloaded"


def preloaded_modules(config: ServeConfig) -> list[str]:
    """The worker's modules, then the libraries each model's load needs, each once; then the
    module that imports the user's code (``user_code_modules``); last, with ``gc_freeze``,
    the module that freezes them (the workers' collections leave them alone)."""
    modules = list(_WORKER_MODULES)
    for spec in config.models:
        try:
            runtime = resolve_runtime(spec)
        except (ValueError, OSError):
            continue  # the worker's load reports it, with the model's name
        modules.extend(m for m in runtime.libraries_for(spec) if m not in modules)
    if user_code_modules(config):
        modules.append(USER_CODE_MODULE)
    if config.server.gc_freeze:
        modules.append(FREEZE_MODULE)
    return modules


def user_code_modules(config: ServeConfig) -> list[str]:
    """The user's modules every worker would import: the app module (if one is served) and
    each model's own code (its loader, its factory), each once. Imported in every worker, what
    they import (a factory's module may import half a library) would be held by each."""
    modules = []
    if config.app is not None:
        modules.append(config.app.partition(":")[0])
    for spec in config.models:
        try:
            runtime = resolve_runtime(spec)
        except (ValueError, OSError):
            continue
        modules.extend(m for m in runtime.code_modules(spec) if m and m not in modules)
    return modules


def worker_context(config: ServeConfig) -> ForkServerContext:
    """The multiprocessing context to start workers (and the plan's child) with.

    The modules apply to a fork server not yet running: one server process runs one config.
    A library that fails to import there is skipped (the worker imports it and reports why).
    """
    context = multiprocessing.get_context("forkserver")
    assert isinstance(context, ForkServerContext)
    os.environ[USER_CODE_VARIABLE] = ",".join(user_code_modules(config))
    context.set_forkserver_preload(preloaded_modules(config))
    return context
