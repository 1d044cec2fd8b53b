"""Model: the live handle of one declared model in one worker: its state, load and predict path."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence
from enum import StrEnum
from typing import Any

import anyio.to_thread

from loadonce._concurrency import Executor, instances_needed, make_executor
from loadonce._errors import (
    InvalidInputError,
    ModelLoadError,
    ModelNotReadyError,
    describe_exception,
)
from loadonce._inputs import split_examples
from loadonce._integrity import verify_sha256
from loadonce._memory import MemorySample, format_bytes, sample_process_memory
from loadonce._spec import Concurrency, ModelSpec
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
        self.state = ModelState.PENDING
        self.worker_pid = os.getpid()
        self.load_count = 0
        self.load_seconds: float | None = None
        self.load_memory: MemorySample | None = None
        self.loaded_at: float | None = None
        self.error: str | None = None
        self.runtime_name: str | None = None
        self.concurrency: Concurrency | None = spec.concurrency
        self._executor: Executor | None = None

    @property
    def name(self) -> str:
        return self.spec.name

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
    def outputs(self) -> Sequence[TensorInfo]:
        return () if self._executor is None else self._executor.instances[0].outputs

    @property
    def is_ready(self) -> bool:
        return self.state is ModelState.READY

    async def load(self) -> None:
        """Load (all pool instances of) the model in a thread, warm it up, then mark it ready."""
        self.state = ModelState.LOADING
        self.error = None
        self.worker_pid = os.getpid()
        before = sample_process_memory()
        started = time.perf_counter()
        instances: list[Predictor] = []
        try:
            executor = await self._build_executor(instances)
            if self.spec.warmup is not None:
                await self._warm_up(executor.instances)
        except Exception as exc:
            self.state = ModelState.FAILED
            await _close_all(instances, self.name)
            failure = ModelLoadError(self.name, self.spec.source, exc)
            self.error = str(failure)
            raise failure from exc
        self.load_seconds = time.perf_counter() - started
        self.load_memory = sample_process_memory() - before
        self.loaded_at = time.time()
        self.load_count += 1
        self._executor = executor
        self.state = ModelState.READY
        logger.info(
            "model '%s' version %s loaded in worker pid %d in %.2f s, memory %s RSS, %s USS "
            "(runtime %s, concurrency %s; each worker process loads its own copy)",
            self.name,
            self.version,
            self.worker_pid,
            self.load_seconds,
            format_bytes(self.load_memory.rss),
            format_bytes(self.load_memory.uss),
            self.runtime_name,
            self.concurrency,
        )

    async def _build_executor(self, instances: list[Predictor]) -> Executor:
        spec = self.spec
        if spec.sha256 is not None and spec.artifact is not None:
            await anyio.to_thread.run_sync(verify_sha256, spec.artifact, spec.sha256)
        runtime = resolve_runtime(spec)
        self.runtime_name = runtime.name
        policy = spec.concurrency or Concurrency.parse(runtime.default_concurrency)
        self.concurrency = policy
        for _ in range(instances_needed(policy)):
            instances.append(await anyio.to_thread.run_sync(runtime.load, spec))
        return make_executor(policy, instances)

    async def unload(self) -> None:
        """Release the model's instances (their ``close``), once; the state becomes unloaded."""
        executor, self._executor = self._executor, None
        if self.state is not ModelState.FAILED:
            self.state = ModelState.UNLOADED
        if executor is not None:
            await _close_all(executor.instances, self.name)

    async def predict(self, inputs: Any) -> list[Any]:
        """Predict for one example or a list of examples; returns one output per example."""
        executor = self._executor
        if executor is None or self.state is not ModelState.READY:
            raise ModelNotReadyError(self.name, self.state.value)
        return await self._predict_on(executor, inputs)

    async def _predict_on(self, executor: Executor, inputs: Any) -> list[Any]:
        examples = split_examples(inputs, executor.instances[0].signature)
        return await executor.run(_batch_call(examples))

    async def _warm_up(self, instances: Sequence[Predictor]) -> None:
        """Run the warm-up input through every instance (each pool slot has its own caches),
        by the same prepare-and-predict path as requests."""
        try:
            call = _batch_call(split_examples(self.spec.warmup, instances[0].signature))
            for instance in instances:
                await anyio.to_thread.run_sync(call, instance)
        except Exception as exc:
            raise RuntimeError(f"warm-up failed: {describe_exception(exc)}") from exc


def _batch_call(examples: list[Any]) -> Callable[[Predictor], list[Any]]:
    """What runs in the worker thread: validate and convert the examples, then predict."""

    def call(predictor: Predictor) -> list[Any]:
        try:
            batch = predictor.prepare(examples)
        except InvalidInputError:
            raise
        except (ValueError, TypeError) as exc:
            raise InvalidInputError(describe_exception(exc)) from exc
        return _one_output_per_example(predictor.predict(batch), len(examples))

    return call


def _one_output_per_example(outputs: Sequence[Any], count: int) -> list[Any]:
    try:
        listed = list(outputs)
    except TypeError:
        raise RuntimeError(
            f"the model returned {type(outputs).__name__}, not one output per example"
        ) from None
    if len(listed) != count:
        raise RuntimeError(f"the model returned {len(listed)} outputs for {count} examples")
    return listed


async def _close_all(instances: Sequence[Predictor], name: str) -> None:
    for instance in reversed(instances):
        try:
            await anyio.to_thread.run_sync(instance.close)
        except Exception as exc:
            # Shutdown goes on: one model failing to close must not keep the others loaded.
            logger.warning("model '%s' failed to close: %s", name, describe_exception(exc))
