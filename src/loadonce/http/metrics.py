"""Prometheus metrics (prometheus-client), for every worker of a server.

With several worker processes, a scrape reaches one of them; prometheus-client's multiprocess
mode has each worker write its values to files in ``PROMETHEUS_MULTIPROC_DIR`` (the supervisor
creates it) and any worker's ``/metrics`` aggregates them all. Counters and histograms are
summed over workers; the queue gauge is summed over live workers; per-worker gauges (load
time, memory, state) carry a ``pid`` label. Without that variable (one worker, or a library
app), values live in this process.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    values,
)
from prometheus_client.metrics_core import Metric
from prometheus_client.multiprocess import MultiProcessCollector

from loadonce.core.observer import CallReport, GenerationReport
from loadonce.http.call_metrics import CallMetrics, ModelStatistics, read_statistics
from loadonce.http.generation_metrics import GenerationMetrics
from loadonce.http.metrics_directory import MULTIPROCESS_DIR

if TYPE_CHECKING:
    from loadonce.core.model import Model

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
_STATES = ("pending", "loading", "ready", "reloading", "unloaded", "failed")


@dataclass(frozen=True)
class WorkerState:
    pid: int
    version: str
    state: str


class Metrics:
    """One app's metrics; also the ``ModelObserver`` its models report to."""

    def __init__(self) -> None:
        self.multiprocess = MULTIPROCESS_DIR in os.environ
        if self.multiprocess:
            # prometheus-client picks its value storage when first imported; the variable may
            # have been set after that (a worker that imported loadonce first).
            values.ValueClass = values.get_value_class()  # type: ignore[no-untyped-call]
        self._registry = None if self.multiprocess else CollectorRegistry()
        registry = self._registry
        self._request_children: dict[tuple[str, str, int], tuple[Counter, Histogram]] = {}
        self.requests = Counter(
            "loadonce_requests",
            "Requests answered, by model, route and HTTP status",
            ["model", "route", "status"],
            registry=registry,
        )
        self.latency = Histogram(
            "loadonce_request_duration_seconds",
            "Time from the request reaching the route to its answer",
            ["model", "route"],
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.queue = Gauge(
            "loadonce_queue_examples",
            "Examples waiting in the model's queue (all live workers)",
            ["model"],
            multiprocess_mode="livesum",
            registry=registry,
        )
        self.batch_size = Histogram(
            "loadonce_batch_size_examples",
            "Examples per predict call",
            ["model"],
            buckets=_BATCH_BUCKETS,
            registry=registry,
        )
        self.load_seconds = Gauge(
            "loadonce_model_load_seconds",
            "Seconds the model's last load took in the worker",
            ["model", "version"],
            multiprocess_mode="liveall",
            registry=registry,
        )
        self.memory = Gauge(
            "loadonce_model_memory_bytes",
            "Memory the model's last load added to the worker (kind: rss, uss, pss)",
            ["model", "kind"],
            multiprocess_mode="liveall",
            registry=registry,
        )
        self.state = Gauge(
            "loadonce_model_state",
            "1 for the model's current state and version in the worker, 0 otherwise",
            ["model", "version", "state"],
            multiprocess_mode="liveall",
            registry=registry,
        )
        self.load_failed = Gauge(
            "loadonce_model_load_failed",
            "1 when the model's last load or reload failed in the worker (a failed reload "
            "leaves the loaded version serving)",
            ["model"],
            multiprocess_mode="liveall",
            registry=registry,
        )
        self.hung_calls = Gauge(
            "loadonce_model_hung_calls",
            "Predict calls of the model running past its hang_timeout_s in the worker",
            ["model"],
            multiprocess_mode="liveall",
            registry=registry,
        )
        self.gc_frozen = Gauge(
            "loadonce_gc_frozen_objects",
            "Objects the worker's garbage collector leaves alone: what was alive once startup "
            "(or the last model change) was over; 0 while none are",
            multiprocess_mode="liveall",
            registry=registry,
        )
        self._versions: dict[str, str] = {}
        self._queue_children: dict[str, Gauge] = {}
        self._batch_size_children: dict[str, Histogram] = {}
        self.calls = CallMetrics(registry)
        self.generation = GenerationMetrics(registry)

    def generation_finished(self, model: str, report: GenerationReport) -> None:
        self.generation.observe(model, report)
        self.calls.generation_ended(model)

    def request_done(self, model: str, route: str, status: int, seconds: float) -> None:
        # prometheus-client's labels() costs more than the increment itself (it was 7% of the
        # event loop's time per predict request): the children are looked up once. The keys
        # are bounded: declared model names (or ""), the routes, the statuses.
        key = (model, route, status)
        children = self._request_children.get(key)
        if children is None:
            children = (
                self.requests.labels(model, route, str(status)),
                self.latency.labels(model, route),
            )
            self._request_children[key] = children
        children[0].inc()
        children[1].observe(seconds)

    def queue_changed(self, model: str, queued_examples: int) -> None:
        # Each request changes it: the child is looked up once per model (as request_done's).
        child = self._queue_children.get(model)
        if child is None:
            child = self._queue_children[model] = self.queue.labels(model)
        child.set(queued_examples)

    def call_returned(self, model: str, report: CallReport) -> None:
        child = self._batch_size_children.get(model)
        if child is None:
            child = self._batch_size_children[model] = self.batch_size.labels(model)
        child.observe(report.examples)
        self.calls.call_returned(model, report)

    def request_finished(self, model: str, ok: bool, seconds: float) -> None:
        self.calls.request_finished(model, ok, seconds)

    def model_changed(self, model: Model) -> None:
        previous = self._versions.get(model.name)
        if previous is not None and previous != model.version:
            # The old version's series leave /metrics: a hundred reloads must not leave
            # hundreds of series. (With several workers prometheus-client's files keep a
            # removed series' last value, hence the 0 first.)
            for state in _STATES:
                self.state.labels(model.name, previous, state).set(0)
                if not self.multiprocess:  # there, render() leaves retired versions out
                    self.state.remove(model.name, previous, state)
            if not self.multiprocess:
                self.load_seconds.remove(model.name, previous)
        self._versions[model.name] = model.version
        for state in _STATES:
            current = 1 if model.state.value == state else 0
            self.state.labels(model.name, model.version, state).set(current)
        self.load_failed.labels(model.name).set(1 if model.error else 0)
        self.hung_calls.labels(model.name).set(model.hung_calls)
        if model.load_seconds is not None:
            self.load_seconds.labels(model.name, model.version).set(model.load_seconds)
        memory = model.load_memory
        if memory is not None:
            for kind, value in (("rss", memory.rss), ("uss", memory.uss), ("pss", memory.pss)):
                self.memory.labels(model.name, kind).set(value)

    def collector_frozen(self, objects: int) -> None:
        self.gc_frozen.set(objects)

    def _collect(self) -> Iterable[Metric]:
        """Every series: this process's, or (several workers) every worker's, aggregated."""
        if self._registry is not None:
            return self._registry.collect()
        registry = CollectorRegistry()
        collector = MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        collected: Iterable[Metric] = collector.collect()  # type: ignore[no-untyped-call]
        return collected

    def statistics(self) -> dict[str, ModelStatistics]:
        """Each model's requests and calls, read back from the series ``/metrics`` shows
        (with several workers, summed over them); blocking: call it in a thread."""
        return read_statistics(self._collect())

    def worker_states(self) -> dict[str, list[WorkerState]]:
        """Each model's state and version in every live worker, read back from the metrics
        (with several workers, from the files all of them write); blocking: call it in a
        thread."""
        states: dict[str, list[WorkerState]] = {}
        for family in self._collect():
            if family.name != "loadonce_model_state":
                continue
            for sample in family.samples:
                if sample.value == 1:
                    labels = sample.labels
                    pid = int(labels.get("pid", os.getpid()))
                    states.setdefault(labels["model"], []).append(
                        WorkerState(pid=pid, version=labels["version"], state=labels["state"])
                    )
        for listed in states.values():
            listed.sort(key=lambda worker: worker.pid)
        return states

    def render(self) -> bytes:
        if self._registry is not None:
            return generate_latest(self._registry)
        registry = CollectorRegistry()
        registry.register(_CurrentVersionsOnly())
        return generate_latest(registry)


class _CurrentVersionsOnly:
    """The workers' metrics, less the series of versions a worker no longer serves.

    prometheus-client's multiprocess files cannot forget a series, so after a reload the old
    version's series would stay (at 0) for the worker's life: 100 reloads left 606 series.
    A (model, version) with no state at 1 in a worker is retired there and left out."""

    _PER_VERSION = ("loadonce_model_state", "loadonce_model_load_seconds")

    def collect(self) -> Iterable[Metric]:
        families = list(MultiProcessCollector(None).collect())  # type: ignore[no-untyped-call]
        current = {
            (sample.labels.get("pid"), sample.labels["model"], sample.labels["version"])
            for family in families
            if family.name == "loadonce_model_state"
            for sample in family.samples
            if sample.value == 1
        }
        for family in families:
            if family.name in self._PER_VERSION:
                family.samples = [
                    sample
                    for sample in family.samples
                    if (sample.labels.get("pid"), sample.labels["model"], sample.labels["version"])
                    in current
                ]
            yield family
