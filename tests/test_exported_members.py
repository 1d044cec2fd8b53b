"""The public surface is whole and pinned: ``loadonce.__all__`` lists exactly the public
names of the package, and each shows as ``loadonce.X``."""

from __future__ import annotations
import __future__

import inspect
import types

import loadonce


def test_all_public_names_are_exported_and_sorted() -> None:
    public = [
        name
        for name, member in vars(loadonce).items()
        if (not name.startswith("_") or name == "__version__")
        and not isinstance(member, types.ModuleType | __future__._Feature)
    ]
    assert loadonce.__all__ == sorted(public)


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
