"""With several workers, a model's own code (a python loader's module, a torch factory's) is
imported once, in the process the workers are forked from, so what it imports is shared by
every worker instead of held by each; a module that fails to import still fails the start
with the model's name and the module's error, as it did when only the workers imported it."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import httpx2 as httpx
import psutil

from loadonce.server.settings import ServeConfig
from loadonce.server.worker_start import (
    FREEZE_MODULE,
    USER_CODE_MODULE,
    preloaded_modules,
    user_code_modules,
)
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


# Records the modules its process holds: once when imported (in the fork server, after the
# worker's modules and the libraries), once at each prediction (in the worker that answers).
_MODULES_RECORDING_LOADER = """
import json
import os
import sys
from pathlib import Path


def _record(when):
    path = Path(os.environ["MODULES_DIR"], f"{when}-{os.getpid()}.json")
    path.write_text(json.dumps(sorted(sys.modules)))


_record("imported")


def loader():
    def predict(batch):
        _record("predicted")
        return [x * 2 for x in batch]

    return predict
"""


def test_a_serving_worker_imports_nothing_its_fork_server_did_not(tmp_path: Path) -> None:
    # What a worker imports after it is forked (uvicorn's loop and protocols, anyio's backend,
    # the pieces FastAPI imports when it builds routes) is its own, in every worker: the fork
    # server imports it once for all of them (3.8 MiB a worker).
    (tmp_path / "modules_loader.py").write_text(_MODULES_RECORDING_LOADER)
    recorded = tmp_path / "modules"
    recorded.mkdir()
    config = _config(tmp_path, "modules_loader", workers=2)
    with serving([str(config)], tmp_path, env={"MODULES_DIR": str(recorded)}) as server:
        for value in range(4):
            answer = httpx.post(f"{server.url}/models/doubled/predict", json={"inputs": [value]})
            assert answer.status_code == 200, answer.text
            assert answer.json()["outputs"] == [value * 2]
    (imported,) = recorded.glob("imported-*.json")
    in_fork_server = set(json.loads(imported.read_text()))
    predicted = list(recorded.glob("predicted-*.json"))
    assert predicted
    # Imported by the fork server after the user's code: the module that freezes what the
    # imports built; by multiprocessing itself to start the child: its process classes.
    later = {FREEZE_MODULE, "multiprocessing.popen_fork", "multiprocessing.popen_forkserver"}
    for record in predicted:
        only_in_worker = set(json.loads(record.read_text())) - in_fork_server - later
        assert only_in_worker == set(), sorted(only_in_worker)


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
