"""The memory plan: what N workers will take, measured before any of them starts.

``loadonce plan TARGET --workers N`` (and ``loadonce serve`` with several workers, before it
starts them) loads every model once in a child process started as workers are (forked from
the process that imported the libraries, server/worker_start.py) and measures: the memory
each worker will hold privately (its unique set: what it wrote of the libraries' pages, copied
weights), and the memory all workers share, counted once: the libraries in the process they
are forked from, and the artifacts mapped read-only. The prediction for N workers is N times
the private part plus the shared parts, compared with the memory available (and the cgroup's
limit, in a container). Requests allocate too (caches, thread stacks, a library's buffers), so
each model with a warm-up example is also given a few predictions of it, and what they added
is counted in the worker's private part; for a model without one, the plan says it left them
out.

Loading is where a worker's memory peaks: a file read before it is converted, a copy made
from a mapping. The child also measures that peak (its resident memory at its highest while
it started, mapped artifact pages aside), and the plan says how many workers may load at
once (``loads_at_once``) for the startup to stay within the memory available.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import resource
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from multiprocessing import resource_tracker
from multiprocessing.connection import Connection
from pathlib import Path

import psutil
from fastapi import FastAPI

from loadonce.app import create_app
from loadonce.core.errors import LoadonceError
from loadonce.core.memory import artifact_bytes, mapped_file_bytes
from loadonce.core.model import Model
from loadonce.core.registry import Registry
from loadonce.server.settings import ServeConfig
from loadonce.server.user_app import load_app, serve_user_app
from loadonce.server.worker_start import worker_context

_CGROUP_V2 = Path("/sys/fs/cgroup/memory.max")
_CGROUP_V2_USED = Path("/sys/fs/cgroup/memory.current")
_CGROUP_V1 = Path("/sys/fs/cgroup/memory/memory.limit_in_bytes")
_CGROUP_V1_USED = Path("/sys/fs/cgroup/memory/memory.usage_in_bytes")
# Predictions of each model's warm-up example after its load: a cache filled on first use, or
# a library's buffers sized by the first calls, are in the worker's memory from then on.
WARMUP_ROUNDS = 3


@dataclass(frozen=True)
class ModelMeasure:
    name: str
    load_seconds: float
    private_bytes: int  # what this model's load added to the worker's unique memory
    shared_bytes: int  # its artifact's pages mapped read-only: shared by every worker
    # What WARMUP_ROUNDS predictions of its warm-up example added to the worker's unique
    # memory after the load; counted in the worker's private part.
    requests_bytes: int = 0
    # Why requests_bytes was not measured (None: it was).
    requests_left_out: str | None = None

    @property
    def per_worker(self) -> int:
        return self.private_bytes + self.requests_bytes


@dataclass(frozen=True)
class Available:
    bytes: int
    source: str


@dataclass(frozen=True)
class MemoryPlan:
    workers: int
    base_private_bytes: int  # a worker before its models: what it does not share
    libraries_bytes: int  # the process workers are forked from: libraries imported once
    supervisor_bytes: int  # the process that starts and watches the workers
    models: list[ModelMeasure]
    available: Available
    # What a worker holds only while it starts (its loads, warm-ups and the plan's
    # predictions): its resident memory at its highest above what it ends with, as when a
    # load holds a file's bytes and what was made of them at once.
    load_transient_bytes: int = 0

    @property
    def private_per_worker(self) -> int:
        return self.base_private_bytes + sum(m.per_worker for m in self.models)

    @property
    def shared(self) -> int:
        return sum(m.shared_bytes for m in self.models)

    @property
    def total(self) -> int:
        once = self.supervisor_bytes + self.libraries_bytes + self.shared
        return self.workers * self.private_per_worker + once

    @property
    def fits(self) -> bool:
        return self.total <= self.available.bytes

    @property
    def load_peak_bytes(self) -> int:
        """A worker's own memory at its highest while it loads."""
        return self.private_per_worker + self.load_transient_bytes

    def loads_at_once(self, cpus: int) -> int:
        """How many workers may load at the same time: as many as the memory available holds
        with each loading worker at its peak and every other one at its steady share, and at
        most one per CPU (loads are mostly computation: more would only share the CPUs)."""
        most = max(1, min(self.workers, cpus))
        if self.load_transient_bytes == 0:
            return most
        room = self.available.bytes - self.total
        return max(1, min(most, room // self.load_transient_bytes))

    def startup_peak(self, loads_at_once: int) -> int:
        """The memory the server holds at its highest while starting, loading so many
        workers at once."""
        return self.total + loads_at_once * self.load_transient_bytes

    def table(self) -> str:
        rows = [("model", "load s", "private / worker", "once per server", "of which requests")]
        rows += [
            (
                m.name,
                f"{m.load_seconds:.2f}",
                _mib(m.per_worker),
                _mib(m.shared_bytes),
                "left out" if m.requests_left_out else _mib(m.requests_bytes),
            )
            for m in self.models
        ]
        rows.append(("(worker itself)", "", _mib(self.base_private_bytes), "", ""))
        rows.append(("(libraries)", "", "", _mib(self.libraries_bytes), ""))
        rows.append(("(supervisor)", "", "", _mib(self.supervisor_bytes), ""))
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        lines = [
            "  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip() for row in rows
        ]
        left_out = [f"{m.name}: {m.requests_left_out}" for m in self.models if m.requests_left_out]
        lines += ["", *left_out] if left_out else []
        verdict = "fits" if self.fits else "DOES NOT FIT"
        lines += [
            "",
            f"{self.workers} workers x {_mib(self.private_per_worker)} private "
            f"+ {_mib(self.total - self.workers * self.private_per_worker)} once "
            f"= {_mib(self.total)}",
            f"available: {_mib(self.available.bytes)} ({self.available.source}): {verdict}",
        ]
        if self.fits and self.workers > 1:
            at_once = self.loads_at_once(usable_cpus())
            lines.append(
                f"loading: a worker peaks at {_mib(self.load_peak_bytes)}; {at_once} "
                f"at a time, the server at most {_mib(self.startup_peak(at_once))}"
            )
        return "\n".join(lines)


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity: a container's or taskset's)."""
    return len(os.sched_getaffinity(0))


def _mib(count: int) -> str:
    return f"{count / 2**20:,.1f} MiB"


def available_memory(limit: int | None = None) -> Available:
    """What the server may use: the given limit, else the machine's available memory, or
    what the cgroup (a container's limit) leaves, whichever is less."""
    if limit is not None:
        return Available(limit, "the limit given")
    best = Available(int(psutil.virtual_memory().available), "available on this machine")
    for limit_file, used_file in ((_CGROUP_V2, _CGROUP_V2_USED), (_CGROUP_V1, _CGROUP_V1_USED)):
        try:
            raw_limit = limit_file.read_text().strip()
            used = int(used_file.read_text().strip())
        except (OSError, ValueError):
            continue
        if raw_limit.isdigit() and int(raw_limit) - used < best.bytes:
            best = Available(int(raw_limit) - used, f"left under the cgroup limit {raw_limit}")
        break
    return best


def make_plan(config: ServeConfig, workers: int, *, limit: int | None = None) -> MemoryPlan:
    """Load every model once in a child process and measure; raise ModelLoadError's message
    as a LoadonceError if one fails."""
    context = worker_context(config)
    ours, theirs = context.Pipe()
    child = context.Process(target=_measure_in_child, args=(config, theirs), name="loadonce-plan")
    child.start()
    theirs.close()
    try:
        outcome = ours.recv()
    except EOFError:
        outcome = f"the planning process exited with code {child.exitcode} while loading"
    finally:
        child.join()
        ours.close()
    if isinstance(outcome, str):
        raise LoadonceError(outcome)
    base, libraries, measures, transient = outcome
    return MemoryPlan(
        workers=workers,
        base_private_bytes=base,
        libraries_bytes=libraries,
        supervisor_bytes=_supervisor_bytes(),
        models=measures,
        available=available_memory(limit),
        load_transient_bytes=transient,
    )


def _supervisor_bytes() -> int:
    """This process's unique memory, and its helper's: multiprocessing's resource tracker,
    started with the first worker, lives as long as the server."""
    total = int(psutil.Process().memory_full_info().uss)
    tracker = getattr(resource_tracker._resource_tracker, "_pid", None)
    if isinstance(tracker, int):
        with contextlib.suppress(psutil.Error):
            total += int(psutil.Process(tracker).memory_full_info().uss)
    return total


def _measure_in_child(config: ServeConfig, pipe: Connection) -> None:
    # Loads here are a measurement: their lines would read as a worker's ("loaded in worker
    # pid ..."). A failure comes back through the pipe, and the caller reports it.
    logging.getLogger("loadonce").disabled = True
    process = psutil.Process()
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
        return
    # The kernel's high-water mark of this process's resident memory (KiB on Linux), above
    # what it held once started: the mapped artifacts' pages it still maps are in both, and
    # those a load read and let go (a copy made from a mapping) in the mark only.
    highest = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    pipe.send((base, libraries, measures, max(0, highest - resident)))


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
