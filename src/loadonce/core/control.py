"""Model control: load, unload and reload a declared model while the server runs.

A request (``ControlRequest``) is applied in every worker process of the server, each
reporting a ``WorkerOutcome``. ``LocalControl`` applies it in this process (one worker, or a
library app); ``loadonce serve --workers N`` replaces it with a control that goes through the
supervisor, which hands the request to every worker and gathers their outcomes
(``server/control_channel.py``). The admin route and the Open Inference Protocol's
repository routes both call the app's control (``LoadonceState.control``), so they behave the
same way.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

from pydantic import ValidationError

from loadonce.core.artifacts import ArtifactRoots, refuse_code_running_format
from loadonce.core.errors import (
    ForbiddenError,
    InvalidInputError,
    LoadonceError,
    ModelLoadError,
    describe_validation,
    without_native_trace,
)
from loadonce.core.integrity import FileState
from loadonce.core.spec import Batching, ModelSpec
from loadonce.runtimes import resolve_runtime

if TYPE_CHECKING:
    # Not imported with this module: the supervisor of `--workers N` reads its requests and
    # outcomes, and holds no model.
    from loadonce.core.registry import Registry

Action = Literal["load", "unload"]
# A batching a request can set: a table, none ("off"), the runtime's default ("default").
SetBatching = Batching | Literal["off", "default"]


@dataclass(frozen=True)
class ControlRequest:
    """``load`` loads a model, or reloads it if it is loaded; ``artifact``, ``version``,
    ``sha256`` and ``batching`` (``"off"``: none; ``"default"``: the runtime's, as a spec
    that declares none; ``"declared"``: as the operator declared it, whatever an earlier
    request set) load a changed spec instead of the current one. ``unload`` unloads it.

    ``"declared"`` is the server's to read, not a worker's: a worker that the supervisor
    started after a change starts from the changed spec. The control that applies the request
    turns it into one of the others first (``as_declared``): the supervisor from the config it
    started with, a single process from its models' first specs."""

    action: Action
    model: str
    artifact: str | None = None
    version: str | None = None
    sha256: str | None = None
    batching: SetBatching | Literal["declared"] | None = None
    # Set by the supervisor once the round's first worker loaded: the state of the artifact's
    # file it read, and which worker that was. The next workers must read the file in that
    # state (else a file replaced between two workers' loads was served as one version with
    # different bytes in each).
    matching: tuple[FileState, str] | None = None

    def as_declared(self, declared: ModelSpec) -> ControlRequest:
        """The request with a ``"declared"`` batching set to what ``declared`` (the model's
        spec as the operator declared it) says."""
        if self.batching != "declared":
            return self
        return replace(self, batching=declared_batching(declared))

    @property
    def changes(self) -> dict[str, Any]:
        if self.batching == "declared":
            raise ValueError("a 'declared' batching is read through as_declared first")
        changed: dict[str, Any] = {}
        if self.artifact is not None:
            changed["artifact"] = Path(self.artifact)
        if self.version is not None:
            changed["version"] = self.version
        if self.sha256 is not None:
            changed["sha256"] = self.sha256
        if self.batching is not None:
            changed["batching"] = {"off": False, "default": None}.get(
                self.batching if isinstance(self.batching, str) else "", self.batching
            )
        return changed


def declared_batching(spec: ModelSpec) -> SetBatching:
    """The batching ``spec`` declares, as a request sets it: off, a table of its own, or
    (unset) the runtime's default."""
    if spec.batching is False:
        return "off"
    if isinstance(spec.batching, Batching):
        return spec.batching
    return "default"


# The state of a worker a control request did not reach (an earlier worker's load failed):
# it goes on serving what it served.
NOT_TRIED = "not tried"
# Why a request was cut short by the server itself, not refused for what it asked: answered
# 503 (try again), never the 400 of a load that failed.
SERVER_STOPPING = "the server is stopping"
WORKER_EXITED = "the worker exited while applying it"
WORKER_GONE = "the worker exited before the request reached it"
# A worker a load had switched, switched back when another worker failed: what it serves.
SWITCHED_BACK = "switched back to what the other workers serve"


# How often a control waiting for a load looks whether the server is stopping.
DRAINING_POLL_S = 0.2


class ControlInterruptedError(LoadonceError):
    """The server stopped, or a worker died, while a control request was being applied
    (HTTP 503): the request may have reached some workers; nothing is wrong with it."""

    status = 503
    retry_after_s = 1  # a worker that died is replaced, a stopping server restarted


_INTERRUPTIONS = (SERVER_STOPPING, WORKER_EXITED, WORKER_GONE)


def check_not_interrupted(outcomes: list[WorkerOutcome]) -> None:
    """Raise ControlInterruptedError if the server cut the request short."""
    cut = [o for o in outcomes if not o.ok and o.error in _INTERRUPTIONS]
    if cut:
        raise ControlInterruptedError(f"worker pid {cut[0].pid}: {cut[0].error}; try again")


@dataclass(frozen=True)
class WorkerOutcome:
    pid: int
    ok: bool
    version: str
    state: str
    error: str | None = None
    # The state of the artifact's file this worker's load read (None: no file artifact, or
    # not loaded here): what the next workers of the round must read (``matching``).
    artifact_state: FileState | None = None


def describe_failures(outcomes: list[WorkerOutcome], *, traces: bool = True) -> str:
    """The failed workers' errors as one line, each with what its worker serves after the
    call (the one that failed, the ones switched back and those not tried alike); empty when
    every worker succeeded. ``traces``: keep a native stack trace an error ends with (off:
    it would run over the next worker's part)."""
    parts = []
    for o in outcomes:
        if not o.ok:
            error = str(o.error) if traces else without_native_trace(str(o.error))
            said = f"not tried, {error}" if o.state == NOT_TRIED else error
            parts.append(f"worker pid {o.pid}, {_standing(o)}: {said}")
    return "; ".join(parts)


