"""Request and response bodies of the HTTP routes, as FastAPI documents them in /docs."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from loadonce.core.model import ModelState


class ErrorBody(BaseModel):
    error: str = Field(description="What went wrong, and what to do about it.")
    request_id: str | None = Field(
        default=None, description="Echoes X-Request-ID; the server log has the details under it."
    )
    fields: list[dict[str, str]] | None = Field(
        default=None, description="For 422: each invalid field and why."
    )


class PredictRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"inputs": [5.1, 3.5, 1.4, 0.2]}]},
    )

    inputs: Any = Field(
        description="One example, or a list of examples. When the model declares its input "
        "shape, the nesting depth tells which; otherwise a list is a list of examples."
    )
    outputs: list[str] | None = Field(
        default=None,
        min_length=1,
        description="The model's outputs to answer, by name (see /models/{name}: a "
        "classifier's label, probabilities, decision_function...); each example's output is "
        "then an object of those names. Without it: the model's default output.",
    )
    parameters: dict[str, Any] | None = Field(
        default=None,
        description="Request parameters, by name: only those the model takes (see "
        "/models/{name}: request_parameters; a generating model's max_new_tokens, "
        "temperature...); any other is a 400. Requests with different parameters never "
        "share a predict call.",
    )


class PredictResponse(BaseModel):
    model: str
    version: str
    outputs: list[Any] = Field(description="One output per example, in the order sent.")


class MemoryTaken(BaseModel):
    rss_bytes: int = Field(description="Growth of the worker's resident set during the load.")
    uss_bytes: int = Field(description="Growth of the worker's private (unique) memory.")
    pss_bytes: int = Field(
        description="Growth of the worker's proportional set (shared pages divided among the "
        "processes sharing them)."
    )
    mapped_bytes: int = Field(
        description="The part that is the artifact mapped read-only: one copy in the page "
        "cache for every worker (0 when the weights are not shared)."
    )


class Tensor(BaseModel):
    name: str
    dtype: str | None = Field(description="NumPy dtype name, or 'string'; null if unknown.")
    shape: list[int | None] | None = Field(
        description="Batch dimension first; null marks a variable dimension."
    )


class QueueInfo(BaseModel):
    queued_examples: int = Field(description="Examples waiting now, in this worker.")
    max_queue: int = Field(description="Beyond this many waiting examples: 503.")
    max_batch_size: int = Field(description="Examples per predict call (1 without batching).")
    timeout_s: float | None = Field(description="The model's deadline per request, if any.")
    seconds_per_call: float | None = Field(
        description="Recent time of one predict call (a generating model: of one generation "
        "step), smoothed; used to refuse at admission a request that could not meet its "
        "deadline."
    )
    generating: int | None = Field(
        None,
        description="A generating model: sequences generating now (at most max_batch_size); "
        "queued_examples are the requests waiting to join them.",
    )


class WorkerModel(BaseModel):
    pid: int
    version: str
    state: ModelState


class ModelInfo(BaseModel):
    name: str
    version: str
    runtime: str | None
    state: ModelState
    concurrency: str | None
    worker_pid: int = Field(
        description="The worker process that answered; each loads its own copy."
    )
    load_count: int = Field(description="How many times this worker has loaded the model.")
    load_seconds: float | None
    loaded_at: float | None = Field(description="Unix time the load finished.")
    memory: MemoryTaken | None
    weights_shared: bool | None = Field(
        description="The weights are mapped read-only from the artifact, one copy in the page "
        'cache for every worker (share = "mmap" and a format that allows it); null while '
        "not loaded."
    )
    input_shape: list[int | None] | None = Field(description="Shape of one example, if known.")
    input_dtype: str | None = Field(description="What each example's values must be, if known.")
    inputs: list[Tensor] = Field(description="Named inputs, where the model format records them.")
    outputs: list[Tensor] = Field(description="Named outputs, where the model format records them.")
    request_parameters: list[str] = Field(
        default_factory=list,
        description="What a predict request may set in its parameters (sorted).",
    )
    generates: bool = Field(
        default=False,
        description="The model generates text: POST /models/{name}/generate and "
        "/v2/models/{name}/generate answer it (false while not loaded).",
    )
    embeds_text: bool = Field(
        default=False,
        description="The model answers texts with their vectors (false while not loaded).",
    )
    queue: QueueInfo | None = Field(description="The model's queue, while it is loaded.")
    error: str | None = None
    workers: list[WorkerModel] | None = Field(
        default=None,
        description="The model's state and version in every worker of the server (from the "
        "metrics all workers write); null when metrics are off.",
    )


class ModelsResponse(BaseModel):
    worker_pid: int
    models: list[ModelInfo]


class Readiness(BaseModel):
    ready: bool
    draining: bool = Field(default=False, description="Stopping: finishing accepted requests.")
    worker_pid: int
    models: dict[str, ModelState]
    hung_calls: dict[str, int] = Field(
        default_factory=dict,
        description="Models with predict calls running past hang_timeout_s, and how many: "
        "while any is, this worker is not ready.",
    )


class Liveness(BaseModel):
    status: str = "alive"
    worker_pid: int
