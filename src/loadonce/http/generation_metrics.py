"""The metrics of generating models: time to first token, time per output token, tokens."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram

from loadonce.core.observer import GenerationReport

_FIRST_TOKEN_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
_PER_TOKEN_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)


class GenerationMetrics:
    """Reported once per generation that produced a token, when it ends (however it ends)."""

    def __init__(self, registry: CollectorRegistry | None) -> None:
        self.time_to_first_token = Histogram(
            "loadonce_time_to_first_token_seconds",
            "From a generation request's arrival in the model's queue to its first token",
            ["model"],
            buckets=_FIRST_TOKEN_BUCKETS,
            registry=registry,
        )
        self.time_per_output_token = Histogram(
            "loadonce_time_per_output_token_seconds",
            "Mean time between two tokens of one generation, after its first",
            ["model"],
            buckets=_PER_TOKEN_BUCKETS,
            registry=registry,
        )
        self.generated_tokens = Counter(
            "loadonce_generated_tokens",
            "Tokens generated (completion tokens)",
            ["model"],
            registry=registry,
        )
        self.prompt_tokens = Counter(
            "loadonce_prompt_tokens",
            "Prompt tokens read by generations",
            ["model"],
            registry=registry,
        )

    def observe(self, model: str, report: GenerationReport) -> None:
        self.time_to_first_token.labels(model).observe(report.time_to_first_token_s)
        if report.time_per_output_token_s is not None:
            self.time_per_output_token.labels(model).observe(report.time_per_output_token_s)
        self.generated_tokens.labels(model).inc(report.completion_tokens)
        self.prompt_tokens.labels(model).inc(report.prompt_tokens)
