"""With several workers, a model's own code (a python loader's module, a torch factory's) is
imported once, in the process the workers are forked from, so what it imports is shared by
every worker instead of held by each; a module that fails to import still fails the start
with the model's name and the module's error, as it did when only the workers imported it."""

from __future__ import annotations

import textwrap
from pathlib import Path

import httpx2 as httpx
import psutil

from loadonce.server.settings import ServeConfig
from loadonce.server.worker_start import USER_CODE_MODULE, preloaded_modules, user_code_modules
from tests.servers import run_cli, serving

# Written into the test's directory (the server's working directory, so importable): each
# import appends the importing process's id to a file.
_RECORDING_LOADER = """
import os
from pathlib import Path

with Path(os.environ["IMPORTS_FILE"]).open("a") as imports:
    imports.write(f"{os.getpid()}\\n")


def loader():
    return lambda batch: [x * 2 for x in batch]
"""


def _config(tmp_path: Path, module: str, workers: int) -> Path:
    config = tmp_path / "serve.toml"
    config.write_text(
        textwrap.dedent(f"""
            [server]
            workers = {workers}

            [[models]]
            name = "doubled"
            loader = "{module}:loader"
            input_shape = []
        """)
    )
    return config


def test_a_loaders_module_is_imported_once_for_all_workers(tmp_path: Path) -> None:
    (tmp_path / "recording_loader.py").write_text(_RECORDING_LOADER)
    imports = tmp_path / "imports.txt"
    config = _config(tmp_path, "recording_loader", workers=2)
    with serving([str(config)], tmp_path, env={"IMPORTS_FILE": str(imports)}) as server:
        answer = httpx.post(f"{server.url}/models/doubled/predict", json={"inputs": [3]})
        assert answer.status_code == 200, answer.text
        assert answer.json()["outputs"] == [6]
        supervisor = psutil.Process(server.process.pid)
        processes = supervisor.children(recursive=True)
        importers = {int(line) for line in imports.read_text().split()}
        # One import, in the fork server: the parent of the workers, which did not import it.
        workers = [p for p in processes if p.ppid() in importers]
        assert len(importers) == 1, importers
        assert len(workers) == 2, [p.cmdline() for p in processes]


def test_a_loader_that_fails_at_import_still_fails_the_start_naming_it(tmp_path: Path) -> None:
    # Not an ImportError: multiprocessing's fork server would die of it if it imported the
    # module unguarded, and every worker start with it.
    (tmp_path / "failing_loader.py").write_text('raise RuntimeError("no weights here")\n')
    config = _config(tmp_path, "failing_loader", workers=2)
    done = run_cli(tmp_path, "serve", str(config), "--port", "0", cwd=tmp_path, timeout=120)
    assert done.returncode != 0
    assert "doubled" in done.stderr
    assert "no weights here" in done.stderr


def test_the_user_code_named_by_the_config_is_what_is_preloaded() -> None:
    config = ServeConfig.model_validate(
        {
            "server": {},
            "models": [
                {"name": "a", "loader": "shop.models:load_ranker"},
                {"name": "b", "loader": "shop.models:load_other"},
                {
                    "name": "c",
                    "artifact": "weights.safetensors",
                    "options": {"factory": "shop.nets:build"},
                },
                {"name": "d", "artifact": "forest.skops"},
            ],
        }
    )
    assert user_code_modules(config) == ["shop.models", "shop.nets"]
    assert USER_CODE_MODULE in preloaded_modules(config)
    plain = ServeConfig.model_validate(
        {"server": {}, "models": [{"name": "d", "artifact": "forest.skops"}]}
    )
    assert user_code_modules(plain) == []
    assert USER_CODE_MODULE not in preloaded_modules(plain)
