"""What a model's calls and requests took: the Prometheus series the batcher's reports
(``core/observer.py`` ``CallReport``) are written to, and read back as per-model
statistics (the Open Inference Protocol's statistics extension answers from them).

One measurement, two readings: ``/metrics`` shows these series, and ``statistics`` reads the
same ones. With several workers (prometheus-client's multiprocess mode) both aggregate every
worker's files the same way: counts and seconds summed over the workers, the last call's
time the latest of them.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Summary
from prometheus_client.metrics_core import Metric

from loadonce.core.observer import CallReport

_QUEUE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
PHASES = ("input", "infer", "output")

# The series' names, as their samples are named when read back.
_OUTCOMES = "loadonce_model_request_duration_seconds"
_COMPUTED = "loadonce_computed_requests_total"
_COMPUTED_EXAMPLES = "loadonce_computed_examples_total"
_COMPUTED_QUEUE = "loadonce_computed_requests_queue_seconds_total"
_COMPUTE = "loadonce_request_compute_seconds_total"
_BATCH_CALLS = "loadonce_calls_total"
_BATCH_COMPUTE = "loadonce_call_compute_seconds_total"
_LAST = "loadonce_model_last_call_timestamp_seconds"


@dataclass
class Duration:
    """How many times, and how many seconds in all."""

    count: int = 0
    seconds: float = 0.0


@dataclass
class BatchStatistics:
    """The calls of one batch size: their number, and the seconds of each phase."""

    calls: int = 0
    seconds: dict[str, float] = field(default_factory=lambda: dict.fromkeys(PHASES, 0.0))


@dataclass
class ModelStatistics:
    """One model's requests and calls since the worker(s) started (reloads included).

    As Triton's statistics: only what succeeded counts as inferences and executions; a call
    none of whose requests was answered (the model raised, every deadline passed) is in
    ``fail`` alone (and in /metrics' ``loadonce_batch_size_examples``, which counts every
    call)."""

    examples: int = 0  # examples of the requests the model's calls answered
    calls: int = 0  # calls that answered at least one of their requests
    last_call: float = 0.0  # seconds since the epoch; 0: none yet
    success: Duration = field(default_factory=Duration)
    fail: Duration = field(default_factory=Duration)
    queue: Duration = field(default_factory=Duration)  # of the requests answered
    # Per request answered, the seconds of each phase of the call that answered it.
    computed: int = 0
    compute_seconds: dict[str, float] = field(default_factory=lambda: dict.fromkeys(PHASES, 0.0))
    batches: dict[int, BatchStatistics] = field(default_factory=dict)


@dataclass(frozen=True)
class _CallSeries:
    """The children a call of one model and size writes to."""

    queue: Any
    duration: Any
    computed: Any
    computed_examples: Any
    computed_queue: Any
    compute: tuple[Any, ...]  # per phase
    calls: Any
    call_compute: tuple[Any, ...]  # per phase
    last_call: Any


class CallMetrics:
    """The series of the models' calls and requests, in ``registry`` (None: the default one,
    which multiprocess mode reads from every worker's files)."""

    def __init__(self, registry: CollectorRegistry | None) -> None:
        self.outcomes = Summary(
            "loadonce_model_request_duration_seconds",
            "Requests the model's queue accepted, from the queue to their answer, by outcome "
            "(success; fail: the model raised, the inputs did not fit, the deadline passed, "
            "the client left)",
            ["model", "outcome"],
            registry=registry,
        )
        self.queue = Histogram(
            "loadonce_queue_duration_seconds",
            "Time each request waited in the model's queue before its call started",
            ["model"],
            buckets=_QUEUE_BUCKETS,
            registry=registry,
        )
        # Beside the queue's: how long each call computed (its three phases together), so an
        # operator can tell waiting from computing without traces.
        self.call_duration = Histogram(
            "loadonce_call_duration_seconds",
            "Time each call of the model took, from preparing its inputs to splitting its "
            "outputs (the compute a request's answer waited for after the queue)",
            ["model"],
            buckets=_QUEUE_BUCKETS,
            registry=registry,
        )
        self.computed = Counter(
            "loadonce_computed_requests",
            "Requests the model's calls answered",
            ["model"],
            registry=registry,
        )
        self.computed_examples = Counter(
            "loadonce_computed_examples",
            "Examples of the requests the model's calls answered (the statistics' inference_count)",
            ["model"],
            registry=registry,
        )
        self.computed_queue = Counter(
            "loadonce_computed_requests_queue_seconds",
            "Seconds the requests the model's calls answered waited in its queue (the "
            "statistics' queue, which counts successful requests only, as Triton's)",
            ["model"],
            registry=registry,
        )
        self.compute = Counter(
            "loadonce_request_compute_seconds",
            "Per request answered, the seconds of its call's phase (input: preparing and "
            "combining the inputs; infer: the model's predict; output: splitting its outputs)",
            ["model", "phase"],
            registry=registry,
        )
        self.batch_calls = Counter(
            "loadonce_calls",
            "Calls of the model that answered at least one of their requests (the "
            "statistics' executions), by the examples they were given",
            ["model", "batch_size"],
            registry=registry,
        )
        self.batch_compute = Counter(
            "loadonce_call_compute_seconds",
            "Seconds of each phase of the model's calls that answered at least one of their "
            "requests, by the examples they were given",
            ["model", "batch_size", "phase"],
            registry=registry,
        )
        self.last_call = Gauge(
            "loadonce_model_last_call_timestamp_seconds",
            "When the model's last call returned (seconds since the epoch; the latest of "
            "the workers)",
            ["model"],
            multiprocess_mode="max",
            registry=registry,
        )
        # prometheus-client's labels() costs more than an increment (http/metrics.py): each
        # child is looked up once, and a call's series once per model and call size (one
        # lookup per call instead of eleven). The keys are bounded as the labels are.
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}
        self._per_call: dict[tuple[str, int], _CallSeries] = {}

    def _child(self, metric: Any, *labels: str) -> Any:
        key = (id(metric), labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def _series(self, model: str, examples: int) -> _CallSeries:
        found = self._per_call.get((model, examples))
        if found is None:
            size = str(examples)
            found = self._per_call[(model, examples)] = _CallSeries(
                queue=self._child(self.queue, model),
                duration=self._child(self.call_duration, model),
                computed=self._child(self.computed, model),
                computed_examples=self._child(self.computed_examples, model),
                computed_queue=self._child(self.computed_queue, model),
                compute=tuple(self._child(self.compute, model, phase) for phase in PHASES),
                calls=self._child(self.batch_calls, model, size),
                call_compute=tuple(
                    self._child(self.batch_compute, model, size, phase) for phase in PHASES
                ),
                last_call=self._child(self.last_call, model),
            )
        return found

    def call_returned(self, model: str, report: CallReport) -> None:
        # The size label takes as many values as the sizes of calls the model made: at most
        # its max_request_examples (or max_batch_size), an operator's setting.
        series = self._series(model, report.examples)
        for waited in report.queued_s:
            series.queue.observe(waited)
        phases = (report.input_s, report.infer_s, report.output_s)
        series.duration.observe(sum(phases))
        series.last_call.set(report.finished_at)
        if not report.answered:
            # No request had its answer: not an execution for Triton's statistics (its
            # backends report a batch's statistics only when not every response failed).
            return
        series.computed.inc(report.answered)
        series.computed_examples.inc(report.answered_examples)
        series.computed_queue.inc(report.answered_queued_s)
        for counter, seconds in zip(series.compute, phases, strict=True):
            counter.inc(seconds * report.answered)
        series.calls.inc()
        for counter, seconds in zip(series.call_compute, phases, strict=True):
            counter.inc(seconds)

    def generation_ended(self, model: str) -> None:
        """A generation that ran ended now: the model's last inference, as a call's return
        is (a generating model makes no calls the batcher reports)."""
        self._child(self.last_call, model).set(time.time())

    def request_finished(self, model: str, ok: bool, seconds: float) -> None:
        self._child(self.outcomes, model, "success" if ok else "fail").observe(seconds)


def read_statistics(families: Iterable[Metric]) -> dict[str, ModelStatistics]:
    """Each model's statistics, from the collected series (one process's, or every
    worker's aggregated by prometheus-client's multiprocess collector)."""
    found: dict[str, ModelStatistics] = {}
    for family in families:
        for sample in family.samples:
            labels = sample.labels
            model = labels.get("model")
            if model is None:
                continue
            stats = found.setdefault(model, ModelStatistics())
            _take(stats, sample.name, labels, sample.value)
    return found


def _take(stats: ModelStatistics, name: str, labels: dict[str, str], value: float) -> None:
    if name in (f"{_OUTCOMES}_count", f"{_OUTCOMES}_sum"):
        duration = stats.success if labels["outcome"] == "success" else stats.fail
        _add(duration, name, value)
    elif name == _COMPUTED:
        stats.computed += int(value)
        stats.queue.count += int(value)
    elif name == _COMPUTED_QUEUE:
        stats.queue.seconds += value
    elif name == _COMPUTED_EXAMPLES:
        stats.examples += int(value)
    elif name == _COMPUTE:
        stats.compute_seconds[labels["phase"]] += value
    elif name == _BATCH_CALLS:
        _batch(stats, labels).calls += int(value)
        stats.calls += int(value)
    elif name == _BATCH_COMPUTE:
        _batch(stats, labels).seconds[labels["phase"]] += value
    elif name == _LAST:
        stats.last_call = max(stats.last_call, value)


def _add(duration: Duration, name: str, value: float) -> None:
    if name.endswith("_count"):
        duration.count += int(value)
    else:
        duration.seconds += value


def _batch(stats: ModelStatistics, labels: dict[str, str]) -> BatchStatistics:
    return stats.batches.setdefault(int(labels["batch_size"]), BatchStatistics())
