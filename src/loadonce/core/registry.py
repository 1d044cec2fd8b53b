"""Registry: every declared model of one app, loaded together, kept on ``app.state``."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable
from pathlib import Path

from loadonce.core.artifacts import DEFAULT_MAX_ARTIFACT_BYTES, ArtifactRoots
from loadonce.core.collector import freeze_survivors, refreeze_if_frozen
from loadonce.core.declarations import check_model_specs
from loadonce.core.errors import LoadonceError, ModelLoadError, ModelNotFoundError
from loadonce.core.model import Model, ModelState
from loadonce.core.observer import ModelObserver
from loadonce.core.spec import ModelSpec
from loadonce.core.tracing import CallTracer

logger = logging.getLogger("loadonce")


class Registry:
    """The models of one app in one worker process, in the order they were declared."""

    def __init__(
        self,
        specs: Iterable[ModelSpec],
        *,
        unloaded: Iterable[str] = (),
        artifact_roots: Iterable[Path] | None = None,
        max_artifact_bytes: int | None = DEFAULT_MAX_ARTIFACT_BYTES,
        declared: Iterable[ModelSpec] = (),
    ) -> None:
        """``unloaded``: models to leave unloaded, as an operator left them (a worker that
        replaces one that died follows the others). ``artifact_roots``: the directories
        under which a control request may name a new artifact (default: those of the
        declared artifacts; ``core/artifacts.py``); ``max_artifact_bytes``: the largest file such a
        request may name (None: no limit). ``declared``: the models as the operator declared
        them, where ``specs`` hold what control requests changed since (a worker started
        after a reload): what a load "as declared" goes back to, in every worker alike."""
        specs = check_model_specs(specs)
        self.artifact_roots = ArtifactRoots.of(specs, artifact_roots, max_bytes=max_artifact_bytes)
        self._models = {spec.name: Model(spec) for spec in specs}
        for spec in declared:
            self.get(spec.name).declared_spec = spec
        for name in unloaded:
            self.get(name).leave_unloaded()
        self._failure: LoadonceError | None = None
        self._draining = False
        self._observer: ModelObserver | None = None

    @property
    def failure(self) -> LoadonceError | None:
        """Why this app's startup failed, as one line for the log (None while all is well)."""
        return self._failure

    def refuse_to_serve(self, reason: str) -> LoadonceError:
        """Record why this app does not serve after all (its startup is being stopped), and
        return the error to raise."""
        self._failure = LoadonceError(reason)
        return self._failure

    @property
    def draining(self) -> bool:
        """Set once the server was told to stop: it finishes what it accepted, not ready."""
        return self._draining

    def start_draining(self) -> None:
        self._draining = True

    @property
    def models(self) -> list[Model]:
        return list(self._models.values())

    def get(self, name: str) -> Model:
        try:
            return self._models[name]
        except KeyError:
            raise ModelNotFoundError(name, list(self._models)) from None

    def __contains__(self, name: object) -> bool:
        return name in self._models

    @property
    def is_ready(self) -> bool:
        """True only when every declared model is ready in this worker, never with none ready.

        A model an operator unloaded on purpose (model repository API) is left out until it
        is loaded again, as in Triton: otherwise unloading one model would take the whole
        server out of its load balancer, and with it the way to load the model back.
        """
        if self.draining:
            return False
        wanted = [m for m in self._models.values() if m.wanted]
        return bool(wanted) and all(m.is_ready for m in wanted)

    def observe(self, observer: ModelObserver) -> None:
        """Have every model report its changes (state, queue, batches) to ``observer``, and
        the registry its garbage-collector freezes."""
        self._observer = observer
        for model in self._models.values():
            model.watch(observer)

    def trace(self, tracer: CallTracer) -> None:
        """Trace every model's loads and calls with ``tracer`` (``loadonce.tracing``)."""
        for model in self._models.values():
            model.trace(tracer)

    def freeze_collector(self) -> None:
        """Once startup is over: leave every object alive now out of garbage collection."""
        self._report_frozen(freeze_survivors())

    def refreeze_collector(self) -> None:
        """After a model changed while serving (load, reload, unload): let the collector free
        what the change left in reference cycles, and freeze what is alive again."""
        self._report_frozen(refreeze_if_frozen())

    def _report_frozen(self, objects: int | None) -> None:
        if objects is not None and self._observer is not None:
            self._observer.collector_frozen(objects)

    def states(self) -> dict[str, ModelState]:
        return {name: model.state for name, model in self._models.items()}

    async def load_all(self) -> None:
        """Load every model in declaration order; on the first failure unload the loaded ones."""
        self._failure = None
        logger.info(
            "loading %d model(s) in worker pid %d: %s",
            len(self._models),
            os.getpid(),
            ", ".join(self._models),
        )
        loaded: list[Model] = []
        for model in self._models.values():
            if not model.wanted:
                continue
            try:
                await model.load()
            except ModelLoadError as failure:
                self._failure = failure
                for done in reversed(loaded):
                    await done.unload()
                raise
            loaded.append(model)

    async def unload_all(self, timeout: float | None = None) -> None:
        """Unload in reverse order of loading, so a model may rely on one loaded before it;
        ``timeout``: the most each model waits for its queued and running requests."""
        for model in reversed(self._models.values()):
            await model.unload(timeout=timeout)

    def on_hung(self, hook: Callable[[Model], None]) -> None:
        """Call ``hook`` whenever a model's predict call is found hung."""
        for model in self._models.values():
            model.on_hung(hook)

    def hung_calls(self) -> dict[str, int]:
        """The models with hung predict calls in this worker, and how many."""
        return {name: m.hung_calls for name, m in self._models.items() if m.hung_calls}
