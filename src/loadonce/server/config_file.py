"""Reading a TOML config file, or a single artifact, into models and server options."""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from loadonce.core.declarations import check_runtime
from loadonce.core.errors import ConfigError, describe_validation
from loadonce.core.spec import ModelSpec
from loadonce.runtimes import resolve_runtime
from loadonce.server.settings import RayOptions, ServerOptions
from loadonce.tracing import TracingOptions

_TOP_LEVEL = {"server", "models", "ray", "tracing", "app", "factory"}


@dataclass(frozen=True, kw_only=True)
class ConfigFile:
    server: dict[str, Any]  # unvalidated: merged with the environment and command line first
    models: list[ModelSpec]
    ray: RayOptions
    # The [tracing] table, unvalidated: merged with the environment and command line first.
    tracing: dict[str, Any] = field(default_factory=dict)
    # app = "pkg.module:app": a user's own app, whose lifespan declares the models (then no
    # [[models]]); factory = true: the reference is a function returning the app.
    app: str | None = None
    factory: bool = False


def is_config_file(target: str) -> bool:
    return target.lower().endswith(".toml")


def read_config_file(path: Path) -> ConfigFile:
    """The ``[server]`` table, the ``[[models]]`` (paths made absolute) and the ``[ray]`` table.

    Relative artifact paths are read relative to the config file, so the server can be started
    from any directory.
    """
    try:
        with path.open("rb") as stream:
            document = tomllib.load(stream)
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read config file {path}: {exc}") from None
    except UnicodeDecodeError as exc:  # TOML is UTF-8; a Latin-1 byte was a traceback
        raise ConfigError(
            f"cannot read config file {path}: not UTF-8 (byte {exc.start}: {exc.reason})"
        ) from None
    unknown = sorted(set(document) - _TOP_LEVEL)
    if unknown:
        raise ConfigError(
            f"{path}: unknown top-level key(s) {', '.join(unknown)}; "
            "expected [server], [[models]] (or app), [ray] and [tracing]"
        )
    server = document.get("server", {})
    if not isinstance(server, dict):
        raise ConfigError(f"{path}: [server] must be a table")
    try:
        # Checked here too, so a mistake in the file is reported with the file's name.
        ServerOptions.model_validate(server)
    except ValidationError as exc:
        raise ConfigError(f"{path}: [server]: {describe_validation(exc)}") from None
    tables = document.get("models", [])
    if not isinstance(tables, list) or not all(isinstance(t, dict) for t in tables):
        raise ConfigError(f"{path}: models must be an array of tables ([[models]])")
    app = document.get("app")
    factory = document.get("factory", False)
    if app is not None and (not isinstance(app, str) or not isinstance(factory, bool)):
        raise ConfigError(f"{path}: app must be a 'package.module:app' string, factory true/false")
    if app is not None and tables:
        raise ConfigError(
            f"{path}: give either app (its lifespan declares the models) or [[models]], not both"
        )
    if app is None and not tables:
        raise ConfigError(
            f"{path}: no model is declared; add at least one [[models]] table, "
            "or app = 'package.module:app'"
        )
    # The directory the file is named in, as for the code modules beside it
    # (server/resolve.py): a symbolic link to the file (a mounted config) read artifacts
    # beside its target and modules beside the link.
    base = path.parent.resolve()
    roots = server.get("artifact_roots")
    if isinstance(roots, list):
        # Relative to the config file, like the artifacts ("" stays "", refused as such: it
        # named the file's directory).
        server = {
            **server,
            "artifact_roots": [
                str(base / root) if isinstance(root, str) and root.strip() else root
                for root in roots
            ],
        }
    models = [_model_spec(table, index, base, path) for index, table in enumerate(tables)]
    for spec in models:
        try:
            check_runtime(spec)
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc}") from None
    return ConfigFile(
        server=server,
        models=models,
        ray=_ray_options(document.get("ray", {}), path),
        tracing=_tracing_table(document.get("tracing", {}), path),
        app=app,
        factory=factory,
    )


