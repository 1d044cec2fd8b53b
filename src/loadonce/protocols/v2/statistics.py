"""The statistics extension, as Triton defines it: per model, its requests' counts and
cumulative times (success, fail, queue, and the three phases of the calls that answered
them), its calls per batch size, and when it last ran.

Read from the series ``/metrics`` shows (``http/call_metrics.py``), so both agree, and with
several workers both add up every worker's. A model's figures run from the server's start,
across reloads; the answer names the version it serves now.
"""

from __future__ import annotations

import anyio.to_thread
from fastapi import APIRouter
from pydantic import BaseModel
from starlette.requests import Request

from loadonce.core.model import Model
from loadonce.http.call_metrics import PHASES, Duration, ModelStatistics
from loadonce.http.state import LoadonceState
from loadonce.protocols.v2.errors import find_model
from loadonce.protocols.v2.schemas import V2Error
from loadonce.protocols.v2.unsupported import NotSupportedError

EXTENSION = "statistics"
_ERROR = {"model": V2Error}


class StatisticDuration(BaseModel):
    count: int
    ns: int


class InferStatistics(BaseModel):
    success: StatisticDuration
    fail: StatisticDuration
    queue: StatisticDuration
    compute_input: StatisticDuration
    compute_infer: StatisticDuration
    compute_output: StatisticDuration
    cache_hit: StatisticDuration
    cache_miss: StatisticDuration


class BatchStatistic(BaseModel):
    batch_size: int
    compute_input: StatisticDuration
    compute_infer: StatisticDuration
    compute_output: StatisticDuration


class ModelStatistic(BaseModel):
    name: str
    version: str
    last_inference: int
    inference_count: int
    execution_count: int
    inference_stats: InferStatistics
    batch_stats: list[BatchStatistic]


class StatisticsResponse(BaseModel):
    model_stats: list[ModelStatistic]


def add_statistics_routes(router: APIRouter) -> None:
    """``GET /v2/models/stats``, ``/v2/models/{m}/stats`` and
    ``/v2/models/{m}/versions/{v}/stats``; mount before the metadata routes, which would
    take ``stats`` for a model's name."""

    async def statistics(request: Request) -> StatisticsResponse:
        params = request.path_params
        return await read_statistics(
            LoadonceState.of(request), params.get("model_name"), params.get("model_version")
        )

    for path, summary in (
        ("/v2/models/stats", "Statistics of every model"),
        ("/v2/models/{model_name}/stats", "Statistics of a model"),
        ("/v2/models/{model_name}/versions/{model_version}/stats", "Statistics of a version"),
    ):
        router.add_api_route(
            path,
            statistics,
            methods=["GET"],
            response_model=StatisticsResponse,
            responses={404: _ERROR, 501: _ERROR},
            summary=summary,
        )


async def read_statistics(
    state: LoadonceState, name: str | None = None, version: str | None = None
) -> StatisticsResponse:
    """Every model's statistics (``name`` None), or one model's (of ``version`` if given):
    the answer of REST's routes and of gRPC's ModelStatistics."""
    registry = state.registry
    models = list(registry.models) if name is None else [find_model(registry, name, version)]
    metrics = state.metrics
    if metrics is None:
        # As every extension not offered (unsupported.py): it is not listed then, and the
        # request was not wrong ("invalid inputs: ...", 400, said it was).
        raise NotSupportedError(
            "the statistics extension is not offered: this app keeps no statistics, they are "
            "read from its metrics, which are off (lifespan(metrics=False))"
        )
    # Off the loop: with several workers it reads every worker's files.
    found = await anyio.to_thread.run_sync(metrics.statistics)
    return StatisticsResponse(
        model_stats=[_model_statistic(m, found.get(m.name, ModelStatistics())) for m in models]
    )


def _model_statistic(model: Model, stats: ModelStatistics) -> ModelStatistic:
    # Per request answered: the phases of the call that answered it, as Triton counts them.
    compute_input, compute_infer, compute_output = (
        _duration(stats.computed, stats.compute_seconds[phase]) for phase in PHASES
    )
    batches = []
    for size, batch in sorted(stats.batches.items()):
        if not batch.calls:
            continue  # only calls of that size that failed: no execution, as in Triton
        size_input, size_infer, size_output = (
            _duration(batch.calls, batch.seconds[phase]) for phase in PHASES
        )
        batches.append(
            BatchStatistic(
                batch_size=size,
                compute_input=size_input,
                compute_infer=size_infer,
                compute_output=size_output,
            )
        )
    return ModelStatistic(
        name=model.name,
        version=model.version,
        last_inference=round(stats.last_call * 1000),
        inference_count=stats.examples,
        execution_count=stats.calls,
        inference_stats=InferStatistics(
            success=_of(stats.success),
            fail=_of(stats.fail),
            queue=_of(stats.queue),
            # No response cache: none hit, none missed.
            cache_hit=_duration(0, 0.0),
            cache_miss=_duration(0, 0.0),
            compute_input=compute_input,
            compute_infer=compute_infer,
            compute_output=compute_output,
        ),
        batch_stats=batches,
    )


def _of(duration: Duration) -> StatisticDuration:
    return _duration(duration.count, duration.seconds)


def _duration(count: int, seconds: float) -> StatisticDuration:
    return StatisticDuration(count=count, ns=round(seconds * 1e9))
