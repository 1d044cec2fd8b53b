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

import contextlib
import os
from dataclasses import dataclass
from multiprocessing import resource_tracker
from multiprocessing.connection import Connection
from pathlib import Path

import psutil

from loadonce.core.errors import LoadonceError
from loadonce.server.settings import ServeConfig
from loadonce.server.worker_process import how_it_ended
from loadonce.server.worker_start import worker_context

_CGROUP_V2 = Path("/sys/fs/cgroup/memory.max")
_CGROUP_V2_USED = Path("/sys/fs/cgroup/memory.current")
_CGROUP_V1 = Path("/sys/fs/cgroup/memory/memory.limit_in_bytes")
_CGROUP_V1_USED = Path("/sys/fs/cgroup/memory/memory.usage_in_bytes")


@dataclass(frozen=True)
class ModelMeasure:
    name: str
    load_seconds: float
    private_bytes: int  # what this model's load added to the worker's unique memory
    shared_bytes: int  # its artifact's pages mapped read-only: shared by every worker
    # What a few predictions of its warm-up example (plan_measure.WARMUP_ROUNDS) added to the
    # worker's unique memory after the load; counted in the worker's private part.
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
        child.join()  # its exit code is known only once it is reaped
        outcome = _died_while_loading(child.exitcode)
    except BaseException:  # a stop signal's exception while it loads: it is not waited for
        child.kill()
        raise
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


def _died_while_loading(code: int | None) -> str:
    """A planning child that ended without a word: a model's library crashed in native code
    (a damaged artifact, most often), which no Python exception reports."""
    return (
        f"the planning process {how_it_ended(code)} while loading the models: a model's "
        "library crashed (a damaged or truncated artifact?); serve each model alone to find "
        "which"
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
    # The child's code imports what a worker imports (the app, the models' libraries): kept
    # out of this module, which the supervisor of `--workers N` imports.
    from loadonce.server.plan_measure import measure_in_child

    measure_in_child(config, pipe)
