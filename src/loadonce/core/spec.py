"""ModelSpec: what a user declares about one model, validated before anything loads."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    StrictBool,
    field_validator,
    model_validator,
)

from loadonce.core.config_model import ConfigModel

ConcurrencyKind = Literal["shared", "serialized", "pool"]

# Threads a `shared` model may use at once when the user does not say: enough to overlap
# I/O-bound or GIL-releasing predictors, few enough not to starve the app's own threadpool.
DEFAULT_SHARED_THREADS = 16

_CONCURRENCY_PATTERN = re.compile(r"^(shared|serialized|pool)(?::(\d{1,18}))?$")
# The most calls of one model at once in one worker (threads, or a pool's instances, or
# batches running): each is a thread, and a pool's each a copy of the model.
MOST_CALLS_AT_ONCE = 1024
# The largest size a dimension of input_shape may declare (int32's: no example is larger).
MOST_DIMENSION = 2**31 - 1


@dataclass(frozen=True, kw_only=True)
class Concurrency:
    """How calls may enter one model: its policy, and the number of threads or instances.

    - ``shared``: the predictor is thread-safe; up to ``size`` calls run on one instance.
    - ``serialized``: one call at a time on one instance, under a lock.
    - ``pool``: ``size`` instances loaded at startup, each used by one call at a time.
    """

    kind: ConcurrencyKind
    size: int

    @classmethod
    def parse(cls, text: str) -> Concurrency:
        """Read ``shared``, ``shared:N``, ``serialized`` or ``pool:N``."""
        match = _CONCURRENCY_PATTERN.match(text.strip())
        if match is None:
            raise ValueError(
                f"concurrency must be 'shared', 'shared:N', 'serialized' or 'pool:N', got {text!r}"
            )
        kind, size_text = match.group(1), match.group(2)
        if kind == "serialized":
            if size_text is not None:
                raise ValueError("'serialized' takes no size: it always allows one call at a time")
            return cls(kind="serialized", size=1)
        if kind == "pool":
            if size_text is None:
                raise ValueError("'pool' needs a size, for example 'pool:4'")
            size = int(size_text)
        else:
            size = DEFAULT_SHARED_THREADS if size_text is None else int(size_text)
        if not 1 <= size <= MOST_CALLS_AT_ONCE:
            # pool:100000000 began loading a hundred million copies of the model.
            raise ValueError(
                f"concurrency size must be from 1 to {MOST_CALLS_AT_ONCE}, got {size_text}"
            )
        return cls(kind="shared" if kind == "shared" else "pool", size=size)

    def __str__(self) -> str:
        if self.kind == "serialized":
            return "serialized"
        if self.kind == "shared" and self.size == DEFAULT_SHARED_THREADS:
            return "shared"
        return f"{self.kind}:{self.size}"


def _parse_concurrency(value: object) -> object:
    return Concurrency.parse(value) if isinstance(value, str) else value


ConcurrencyField = Annotated[
    Concurrency, BeforeValidator(_parse_concurrency), PlainSerializer(str, return_type=str)
]


def _variable_dims(value: object) -> object:
    if isinstance(value, list | tuple):
        for dim in value:
            if isinstance(dim, int) and (dim < -1 or dim == 0 or dim > MOST_DIMENSION):
                # 0: no example could ever have that shape (every request a 400).
                raise ValueError(
                    f"input_shape dimensions must be sizes of at least 1 (at most "
                    f"{MOST_DIMENSION}), or -1 for any; got {dim}"
                )
        return tuple(None if dim == -1 else dim for dim in value)
    return value


class Batching(ConfigModel):
    """Dynamic micro-batching: concurrent requests merged into one predict call."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    # At most int32's largest, as in Triton's ModelConfig (which describes it).
    max_batch_size: Annotated[int, Field(ge=1, le=2**31 - 1)] = 32
    # 0: a request that finds the model idle is dispatched at once; requests that arrive while
    # it is busy gather into the next batch anyway. Above 0, an idle model waits up to this
    # long for a fuller batch (lower cost per example, higher latency at low load).
    max_wait_ms: Annotated[float, Field(ge=0, le=10_000)] = 0.0
    # Under load only: when a call returns and fewer than max_batch_size examples wait, wait up
    # to this long for more before the next call (the clients just answered tend to send
    # again). A request that finds the model idle never waits for it. Pays where a call's cost
    # hardly depends on its size (a forest: ~5 ms for 1 row or 64); 0: the next call starts
    # at once with what waits. "auto": half the model's recent time per call, at most 2 ms
    # (a forest waits 2 ms, a model answering in 0.1 ms hardly at all).
    fill_wait_ms: Annotated[float, Field(ge=0, le=10_000)] | Literal["auto"] = 0.0
    # Batches running at once: by default the pool's size for pool:N, else 1 (a batched call
    # already parallelises inside the library, and batches grow while one runs).
    concurrent_batches: Annotated[int, Field(ge=1, le=MOST_CALLS_AT_ONCE)] | None = None
    # Generating models (token by token): up to max_batch_size sequences share each step.
    # "continuous": a request joins the batch between any two steps, and leaves it when it
    # ends; "static": requests join only an empty batch, which runs until its last sequence
    # ends (for comparison; an engine that cannot take sequences mid-flight is static anyway).
    generation: Literal["continuous", "static"] = "continuous"


# The batching a model gets when its spec leaves it unset and its runtime batches exactly:
# arrivals gather while the model is busy, a request that finds it idle starts at once (no
# max_wait_ms), so a lone request pays nothing; under load the next call waits for a fuller
# batch in proportion to what a call costs (fill_wait_ms "auto").
DEFAULT_BATCHING = Batching(max_batch_size=64, fill_wait_ms="auto")


