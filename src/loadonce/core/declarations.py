"""A model's declaration checked before anything loads: names unique, a runtime that exists and
reads every option given. Kept apart from the registry: the process that reads a config (the
command line, the supervisor of ``--workers N``) checks declarations and loads nothing."""

from __future__ import annotations

from collections.abc import Iterable

from loadonce.core.errors import ConfigError
from loadonce.core.spec import ModelSpec
from loadonce.runtimes import check_options, resolve_runtime


def check_model_specs(specs: Iterable[ModelSpec]) -> list[ModelSpec]:
    """At least one model, and unique names; raise ConfigError before anything loads."""
    specs = list(specs)
    if not specs:
        raise ConfigError("no model is declared: declare at least one model to serve")
    seen: set[str] = set()
    for spec in specs:
        if spec.name in seen:
            raise ConfigError(f"model '{spec.name}' is declared twice; names must be unique")
        seen.add(spec.name)
        check_runtime(spec)
    return specs


def check_runtime(spec: ModelSpec) -> None:
    """A runtime that does not exist, or an option it does not read, is a mistake in the
    declaration: reported now, by the model's name, not when it loads."""
    if spec.runtime is None and spec.artifact is not None and not spec.artifact.exists():
        return  # the load reports the missing file, with its path
    try:
        check_options(spec, resolve_runtime(spec))
    except (ValueError, ImportError) as exc:
        raise ConfigError(f"model '{spec.name}': {exc}") from None
