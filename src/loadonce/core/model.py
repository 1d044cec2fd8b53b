"""Model: the live handle of one declared model in one worker: its state, load and predict path."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
import os
import threading
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterable, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, TypeVar

import anyio.to_thread

from loadonce.core.batcher import Batcher, common_shape, run_batch
from loadonce.core.collector import refreeze_if_frozen
from loadonce.core.errors import (
    DeadlineExceededError,
    InvalidInputError,
    ModelLoadError,
    ModelNotReadyError,
    ModelRaisedError,
    RequestTooLargeError,
    as_exception,
    describe_exception,
    output_error,
    without_paths,
)
from loadonce.core.executors import Executor, instances_needed, make_executor
from loadonce.core.generation import Delta, Finished, GenerationRequest
from loadonce.core.generation_queue import GenerationQueue
from loadonce.core.inputs import split_examples
from loadonce.core.integrity import (
    ArtifactChangedError,
    FileState,
    check_unchanged,
    file_state,
    verify_sha256,
)
from loadonce.core.memory import (
    MemorySample,
    artifact_bytes,
    format_bytes,
    mapped_file_bytes,
    sample_process_memory,
)
from loadonce.core.observer import ModelObserver
from loadonce.core.prefault import Prefaulted, prefault_weights
from loadonce.core.spec import Batching, Concurrency, ModelSpec
from loadonce.core.tracing import CallTracer
from loadonce.runtimes import resolve_runtime
from loadonce.runtimes._base import InputSignature, Predictor, TensorInfo

logger = logging.getLogger("loadonce")


class ModelState(StrEnum):
    """Where a model is in its life in this worker."""

    PENDING = "pending"  # declared; the lifespan has not started loading it yet
    LOADING = "loading"
    READY = "ready"
    RELOADING = "reloading"
    UNLOADED = "unloaded"
    FAILED = "failed"


class Model:
    """One declared model in this worker process.

    The handle stays the same object for the life of the app; handlers get it through
    ``loadonce.ModelDependency`` and call ``await model.predict(inputs)``, which runs the
    predictor in a thread under the model's concurrency policy, never on the event loop.
    """

    def __init__(self, spec: ModelSpec) -> None:
        self.spec = spec
        # The spec this process started with, which loads with changes (a new artifact, a
        # repository load's batching) do not touch: what a load "as declared" goes back to.
        # A worker the supervisor started after a change is handed the declaration apart
        # (``Registry(declared=...)``), so every worker reads the same one.
        self.declared_spec = spec
        self._state = ModelState.PENDING
        self.worker_pid = os.getpid()
        self.load_count = 0
        self.load_seconds: float | None = None
        self.load_memory: MemorySample | None = None
        # Resident bytes of the artifact mapped read-only (shared by the workers), after load.
        self.mapped_bytes = 0
        self._weights_shared = False
        # The shape of the warm-up's examples, for a model that declares none (see Batcher).
        self._answered_shape: tuple[int, ...] | None = None
        # What the loaded instances answered the warm-up, one output per example.
        self._sample_answer: list[Any] | None = None
        self.loaded_at: float | None = None
        self.error: str | None = None
        # The artifacts the failed load named: kept out of public_error whole (spaces too).
        self._error_paths: tuple[str, ...] = ()
        self.runtime_name: str | None = None
        self.concurrency: Concurrency | None = spec.concurrency
        self._executor: Executor | None = None
        self._batcher: Batcher | None = None
        # The generation queue, for a model that generates text token by token.
        self._generation: GenerationQueue | None = None
        # The generation queues of versions a reload replaced, while their streams run on
        # (each with the task that closes its version after its last stream).
        self._retiring: dict[asyncio.Task[None], GenerationQueue] = {}
        # False once unloaded on request (the model repository API): the server's readiness
        # then leaves it out, as Triton's does, until it is loaded again.
        self._wanted = True
        # One load, reload or unload at a time; predictions go on meanwhile.
        self._lifecycle = asyncio.Lock()
        # Told of every change of state, queue and batch (the app's metrics), if set.
        self._observer: ModelObserver | None = None
        # Per queue (the batcher and the generation queue of each version still running: a
        # reload's old ones drain while the new ones serve), what it last counted: the predict
        # calls and generation steps running past hang_timeout_s (the model is unhealthy while
        # any is), and what waits in it. The model's figures are their sums; each queue told
        # only its own count, and the last to change overwrote the others' (a retiring queue's
        # last 0 hid the new version's queue, or its depth stood for the new one's).
        self._hung: dict[object, int] = {}
        self._queued: dict[object, int] = {}
        # Called when a call is found hung (loadonce serve: replace this worker).
        self._on_hung: Callable[[Model], None] | None = None
        # Spans of its loads and calls, when tracing is on (None: nothing is asked).
        self._tracer: CallTracer | None = None
        # The batching the loaded model got (spec.batching_for its predictor); None: none.
        self._batching: Batching | None = None
        # Whether its predictor answers a batch as it answers each example alone (known once
        # it loaded): what a spec without batching gets depends on it.
        self._batches_exactly: bool | None = None
        # The state of the artifact's file the loaded version was read from (None: no file
        # artifact): the supervisor hands it to the next workers of a reload.
        self.artifact_state: FileState | None = None

    @property
    def name(self) -> str:
        return self.spec.name

    # Read-only outside: every change goes through a method of this class, which tells the
    # observer (the metrics) of it.
    @property
    def state(self) -> ModelState:
        return self._state

    @property
    def wanted(self) -> bool:
        """False once unloaded on request (the model repository API): the server's readiness
        then leaves it out, as Triton's does, until it is loaded again."""
        return self._wanted

    @property
    def hung_calls(self) -> int:
        """Predict calls and generation steps running past ``hang_timeout_s`` now."""
        return sum(self._hung.values())

    @property
    def queued(self) -> int:
        """What waits in the model's queues now, every version's (examples waiting for the
        batcher, requests waiting to join a generating batch)."""
        return sum(self._queued.values())

    @property
    def generating(self) -> int:
        """Sequences generating now, in every version's generation queue."""
        queues = [*self._retiring.values(), *([self._generation] if self._generation else [])]
        return sum(queue.generating for queue in queues)

    @property
    def observer(self) -> ModelObserver | None:
        return self._observer

    def watch(self, observer: ModelObserver) -> None:
        """Report every change of state, queue and batch to ``observer`` from now on, starting
        with the model's present state."""
        self._observer = observer
        self._notify()

    @property
    def batching(self) -> Batching | None:
        """The loaded model's batching: as its spec declares, or its runtime's default."""
        return self._batching

    @property
    def batches_exactly(self) -> bool | None:
        """Whether the loaded predictor batches exactly (None: it never loaded here)."""
        return self._batches_exactly

    @property
    def tracer(self) -> CallTracer | None:
        return self._tracer

    def trace(self, tracer: CallTracer) -> None:
        """Trace this model's loads and calls with ``tracer`` from its next load on."""
        self._tracer = tracer

    def on_hung(self, hook: Callable[[Model], None]) -> None:
        """Call ``hook`` whenever a predict call of this model is found hung."""
        self._on_hung = hook

    def leave_unloaded(self) -> None:
        """Before loading: leave the model unloaded, as an operator left it (a worker that
        replaces one that died follows the others)."""
        self._wanted = False
        self._set_state(ModelState.UNLOADED)

    def _set_state(self, state: ModelState) -> None:
        self._state = state
        self._notify()

    @property
    def version(self) -> str:
        return self.spec.version

    @property
    def signature(self) -> InputSignature | None:
        return None if self._executor is None else self._executor.instances[0].signature

    @property
    def inputs(self) -> Sequence[TensorInfo]:
        """The model's named inputs where its format records them, else one input described
        by the shape of an example, when that is known."""
        if self._executor is None:
            return ()
        predictor = self._executor.instances[0]
        if predictor.inputs or predictor.signature is None:
            return predictor.inputs
        signature = predictor.signature
        return (TensorInfo(name="input", dtype=signature.dtype, shape=(None, *signature.shape)),)

    @property
    def shares_weights(self) -> bool | None:
        """Whether this worker maps most of the model's weights from the artifact (shared
        with the other workers through the page cache), as measured at load; None while not
        loaded."""
        if self._executor is None:
            return None
        return self._weights_shared

    @property
    def outputs(self) -> Sequence[TensorInfo]:
        return () if self._executor is None else self._executor.instances[0].outputs

    @property
    def sample_answer(self) -> Sequence[Any] | None:
        """What the loaded model answered its warm-up input, one output per example, or
        without a warm-up its first request's first example (one that picked no outputs);
        None before either. A model that declares no outputs (a loader's plain function) is
        known by it to answer outputs of that form."""
        return None if self._executor is None else self._sample_answer

    @property
    def request_parameters(self) -> frozenset[str]:
        """The request parameters the loaded predictor takes (``predict_with``)."""
        return (
            frozenset()
            if self._executor is None
            else self._executor.instances[0].request_parameters
        )

    def note_failed_change(self, message: str, artifacts: Iterable[str]) -> None:
        """Say ``message`` as this model's error until its next load: a load that failed in
        another worker of the server (or here, told with the others' part), so that every
        worker's answers say it, not only the one tried. ``artifacts``: the paths it may
        quote, kept out of ``public_error`` whole."""
        self.error = message
        self._error_paths = (*artifacts, *_artifacts_of(self.spec))

    @property
    def public_error(self) -> str | None:
        """``error`` as answers any client may read show it: without server file paths."""
        return None if self.error is None else without_paths(self.error, self._error_paths)

    @property
    def is_serving(self) -> bool:
        """Whether it takes predictions now: loaded (while a reload builds its successor,
        too), hung calls or not."""
        return self.state in _SERVING

    @property
    def is_ready(self) -> bool:
        """Whether it answers predictions now (while a reload builds its successor, it does),
        and no call of it is hung."""
        return self.is_serving and self.hung_calls == 0

    def _hung_changed(self, queue: object, count: int) -> None:
        """A queue's count of hung predict calls or generation steps."""
        grew = count > self._hung.get(queue, 0)
        _count(self._hung, queue, count)
        self._notify()
        if grew and self._on_hung is not None:
            self._on_hung(self)

    def _queue_changed(self, queue: object, count: int) -> None:
        """A queue's depth: the model's, all its queues', goes to /metrics. Twice a request:
        written out rather than through ``_count`` and ``queued`` (each call costs)."""
        queued = self._queued
        if count:
            queued[queue] = count
        else:
            queued.pop(queue, None)
        observer = self._observer
        if observer is not None:
            observer.queue_changed(self.name, sum(queued.values()))

    async def load(
        self, spec: ModelSpec | None = None, *, matching: tuple[FileState, str] | None = None
    ) -> None:
        """Load (all pool instances of) the model in a thread, warm it up, then mark it ready.

        If it is loaded already, this is a reload: the new instances load and warm up while
        the current ones go on serving, then take over; the old ones finish what they were
        given before they close. A failed reload leaves the current instances serving (and
        its message in ``error``). ``spec``: load this one instead (a new artifact or
        version of the same model); it becomes the model's spec only if it loads.
        ``matching``: the state of the artifact's file that another worker loaded, and that
        worker (``"worker pid 12"``): the load fails if the file is no longer in it, so that
        every worker of a reload serves the same bytes.
        """
        async with self._lifecycle:
            # Unloaded on request: a load that fails leaves it so (its error said), as the
            # other workers are; it was left failed, and the server unready, in this worker
            # alone.
            unloaded = self._state is ModelState.UNLOADED and not self._wanted
            self._wanted = True
            candidate = spec or self.spec
            if candidate.name != self.name:
                raise ValueError(f"a spec named '{candidate.name}' cannot replace '{self.name}'")
            action = "load" if self._executor is None else "reload"
            traced: AbstractContextManager[object] = (
                self._tracer.lifecycle(self.name, action) if self._tracer else nullcontext()
            )
            try:
                with traced:
                    if action == "load":
                        try:
                            await self._load_first(candidate, matching)
                        except ModelLoadError:
                            if unloaded:
                                self._wanted, self._state = False, ModelState.UNLOADED
                            raise
                    else:
                        await self._reload(candidate, matching)
            finally:
                self._notify()

    def _notify(self) -> None:
        if self._observer is not None:
            self._observer.model_changed(self)

    async def _load_first(
        self, spec: ModelSpec, matching: tuple[FileState, str] | None = None
    ) -> None:
        self._state = ModelState.LOADING
        self._notify()
        self.error = None
        try:
            executor = await self._build_and_measure(spec, matching)
        except ModelLoadError as failure:
            self._state = ModelState.FAILED
            self.error, self._error_paths = str(failure), _artifacts_of(spec)
            raise
        self._executor = executor
        self._batcher = _make_batcher(self, executor)
        self._generation = _make_generation(self, executor)
        self._state = ModelState.READY

    async def _reload(self, spec: ModelSpec, matching: tuple[FileState, str] | None = None) -> None:
        self._state = ModelState.RELOADING
        self._notify()
        try:
            executor = await self._build_and_measure(spec, matching)
        except asyncio.CancelledError:
            # Abandoned (the server stops): the loaded version serves what was accepted.
            self._state = ModelState.READY
            raise
        except ModelLoadError as failure:
            self._state = ModelState.READY
            self.error = f"{failure}; version {self.version} loaded before goes on serving"
            self._error_paths = _artifacts_of(spec, self.spec)
            logger.error("worker pid %d: %s", os.getpid(), self.error)
            raise
        self.error = None
        old_batcher, old_executor = self._batcher, self._executor
        old_generation = self._generation
        self._executor = executor
        self._batcher = _make_batcher(self, executor)
        self._generation = _make_generation(self, executor)
        self._state = ModelState.READY
        if old_generation is None:
            await _retire(old_batcher, old_executor, self.name)
            return
        # A stream lasts as long as its client reads (minutes, for a long generation): the
        # reload is done once the new version serves, and the old one is closed after its
        # last stream without holding up the reload's answer (with several workers, the next
        # worker's reload) or the model's next load or unload (which ends them, ``unload``).
        retiring = asyncio.get_running_loop().create_task(
            _retire_generating(old_generation, old_batcher, old_executor, self.name),
            name=f"loadonce-retire-{self.name}",
        )
        self._retiring[retiring] = old_generation
        retiring.add_done_callback(self._retired)

    def _retired(self, retiring: asyncio.Task[None]) -> None:
        self._retiring.pop(retiring, None)
        failure = None if retiring.cancelled() else retiring.exception()
        if failure is not None:  # a fault of loadonce's: said once, never left unretrieved
            logger.error(
                "model '%s': retiring a replaced version failed", self.name, exc_info=failure
            )
        if self._executor is None:
            return  # unloaded: whoever unloaded it collects after it
        # The replaced version is let go only now, after the reload's own collection: what it
        # left in reference cycles is freed here, not kept frozen (core/collector.py).
        frozen = refreeze_if_frozen()
        if frozen is not None and self._observer is not None:
            self._observer.collector_frozen(frozen)

    async def _build_and_measure(
        self, spec: ModelSpec, matching: tuple[FileState, str] | None = None
    ) -> Executor:
        """Load and warm up every instance of ``spec``; on success it becomes the model's
        spec, and the time and memory it took are recorded and logged."""
        self.worker_pid = os.getpid()
        before = sample_process_memory()
        started = time.perf_counter()
        instances: list[Predictor] = []
        try:
            # Bounded as a whole: a file that never ends (a device, a huge directory) or a
            # loader that hangs fails the load instead of holding the model's lock forever.
            # The abandoned thread cannot be stopped; it finishes on its own.
            async with asyncio.timeout(spec.load_timeout_s):
                logger.info(
                    "model '%s' version %s loading in worker pid %d from %s%s",
                    self.name,
                    spec.version,
                    self.worker_pid,
                    spec.source,
                    await _off_loop(_size_of, spec),
                )
                executor, runtime_name, policy, state = await self._build_executor(
                    spec, instances, matching
                )
                maps = all(instance.shares_weights for instance in executor.instances)
                # Before the warm-up, which then runs as fast as requests will.
                prefaulted = (
                    await _off_loop(prefault_weights, self.name, spec.artifact, spec.prefault)
                    if maps
                    else None
                )
                answered_shape, answer = None, None
                if spec.warmup is not None:
                    answered_shape, answer = await self._warm_up(spec, executor.instances)
        except TimeoutError:
            await _close_all(instances, self.name)
            raise ModelLoadError(
                self.name,
                spec.source,
                f"the load did not finish within load_timeout_s ({spec.load_timeout_s:g} s)",
            ) from None
        except Exception as exc:
            await _close_all(instances, self.name)
            raise ModelLoadError(self.name, spec.source, exc) from exc
        # Only now: a failed reload leaves what the serving instances answered.
        self.spec, self.runtime_name, self.concurrency = spec, runtime_name, policy
        self.artifact_state = state
        self._answered_shape, self._sample_answer = answered_shape, answer
        resident, mapped_size = (
            await anyio.to_thread.run_sync(mapped_file_bytes, spec.artifact) if maps else (0, 0)
        )
        self.mapped_bytes = resident
        self.load_seconds = time.perf_counter() - started
        self.load_memory = sample_process_memory() - before
        # Measured, not claimed: a predictor that maps its file may still hold most of its
        # weights privately (a forest maps its small classes_ array and copies its trees).
        # The weights are shared when what is mapped is at least what the load added
        # privately besides it (the runtime says first whether it maps its weights at all:
        # scikit-learn counts the bytes of the arrays the estimator holds mapped).
        private = max(0, self.load_memory.uss - resident)
        self._weights_shared = maps and mapped_size > 0 and mapped_size >= private
        self.loaded_at = time.time()
        self.load_count += 1
        logger.info(
            "model '%s' version %s %s in worker pid %d in %.2f s%s, memory %s RSS, %s USS "
            "(runtime %s, concurrency %s; each worker process loads its own copy)",
            self.name,
            self.version,
            "loaded" if self.load_count == 1 else f"loaded again (load {self.load_count})",
            self.worker_pid,
            self.load_seconds,
            _prefault_note(prefaulted),
            format_bytes(self.load_memory.rss),
            format_bytes(self.load_memory.uss),
            self.runtime_name,
            self.concurrency,
        )
        return executor

    async def _build_executor(
        self,
        spec: ModelSpec,
        instances: list[Predictor],
        matching: tuple[FileState, str] | None,
    ) -> tuple[Executor, str, Concurrency, FileState | None]:
        # Before the pin is checked: the bytes the load reads must be those it was checked
        # against, and one file's, not parts of two.
        before = await _off_loop(file_state, spec.artifact)
        if matching is not None and before != matching[0]:
            raise ArtifactChangedError(since=matching[1])
        if spec.sha256 is not None and spec.artifact is not None:
            await _off_loop(verify_sha256, spec.artifact, spec.sha256)
        runtime = resolve_runtime(spec)
        policy = spec.concurrency or Concurrency.parse(runtime.default_concurrency)
        for _ in range(instances_needed(policy)):
            instances.append(await _off_loop(runtime.load, spec))
        await _off_loop(check_unchanged, spec.artifact, before)
        return make_executor(policy, instances, name=self.name), runtime.name, policy, before

    async def unload(self, *, on_request: bool = False, timeout: float | None = None) -> None:
        """Let queued and running requests finish, then release the model's instances (their
        ``close``), once; the state becomes unloaded. ``on_request``: an operator asked for it
        (model repository API), so the server's readiness stops counting this model.
        ``timeout``: wait at most that long for queued and running requests (shutdown)."""
        async with self._lifecycle:
            if on_request:
                self._wanted = False
            batcher, self._batcher = self._batcher, None
            executor, self._executor = self._executor, None
            generation, self._generation = self._generation, None
            if self.state is not ModelState.FAILED:
                self._state = ModelState.UNLOADED
            self._notify()
            # The versions reloads replaced end their streams within the same ``timeout``.
            closing = [*self._retiring.values(), *([generation] if generation else [])]
            await asyncio.gather(*(queue.close(timeout) for queue in closing))
            await _retire(batcher, executor, self.name, timeout)
            await asyncio.gather(*self._retiring, return_exceptions=True)  # logged: _retired

    @property
    def generates(self) -> bool:
        """Whether the model generates text token by token (the generate and OpenAI routes)."""
        return self._generation is not None

    @property
    def embeds_text(self) -> bool:
        """Whether the model answers texts with their vectors (OpenAI's /v1/embeddings)."""
        executor = self._executor
        return executor is not None and executor.instances[0].embeds_text

    @property
    def generation(self) -> GenerationQueue | None:
        """The model's generation queue while it is loaded, if it generates (figures)."""
        return self._generation

    @property
    def batcher(self) -> Batcher | None:
        """The model's queue and dispatcher while it is loaded (read-only use: figures)."""
        return self._batcher

    def refuse_if_too_many(self, examples: int) -> None:
        """Raise RequestTooLargeError (413) for a request of more examples than the model
        takes in one request (``max_request_examples``, by default ``max_queue``)."""
        most = self.spec.max_request_examples or self.spec.max_queue
        if examples > most:
            raise RequestTooLargeError(
                f"the request holds {examples} examples; model '{self.name}' takes at most "
                f"{most} per request (max_request_examples): split it"
            )

    def refuse_if_full(self) -> None:
        """Raise QueueFullError (503) when the queue has no room left, whatever a request
        holds; ``predict`` checks the rest."""
        if self._batcher is not None:
            self._batcher.refuse_if_full()

    async def predict(
        self,
        inputs: Any,
        *,
        timeout: float | None = None,
        parameters: Mapping[str, Any] | None = None,
    ) -> list[Any]:
        """Predict for one example or a list of examples; returns one output per example.

        The request waits in the model's bounded queue (``QueueFullError`` when it is full)
        and is answered within ``timeout`` seconds, or the model's ``timeout_s``, whichever is
        shorter (``DeadlineExceededError``); if it is still queued then, the model never sees
        it. Cancelling the call (a client that went away) removes it from the queue too.
        ``parameters`` reach the predictor where it declares them (``request_parameters``);
        others are not passed on.
        """
        executor = self._executor
        if executor is None or self.state not in _SERVING:
            raise ModelNotReadyError(self.name, self.state.value)
        predictor = executor.instances[0]
        examples = split_examples(inputs, predictor.signature, predictor.inputs)
        return await self.predict_examples(examples, timeout=timeout, parameters=parameters)

    def generate(
        self,
        request: GenerationRequest,
        *,
        timeout: float | None = None,
        arrived: float | None = None,
    ) -> AsyncGenerator[Delta | Finished, None]:
        """Generate text for one request, as it is generated: ``Delta``s, then ``Finished``.

        Raises before the first event for a request the model cannot take (not generating:
        ``InvalidInputError``; its queue full; its deadline passed); a deadline reached after
        it ends the stream with ``Finished(reason="deadline")``. Close the iterator (``async
        with contextlib.aclosing(...)``) when its client goes away: the sequence then leaves
        the model's batch at its next step. ``timeout``, ``arrived``: as for ``predict``."""
        generation = self._generation
        if generation is None or self.state not in _SERVING:
            if self.state not in _SERVING:
                raise ModelNotReadyError(self.name, self.state.value)
            raise InvalidInputError(f"model '{self.name}' does not generate text")
        deadline, deadline_s = self._deadline(timeout, arrived)
        return generation.stream(request, deadline=deadline, deadline_s=deadline_s)

    def _deadline(
        self, timeout: float | None, arrived: float | None
    ) -> tuple[float | None, float | None]:
        """A request's deadline in the loop's time, and its length (None: none)."""
        if timeout is not None and not 0 < timeout < math.inf:
            raise InvalidInputError(
                f"a timeout must be a positive number of seconds; got {timeout}"
            )
        limits = [t for t in (timeout, self.spec.timeout_s) if t is not None]
        deadline_s = min(limits) if limits else None
        if deadline_s is None or deadline_s > _LONGEST_DEADLINE_S:
            return None, None  # longer than any request lives: the same as none
        now = asyncio.get_running_loop().time()
        start = now if arrived is None else min(arrived, now)
        if start + deadline_s <= now:
            # Already late (a slow body, a busy loop): the model never sees it.
            raise DeadlineExceededError(self.name, deadline_s)
        return start + deadline_s, deadline_s

    async def predict_examples(
        self,
        examples: list[Any],
        *,
        timeout: float | None = None,
        parameters: Mapping[str, Any] | None = None,
        arrived: float | None = None,
    ) -> list[Any]:
        """``predict`` for inputs already split into examples (a protocol that carries the
        batch dimension itself, like the Open Inference Protocol's tensors).

        ``arrived``: when the request reached the server, in the event loop's time; the
        deadline counts from there (default: now). An answer ready after the deadline is a
        ``DeadlineExceededError`` too: its client has stopped waiting for it."""
        answer = await self.answer_examples(
            examples, timeout=timeout, parameters=parameters, arrived=arrived
        )
        return answer.outputs

    async def answer_examples(
        self,
        examples: list[Any],
        *,
        timeout: float | None = None,
        parameters: Mapping[str, Any] | None = None,
        arrived: float | None = None,
    ) -> Answer:
        """``predict_examples``, with the version that computed the outputs: a request
        queued before a reload is answered by the version it was queued for, which the
        model's ``version`` no longer says once the reload is done."""
        return await self.answer_encoded(
            examples, _as_it_is, timeout=timeout, parameters=parameters, arrived=arrived
        )

    async def answer_encoded(
        self,
        examples: list[Any],
        encode: Callable[[Answer], Awaitable[_T]],
        *,
        timeout: float | None = None,
        parameters: Mapping[str, Any] | None = None,
        arrived: float | None = None,
    ) -> _T:
        """``answer_examples``, then ``encode`` of the answer (a protocol's response built
        from it): the request counts as a success in the model's statistics only once that
        is built. An answer that cannot be built (outputs JSON cannot carry), or whose
        client left after the model answered, counts as a failure, as its client sees it."""
        batcher, executor = self._batcher, self._executor
        if batcher is None or executor is None or self.state not in _SERVING:
            raise ModelNotReadyError(self.name, self.state.value)
        if not examples:
            raise InvalidInputError("the request holds no example: send at least one")
        self.refuse_if_too_many(len(examples))
        taken = executor.instances[0].request_parameters
        passed = {k: v for k, v in parameters.items() if k in taken} if parameters else None
        if passed:
            executor.instances[0].check_parameters(passed)
        deadline, deadline_s = self._deadline(timeout, arrived)
        submitted = time.perf_counter()
        future = batcher.submit(examples, deadline, passed, caller_counts_success=True)
        try:
            if deadline is None:
                outputs = await future
            else:
                # The batcher answers a request whose call returned past its deadline with
                # the 504 itself, so that its statistics count what the client gets (a later
                # check here made a 504 of an answer counted as a success).
                try:
                    remaining = deadline - asyncio.get_running_loop().time()
                    outputs = await asyncio.wait_for(future, remaining)
                except (TimeoutError, DeadlineExceededError):
                    raise DeadlineExceededError(self.name, deadline_s) from None
            encoded = await encode(Answer(outputs, batcher.version))
        except BaseException as failure:
            # The model answered; what came after failed: counted here, as the batcher left
            # it to (a failed or cancelled future it counted itself). A client's mistake seen
            # only in the answer (an output name the model's answers do not hold) is neither
            # the model's failure nor an answer: not counted.
            answered = future.done() and not future.cancelled() and future.exception() is None
            if answered and not isinstance(failure, InvalidInputError):
                batcher.count_answer(False, time.perf_counter() - submitted)
            said = output_error(failure) if answered else failure
            if isinstance(said, ModelRaisedError):
                said.of_model(self.name)
            if said is not failure:
                raise said from None
            raise
        batcher.count_answer(True, time.perf_counter() - submitted)
        if self._sample_answer is None and not passed and self._executor is executor:
            # No warm-up told what this model answers: its first full answer does (metadata).
            self._sample_answer = outputs[:1]
        return encoded

    async def _warm_up(
        self, spec: ModelSpec, instances: Sequence[Predictor]
    ) -> tuple[tuple[int, ...] | None, list[Any] | None]:
        """Run the warm-up input through every instance (each pool slot has its own caches),
        by the same prepare-and-predict path as requests. Returns the shape of its examples
        when the model declares none (a shape it is known to answer), and the first
        instance's answer."""
        examples = split_examples(spec.warmup, instances[0].signature, instances[0].inputs)
        answer: list[Any] | None = None
        for instance in instances:
            [outcome] = await _off_loop(run_batch, instance, [examples])
            if outcome.error is not None:
                error = getattr(outcome.error, "model_error", outcome.error)
                raise RuntimeError(f"warm-up failed: {describe_exception(error)}")
            if answer is None:
                answer = outcome.outputs
        shape = None if instances[0].signature is not None else common_shape(examples)
        return shape, answer