_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$"
SHA256_PATTERN = r"^[0-9a-fA-F]{64}$"
# A version is named in URL paths (/v2/models/{m}/versions/{v}, which tritonclient does not
# escape), in metrics labels and in log lines: a slash, a dot segment, a control or invisible
# character, or a space would make it unaddressable or forge what those say.
_VERSION_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+:\-]{0,63}")


def _plain_version(value: str) -> str:
    if not _VERSION_PATTERN.fullmatch(value):
        raise ValueError(
            f"{value[:80]!r} is no version: 1 to 64 ASCII letters, digits, '.', '_', '-', '+' "
            "or ':', beginning with a letter or digit (it is named in URL paths, metrics and "
            "logs)"
        )
    return value


# The longest a model's timeouts may be (about 116 days): longer is no timeout at all.
MOST_SECONDS = 10_000_000.0


class ModelSpec(ConfigModel):
    """One model to serve: a name, and either a loader or an artifact (or both).

    ``loader`` is a callable (or ``"package.module:function"``) that returns the predictor; it is
    called with the artifact's path when ``artifact`` is set, and with no argument otherwise.
    ``artifact`` alone is loaded by the runtime named in ``runtime`` or chosen from its suffix.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", arbitrary_types_allowed=True)

    name: Annotated[str, Field(pattern=_NAME_PATTERN)]
    loader: Callable[..., Any] | str | None = None
    artifact: Path | None = None
    runtime: str | None = None
    version: Annotated[str, AfterValidator(_plain_version)] = "1"
    concurrency: ConcurrencyField | None = None
    warmup: Any = None
    # -1 (TOML has no null) or None marks a dimension of any size.
    input_shape: Annotated[tuple[int | None, ...], BeforeValidator(_variable_dims)] | None = None
    trust: StrictBool = False  # true or false: "yes" is no answer to "run its code?"
    # "mmap": map the weights from the artifact read-only where the format allows, so every
    # worker shares one copy in the page cache; "off": each worker reads its own copy.
    share: Literal["mmap", "off"] = "mmap"
    # Weights mapped from the artifact are read from disk when first used, so each worker's
    # first requests would pay for it. true: map them all into memory at load, before the
    # model counts as ready; false: leave them to first use; None: true when the artifact
    # fits in the memory available at load. Nothing to do for weights copied at load.
    prefault: bool | None = None
    sha256: Annotated[str, Field(pattern=SHA256_PATTERN)] | None = None
    options: dict[str, Any] = Field(default_factory=dict)
    # Batching (dynamic micro-batching): a [models.batching] table; true for its defaults; false
    # for none. Left unset: on, with DEFAULT_BATCHING, when the runtime's batched call gives
    # each example what a call of its own gives (Predictor.batches_exactly), else off.
    batching: Batching | StrictBool | None = None
    # The most examples that may wait for this model; beyond it, requests get 503 at once.
    max_queue: Annotated[int, Field(ge=1)] = 1024
    # The most examples one request may hold (413 beyond it); by default max_queue, since a
    # larger request could never wait in the queue beside others.
    max_request_examples: Annotated[int, Field(ge=1)] | None = None
    # Deadline of a request, from its arrival; a request may ask for less (X-Request-Timeout).
    # (Bounded, as the other timeouts: an infinite or 1e308 deadline made the derived hang
    # timeout infinite, and a hung call was never noticed.)
    timeout_s: Annotated[float, Field(gt=0, le=MOST_SECONDS, allow_inf_nan=False)] | None = None
    # The longest one load (or reload) may take, hashing and warm-up included; past it the
    # load fails like any failed load, and the model's control lock is free again.
    load_timeout_s: Annotated[float, Field(gt=0, le=MOST_SECONDS, allow_inf_nan=False)] = 600.0
    # A predict call running longer than this is hung: the model turns unhealthy (readiness
    # 503 in this worker; loadonce serve replaces the worker). Default: hang_timeout_default.
    hang_timeout_s: Annotated[float, Field(gt=0, le=MOST_SECONDS, allow_inf_nan=False)] | None = (
        None
    )

    @field_validator("batching")
    @classmethod
    def _true_is_the_defaults(cls, value: Batching | bool | None) -> Batching | bool | None:
        return Batching() if value is True else value

    @model_validator(mode="after")
    def _needs_a_source(self) -> ModelSpec:
        if self.loader is None and self.artifact is None:
            raise ValueError(f"model '{self.name}' needs a loader or an artifact")
        if isinstance(self.loader, str) and ":" not in self.loader:
            raise ValueError(
                f"model '{self.name}': loader must be 'package.module:function', "
                f"got {self.loader!r}"
            )
        return self

    def batching_for(self, batches_exactly: bool) -> Batching | None:
        """The batching this model gets, given whether its predictor batches exactly: as
        declared (false: none), or when left unset, DEFAULT_BATCHING if it does."""
        if isinstance(self.batching, Batching):
            return self.batching
        if self.batching is None and batches_exactly:
            return DEFAULT_BATCHING
        return None

    @property
    def hang_timeout(self) -> float:
        """``hang_timeout_s``, or four times ``timeout_s`` (at least 1 s: no request waits
        for an answer past its deadline, so a call that long serves nobody), or 300 s."""
        if self.hang_timeout_s is not None:
            return self.hang_timeout_s
        if self.timeout_s is not None:
            return max(1.0, 4 * self.timeout_s)
        return 300.0

    @property
    def source(self) -> str:
        """Where the model comes from, for messages: the artifact path or the loader's name."""
        if self.artifact is not None:
            return str(self.artifact)
        if isinstance(self.loader, str):
            return self.loader
        loader = self.loader
        module = getattr(loader, "__module__", None)
        qualname = getattr(loader, "__qualname__", repr(loader))
        return f"{module}:{qualname}" if module else str(qualname)
