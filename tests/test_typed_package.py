"""The package is typed for its users: ``py.typed`` ships with it (PEP 561), so ``mypy
--strict`` reads loadonce's own annotations in a user's code. Without it every loadonce name
was ``Any`` to them, and subclassing ``Predictor`` an error ("Class cannot subclass
'Predictor' (has type 'Any')"). This repository's own mypy run checks the annotations; a
full mypy run over a user's file here took 28 s, so only the marker is checked, in the
installed package and in what the wheel takes."""

from __future__ import annotations

import tomllib
from pathlib import Path

import loadonce
from tests.servers import REPO_ROOT


def test_py_typed_ships_with_the_package() -> None:
    package = Path(loadonce.__file__).parent
    assert (package / "py.typed").is_file()
    build = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    [packaged] = build["tool"]["hatch"]["build"]["targets"]["wheel"]["packages"]
    assert (REPO_ROOT / packaged / "py.typed").is_file()  # the wheel takes the whole package