def _ray_options(table: object, path: Path) -> RayOptions:
    if not isinstance(table, dict):
        raise ConfigError(f"{path}: [ray] must be a table")
    try:
        return RayOptions.model_validate(table)
    except ValidationError as exc:
        raise ConfigError(f"{path}: [ray]: {describe_validation(exc)}") from None


def _tracing_table(table: object, path: Path) -> dict[str, Any]:
    if not isinstance(table, dict):
        raise ConfigError(f"{path}: [tracing] must be a table")
    try:
        # Checked here too, so a mistake in the file is reported with the file's name.
        TracingOptions.model_validate(table)
    except ValidationError as exc:
        raise ConfigError(f"{path}: [tracing]: {describe_validation(exc)}") from None
    return table


def _model_spec(table: dict[str, Any], index: int, base: Path, path: Path) -> ModelSpec:
    values = dict(table)
    artifact = values.get("artifact")
    if isinstance(artifact, str) and artifact.strip():  # "" named the file's directory
        # realpath, not Path.resolve, which raises on a symbolic link loop: the model's load
        # says what is wrong with the file, in one line.
        values["artifact"] = Path(os.path.realpath(base / artifact))
    try:
        return ModelSpec.model_validate(values)
    except ValidationError as exc:
        label = f"models[{index}]" + (f" ('{table['name']}')" if "name" in table else "")
        raise ConfigError(f"{path}: {label}: {describe_validation(exc)}") from None


def spec_for_target(target: str, fields: Mapping[str, Any] | None = None) -> ModelSpec:
    """A single model from the command line: an artifact path, or a 'package.module:function';
    ``fields``: more of its ModelSpec (``input_shape``, ``options``)."""
    path = Path(target)
    if path.exists():
        # A directory is an artifact too (a transformers model directory), or holds one.
        name = path.resolve().name if path.is_dir() else path.stem
        artifact = _artifact_in(path.resolve())
        declared: dict[str, Any] = {"name": _name_from_stem(name), "artifact": artifact}
    elif ":" in target and "/" not in target:
        declared = {"name": _name_from_stem(target.rpartition(":")[2]), "loader": target}
    else:
        raise ConfigError(f"no such file: {target}")
    try:
        return ModelSpec.model_validate({**declared, **(fields or {})})
    except ValidationError as exc:
        raise ConfigError(f"{target}: {describe_validation(exc)}") from None


def _artifact_in(path: Path) -> Path:
    """``path``, or for a directory no runtime reads whole, the one artifact in it that a
    runtime claims: KServe's storage initializer downloads a model file into a directory
    (``/mnt/models/model.onnx``), and the runtime is given the directory. Companion files
    no runtime claims (an ONNX model's external data, a README) stay beside it."""
    if not path.is_dir() or _claimed(path):
        return path
    # Hidden entries are the tools' (a mounted volume's ..data link, a download's marker).
    claimed = sorted(
        entry for entry in path.iterdir() if not entry.name.startswith(".") and _claimed(entry)
    )
    if len(claimed) > 1:
        names = ", ".join(entry.name for entry in claimed)
        raise ConfigError(
            f"{path} holds several artifacts ({names}): serve one of them, or declare each "
            "in a config file"
        )
    # None: the directory itself, so that the load names what it lacks.
    return claimed[0] if claimed else path


def _claimed(path: Path) -> bool:
    """Whether a runtime reads ``path`` (by its suffix or a directory's content)."""
    try:
        resolve_runtime(ModelSpec(name="probe", artifact=path))
    except (ValueError, OSError):  # OSError: a runtime peeking into an unreadable entry
        return False
    return True


def _name_from_stem(stem: str) -> str:
    name = re.sub(r"[^A-Za-z0-9_.\-]", "-", stem).strip("-.") or "model"
    return name if name[0].isalnum() else f"m{name}"
