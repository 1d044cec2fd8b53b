"""With several workers, the libraries a model's load needs are imported once, in the process
the workers are forked from, and only those: a joblib file's server neither imports skops
(which imports every scikit-learn module, and PyTorch with them when it is installed) nor
leaves its estimator's modules for each worker to import privately; and the supervisor, which
only checks the declarations and watches the workers, imports no NumPy."""

from __future__ import annotations

import textwrap
from pathlib import Path

import httpx2 as httpx
import joblib
import numpy as np
import psutil
from sklearn.neighbors import KNeighborsClassifier

from loadonce.server.settings import ServeConfig
from loadonce.server.worker_start import preloaded_modules
from tests.servers import serving


def _modules_for(artifact: str) -> list[str]:
    config = ServeConfig.model_validate(
        {"server": {}, "models": [{"name": "m", "artifact": artifact}]}
    )
    return preloaded_modules(config)


def test_a_pickle_preloads_joblib_and_estimators_and_a_skops_file_preloads_skops() -> None:
    for pickle in ("forest.joblib", "forest.pkl", "forest.PICKLE"):
        modules = _modules_for(pickle)
        assert "joblib" in modules, modules
        assert "sklearn.ensemble" in modules, modules
        assert "skops.io" not in modules, modules
    modules = _modules_for("forest.skops")
    assert "skops.io" in modules, modules
    assert "joblib" not in modules, modules
    assert "sklearn.ensemble" not in modules, modules


def _mapped_files(process: psutil.Process) -> set[str]:
    return {mapping.path for mapping in process.memory_maps(grouped=True)}


def test_joblib_workers_share_estimator_modules_load_no_pytorch_and_supervisor_no_numpy(
    tmp_path: Path,
) -> None:
    rng = np.random.default_rng(0)
    points = rng.normal(size=(200, 4))
    model = KNeighborsClassifier(n_neighbors=1).fit(points, np.arange(200) % 3)
    artifact = tmp_path / "neighbours.joblib"
    joblib.dump(model, artifact)
    config = tmp_path / "serve.toml"
    config.write_text(
        textwrap.dedent(f"""
            [server]
            workers = 2

            [[models]]
            name = "neighbours"
            artifact = "{artifact}"
            trust = true
        """)
    )
    with serving([str(config)], tmp_path) as server:
        for row in points[:8]:
            answer = httpx.post(
                f"{server.url}/models/neighbours/predict", json={"inputs": [row.tolist()]}
            )
            assert answer.status_code == 200, answer.text
            assert answer.json()["outputs"] == model.predict(row[None, :]).tolist()
        supervisor = psutil.Process(server.process.pid)
        processes = [supervisor, *supervisor.children(recursive=True)]
        workers = [p for p in processes if p.ppid() != supervisor.pid and p is not supervisor]
        parents = {worker.ppid() for worker in workers}
        assert len(workers) == 2, [p.cmdline() for p in processes]
        assert len(parents) == 1, [p.cmdline() for p in processes]
        fork_server = psutil.Process(parents.pop())
        # The neighbours' compiled modules were imported before the workers were forked.
        assert any("/sklearn/neighbors/" in path for path in _mapped_files(fork_server))
        # NumPy (14 MiB) is the workers': the supervisor checked the declaration without it.
        assert not any("numpy" in path for path in _mapped_files(supervisor))
        assert any("numpy" in path for path in _mapped_files(workers[0]))
        for process in processes:
            torch_libraries = [p for p in _mapped_files(process) if "libtorch" in p]
            assert torch_libraries == [], (process.cmdline(), torch_libraries)
