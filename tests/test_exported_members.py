"""The public surface is whole and pinned: ``loadonce.__all__`` lists exactly the public
names of the package, each shows as ``loadonce.X``, and importing the package (or its command
line) imports no web framework: the names are imported when first used."""

from __future__ import annotations
import __future__

import importlib
import inspect
import json
import types
import typing
from pathlib import Path
from typing import Any

import loadonce
from tests.servers import run_python


def test_all_public_names_are_exported_and_sorted() -> None:
    public = [
        name
        for name in dir(loadonce)
        if (not name.startswith("_") or name == "__version__")
        and not isinstance(getattr(loadonce, name), types.ModuleType | __future__._Feature)
    ]
    assert loadonce.__all__ == sorted(public)


def test_each_name_is_its_defining_module_s_object() -> None:
    for name in loadonce.__all__:
        member = getattr(loadonce, name)
        if name != "__version__" and inspect.getmodule(member) is not None:
            home = loadonce._HOMES[name]
            assert getattr(importlib.import_module(home), name) is member, name


def test_the_package_and_its_command_line_import_no_web_framework(tmp_path: Path) -> None:
    # The supervisor of `--workers N` runs the command line's module and serves nothing
    # itself: FastAPI, Starlette, OpenTelemetry, uvicorn (with asyncio and ssl),
    # prometheus-client and the worker's modules stay out of it (its PSS 48 -> 35 MiB), until a
    # name that needs them is used.
    script = (
        "import json, sys, loadonce, loadonce.server.cli\n"
        "heavy = ('fastapi', 'starlette', 'opentelemetry', 'uvicorn', 'asyncio', 'ssl', "
        "'prometheus_client', 'loadonce.app', 'loadonce.server.worker')\n"
        "before = [m for m in heavy if m in sys.modules]\n"
        "loadonce.create_app\n"
        "print(json.dumps([before, [m for m in heavy if m in sys.modules]]))"
    )
    result = run_python(tmp_path, script)
    assert result.returncode == 0, result.stderr
    before, after = json.loads(result.stdout)
    assert before == []
    assert "fastapi" in after
    assert "loadonce.app" in after


def test_public_classes_and_functions_show_as_loadonce() -> None:
    for name in loadonce.__all__:
        member = getattr(loadonce, name)
        if inspect.isclass(member) or inspect.isfunction(member):
            assert member.__module__ == "loadonce", name


def test_every_type_create_app_and_lifespan_take_is_exported() -> None:
    for function in (loadonce.create_app, loadonce.lifespan):
        for parameter in inspect.signature(function).parameters.values():
            for word in str(parameter.annotation).replace("|", " ").replace("[", " ").split():
                word = word.strip(",] ")
                if word[:1].isupper() and word not in ("None", "Iterable"):
                    assert word in loadonce.__all__, (function.__name__, parameter.name, word)


def test_type_hints_of_public_classes_and_of_a_users_subclass_resolve() -> None:
    """Shown as loadonce.X, their string annotations were read in loadonce's namespace:
    ``typing.get_type_hints`` raised NameError (on names such as Mapping), on them and on a
    user's subclass of Predictor (FastAPI and other libraries call it)."""

    class Mine(loadonce.Predictor):
        def predict(self, batch: Any) -> list[Any]:
            return list(batch)

    for cls in (
        Mine,
        loadonce.GenerationRequest,
        loadonce.Finished,
        loadonce.Delta,
        loadonce.TensorInfo,
        loadonce.InputSignature,
        loadonce.Limits,
        loadonce.AccessKeys,
    ):
        assert typing.get_type_hints(cls), cls
    assert typing.get_type_hints(loadonce.GenerationRequest)["stop"] == tuple[str, ...]