_SERVING = (ModelState.READY, ModelState.RELOADING)
# The longest a predictor's close is waited for (at shutdown, at a reload's end): within the
# supervisor's grace after a worker's drain (UNLOAD_GRACE_SECONDS).
CLOSE_TIMEOUT_S = 5.0
# A deadline past this (a year) is no deadline: the event loop's timers cannot hold 1e300 s.
_LONGEST_DEADLINE_S = 365 * 24 * 3600.0
_T = TypeVar("_T")


async def _off_loop(function: Callable[..., _T], *args: Any) -> _T:
    """Run a step of a load (or a close) in a daemon thread of its own: a timeout or a
    cancellation stops waiting for it at once, and a step that never returns does not keep
    the process alive
    (anyio's worker threads are joined at exit: after a reload whose load hung, SIGTERM never
    ended a one-worker server). Whatever the step raises, SystemExit included, is the load's
    failure, never the server's exit."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[_T] = loop.create_future()

    def settle(result: Any, error: BaseException | None) -> None:
        if done.done():  # given up on (a timeout, a cancellation)
            return
        if error is None:
            done.set_result(result)
        else:
            done.set_exception(error)

    def step() -> None:
        result: Any = None
        error: BaseException | None = None
        try:
            result = function(*args)
        except BaseException as exc:  # SystemExit, KeyboardInterrupt from the loader's code
            error = as_exception(exc)
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits
            loop.call_soon_threadsafe(settle, result, error)

    threading.Thread(target=step, name="loadonce-load", daemon=True).start()
    return await done


def _prefault_note(prefaulted: Prefaulted | None) -> str:
    if prefaulted is None:
        return ""
    what = "prefaulting" if prefaulted.how == "populated" else "reading ahead"
    return (
        f" ({prefaulted.seconds:.2f} s of it {what} "
        f"{prefaulted.bytes / 2**20:,.1f} MiB of mapped weights)"
    )


def _size_of(spec: ModelSpec) -> str:
    size = artifact_bytes(spec.artifact)
    # Unreadable: the load itself names what is missing.
    return "" if size is None else f" ({size / 2**20:,.1f} MiB)"


async def _retire(
    batcher: Batcher | None, executor: Executor | None, name: str, timeout: float | None = None
) -> None:
    """Let a batcher finish what it queued (for at most ``timeout``), then stop its threads
    and close its instances (a hung call's instance is left to it)."""
    if batcher is not None:
        await batcher.close(timeout)
        if batcher.hung_calls:
            if executor is not None:
                executor.shutdown()
            return
    if executor is not None:
        executor.shutdown()
        await _close_all(executor.instances, name)


async def _retire_generating(
    generation: GenerationQueue, batcher: Batcher | None, executor: Executor | None, name: str
) -> None:
    """Close a replaced version that generates after its last stream (an unload cuts them
    short: ``GenerationQueue.close`` again, with its timeout), then its queue and instances."""
    await generation.close()
    await _retire(batcher, executor, name)


@dataclass(frozen=True)
class Answer:
    """A request's outputs (one per example) and the version of the model that computed
    them."""

    outputs: list[Any]
    version: str


async def _as_it_is(answer: Answer) -> Answer:
    return answer


def _artifacts_of(*specs: ModelSpec) -> tuple[str, ...]:
    return tuple(str(spec.artifact) for spec in specs if spec.artifact is not None)


def _make_batcher(model: Model, executor: Executor) -> Batcher:
    spec, policy = model.spec, model.concurrency
    assert policy is not None
    model._batches_exactly = exact = executor.instances[0].batches_exactly
    model._batching = batching = spec.batching_for(exact)
    fill_wait_s: float | None
    if batching is None:
        # One call per request, as many at once as the policy allows.
        max_batch_size, max_wait_s, fill_wait_s, concurrent = 1, 0.0, 0.0, policy.size
    else:
        max_batch_size = batching.max_batch_size
        max_wait_s = batching.max_wait_ms / 1000
        fill_wait_s = None if batching.fill_wait_ms == "auto" else batching.fill_wait_ms / 1000
        concurrent = batching.concurrent_batches or (policy.size if policy.kind == "pool" else 1)
    queue = object()  # this batcher, in the model's counts (it reports before it exists)
    batcher = Batcher(
        model=model.name,
        version=spec.version,
        observer=model.observer,
        executor=executor,
        max_batch_size=max_batch_size,
        max_wait_s=max_wait_s,
        fill_wait_s=fill_wait_s,
        max_queue=spec.max_queue,
        concurrent_batches=concurrent,
        hang_timeout_s=spec.hang_timeout,
        on_hung_changed=functools.partial(model._hung_changed, queue),
        on_queue_changed=functools.partial(model._queue_changed, queue),
        answered_shape=model._answered_shape,
        tracer=model.tracer,
    )
    batcher.start()
    return batcher


def _make_generation(model: Model, executor: Executor) -> GenerationQueue | None:
    engine = executor.instances[0].generation_engine()
    if engine is None:
        return None
    batching = model.batching
    queue = object()  # this queue, in the model's counts
    return GenerationQueue(
        model=model.name,
        engine=engine,
        executor=executor,
        # Without batching, one sequence at a time; the others wait their turn.
        max_sequences=1 if batching is None else batching.max_batch_size,
        max_queue=model.spec.max_queue,
        static=batching is not None and batching.generation == "static",
        observer=model.observer,
        hang_timeout_s=model.spec.hang_timeout,
        on_hung_changed=functools.partial(model._hung_changed, queue),
        on_queue_changed=functools.partial(model._queue_changed, queue),
    )


def _count(counts: dict[object, int], queue: object, count: int) -> None:
    """``queue``'s count; a queue at 0 is forgotten (a retired one leaves nothing behind)."""
    if count:
        counts[queue] = count
    else:
        counts.pop(queue, None)


async def _close_all(instances: Sequence[Predictor], name: str) -> None:
    for instance in reversed(instances):
        try:
            # In a daemon thread of its own, bounded: a close that never returned kept a
            # one-worker server from ever exiting after SIGTERM, and the memory plan's
            # process (so the server's start) waiting for good. Whatever it raises,
            # SystemExit included, is its failure (raised on the loop, one ended the reload
            # that retired the instance, and at shutdown the unload of every model after it).
            await asyncio.wait_for(_off_loop(instance.close), CLOSE_TIMEOUT_S)
        except TimeoutError:
            logger.warning(
                "model '%s' did not close within %g s; left closing in its thread",
                name,
                CLOSE_TIMEOUT_S,
            )
        except Exception as exc:
            # Shutdown goes on: one model failing to close must not keep the others loaded.
            logger.warning("model '%s' failed to close: %s", name, describe_exception(exc))
