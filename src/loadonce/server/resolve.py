"""From the command line's words to one ServeConfig: target, demo, options, trust."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

from loadonce.core.declarations import check_model_specs
from loadonce.core.errors import ConfigError
from loadonce.core.imports import importable_from, is_reference
from loadonce.core.spec import ModelSpec
from loadonce.server.config_file import is_config_file, read_config_file, spec_for_target
from loadonce.server.demo import demo_spec
from loadonce.server.settings import (
    RayOptions,
    ServeConfig,
    resolve_server_options,
    resolve_tracing_options,
)


def resolve_serve_config(
    target: str | None,
    *,
    demo: bool,
    trust: bool,
    overrides: Mapping[str, Any | None],
    factory: bool = False,
    tracing: bool | None = None,
    model_fields: Mapping[str, Any] | None = None,
    environment_fields: Collection[str] = (),
) -> ServeConfig:
    """``overrides`` are the CLI options (each already falling back to its LOADONCE_* variable).
    ``model_fields``: fields of the one model a single artifact or loader serves (the command
    line's --name, --input-shape and --input-dtype); a config file or an app declares its
    models' own. ``environment_fields``: those of ``model_fields`` read from LOADONCE_*
    variables, left out for a config file, an app or the demo (a container's
    LOADONCE_MODEL_NAME, set for a single artifact, made each of those an error blamed on
    --name); typed on the command line, they are an error there.
    ``tracing``: --tracing/--no-tracing (None: neither)."""
    if demo and target:
        raise ConfigError("give either a TARGET or --demo, not both")

    file_options: dict[str, Any] = {}
    ray = RayOptions()
    tracing_table: dict[str, Any] = {}
    app: str | None = None
    loaded_app: object = None
    code_directory: Path | None = None
    single = target is not None and not demo and not is_config_file(target)
    typed = [field for field in model_fields or {} if field not in environment_fields]
    if typed and not single:
        raise ConfigError(_FIELDS_FOR_ONE)
    if demo:
        specs = [demo_spec()]
    elif target is None:
        raise ConfigError(
            "nothing to serve: give a config file (.toml), an artifact, "
            "a 'package.module:function' loader, a 'package.module:app' app, or --demo"
        )
    elif is_config_file(target):
        path = Path(target)
        code_directory = path.parent.resolve()
        importable_from(code_directory)  # a loader or app module beside the config file
        config_file = read_config_file(path)
        file_options, specs, ray = config_file.server, config_file.models, config_file.ray
        tracing_table = config_file.tracing
        if config_file.app is not None:
            app, factory = config_file.app, config_file.factory
            specs, loaded_app = _specs_of_app(app, factory)
    else:
        code_directory = Path.cwd().resolve()
        importable_from(code_directory)
        if _names_app(target, factory):  # told from a loader only once imported
            if typed:
                raise ConfigError(_FIELDS_FOR_ONE)
            app = target
            specs, loaded_app = _specs_of_app(app, factory)
        else:
            specs = [spec_for_target(target, model_fields or {})]
    server = resolve_server_options(file_options, {**overrides, "trust": trust or None})
    if loaded_app is not None and server.cors_allow_origins:
        from loadonce.http.cors_origins import check_no_cors_of_its_own

        # Said here, in one line: in each worker it was a traceback.
        check_no_cors_of_its_own(loaded_app)
    if server.trust:
        # The operator vouching for every artifact this command serves.
        specs = [spec.model_copy(update={"trust": True}) for spec in specs]
    return ServeConfig(
        server=server,
        models=check_model_specs(specs),
        ray=ray,
        tracing=resolve_tracing_options(tracing_table, tracing),
        app=app,
        app_factory=factory and app is not None,
        code_directory=None if code_directory is None else str(code_directory),
    )


# The user's app module is imported only when one is served, and FastAPI with it: the process
# that reads a config of models alone (the supervisor of `--workers N`) imports neither.


def _names_app(target: str, factory: bool) -> bool:
    if not is_reference(target):
        return False
    from loadonce.server.user_app import is_app

    return factory or is_app(target)


def _specs_of_app(reference: str, factory: bool) -> tuple[list[ModelSpec], object]:
    """The models the app declares, and the app."""
    from loadonce.server.user_app import load_app, specs_of

    app = load_app(reference, factory=factory)
    return specs_of(app, reference), app


_FIELDS_FOR_ONE = (
    "--name, --input-shape, --input-dtype and --no-batching describe the one model a single "
    "artifact or loader serves; a config file or an app declares its models' own"
)