def _standing(outcome: WorkerOutcome) -> str:
    if outcome.version and outcome.state in ("ready", "reloading", NOT_TRIED):
        return f"serving version {outcome.version}"
    return f"model {outcome.state or 'state unknown'}"


def describe_failed_round(request: ControlRequest, outcomes: list[WorkerOutcome]) -> str:
    """What every worker of the server says of a load that failed in some of them (as its
    model's error, ``Model.note_failed_change``): each worker's part, not only its own."""
    version = "" if request.version is None else f" (version {request.version})"
    what = f"the last {request.action} of model '{request.model}'{version}"
    return f"{what} failed: {describe_failures(outcomes, traces=False)}"


def failed_for_good(outcomes: list[WorkerOutcome]) -> bool:
    """Whether a request failed for what it asked (not cut short by the server itself)."""
    failed = [o for o in outcomes if not o.ok]
    return bool(failed) and not any(o.error in _INTERRUPTIONS for o in failed)


def changed_spec(spec: ModelSpec, request: ControlRequest, roots: ArtifactRoots) -> ModelSpec:
    """The spec with the request's changes, validated as a declared one is, and checked
    against the operator's policy (``core/artifacts.py``) before the new artifact is opened: an
    absolute path (the server may not run where the caller does) under ``roots``, a regular
    file or a directory, in a format the model's configured trust allows. A request's sha256
    only goes with a new artifact: the operator's pin of the configured one stands."""
    if request.artifact is not None and not request.artifact.strip():
        # Read as a path it would be '.', which the request never said.
        raise InvalidInputError(
            "artifact is empty: give the new artifact's absolute path, or leave artifact out "
            "to read the configured one again"
        )
    changes = request.changes
    if not changes:
        return spec
    artifact = changes.get("artifact")
    if artifact is None and "sha256" in changes:
        raise InvalidInputError(
            "sha256 checks a new artifact: send it with 'artifact' (the configured artifact's "
            "pin is the operator's, and a request cannot change it)"
        )
    if artifact is not None and spec.artifact is None:
        raise InvalidInputError(f"model '{spec.name}' is loaded by a loader, not an artifact")
    if artifact is not None:
        changes["artifact"] = roots.check(artifact)
    if "sha256" in changes and changes["artifact"].is_dir():
        # Refused here, before every worker tries it and fails reading a directory as a file.
        raise InvalidInputError(
            f"sha256 pins one file's bytes, and artifact '{artifact}' is a directory: "
            "pin a single-file artifact, or leave sha256 out"
        )
    if artifact is not None and "sha256" not in changes and spec.sha256 is not None:
        raise InvalidInputError(
            f"model '{spec.name}' is pinned by sha256: give the new artifact's sha256 as well"
        )
    fields = {name: getattr(spec, name) for name in type(spec).model_fields}
    try:
        changed = ModelSpec.model_validate({**fields, **changes})
    except ValidationError as exc:
        raise InvalidInputError(
            f"invalid change to model '{spec.name}': {describe_validation(exc)}"
        ) from None
    if artifact is not None:
        try:
            runtime = resolve_runtime(changed)
        except ValueError as exc:
            raise InvalidInputError(str(exc)) from None
        refuse_code_running_format(changed, runtime.runs_code(changed))
    return changed


async def apply_locally(registry: Registry, request: ControlRequest) -> WorkerOutcome:
    """Apply the request to this process's model; a failed load is an outcome, not a raise."""
    model = registry.get(request.model)
    error: str | None = None
    try:
        if request.action == "unload":
            await model.unload(on_request=True)
        else:
            await model.load(
                changed_spec(model.spec, request, registry.artifact_roots),
                matching=request.matching,
            )
    except (ModelLoadError, InvalidInputError, ForbiddenError) as failure:
        error = str(failure)
    # Even after a failure: a failed load's partial objects are garbage too.
    registry.refreeze_collector()
    return WorkerOutcome(
        pid=os.getpid(),
        ok=error is None,
        version=model.version,
        state=model.state.value,
        error=error,
        artifact_state=model.artifact_state if error is None else None,
    )


class ModelControl(Protocol):
    async def apply(self, request: ControlRequest) -> list[WorkerOutcome]:
        """Apply the request in every worker; one outcome per worker."""
        ...


class LocalControl:
    """Every model of the server lives in this process."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry

    async def apply(self, request: ControlRequest) -> list[WorkerOutcome]:
        model = self.registry.get(request.model)  # 404 before anything happens
        request = request.as_declared(model.declared_spec)
        if request.changes:
            changed_spec(model.spec, request, self.registry.artifact_roots)  # 400 or 403 likewise
        # As with several workers (server/control_channel.py): a stopping server starts no
        # load, and abandons the one it applies, which its shutdown would wait for (up to
        # load_timeout_s) before it could unload, whatever drain_timeout_s said.
        # Here, not at the module's top: the command line imports this module, and its
        # supervisor runs without asyncio (tests/test_exported_members.py).
        import asyncio

        stopping = ControlInterruptedError(f"{SERVER_STOPPING}; try again")
        if self.registry.draining:
            raise stopping
        applying = asyncio.ensure_future(apply_locally(self.registry, request))
        while not applying.done():
            await asyncio.wait({applying}, timeout=DRAINING_POLL_S)
            if self.registry.draining and not applying.done():
                applying.cancel()
                raise stopping
        return [applying.result()]
