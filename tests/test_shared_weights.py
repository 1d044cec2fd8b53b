"""Two workers, one copy of the weights: artifacts mapped read-only, shared in the page cache."""

from __future__ import annotations

import mmap
import os
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import httpx2 as httpx
import joblib
import numpy as np
import psutil
import pytest
import torch
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from safetensors.torch import save_file
from sklearn.ensemble import RandomForestClassifier
from sklearn.neighbors import KNeighborsClassifier

import loadonce
from loadonce.server.settings import ServerOptions
from tests.servers import CliServer, cli_env, serving

# Measures the memory (or the speed) of the processes it starts: run apart from other tests
# (make test runs these after the rest, on one process).
pytestmark = pytest.mark.alone

MIB = 1 << 20


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """About 200 MB of weights in each shareable format, and tiny ones of each library (so
    the big models' loads do not include importing the library)."""
    root = tmp_path_factory.mktemp("shared")
    generator = torch.Generator().manual_seed(0)
    paths = {
        "big_torch": root / "wide.safetensors",
        "tiny_torch": root / "tiny.safetensors",
        "big_sklearn": root / "neighbours.joblib",
        "tiny_sklearn": root / "tiny.joblib",
    }
    save_file({"weight": torch.randn(10_000, 5_000, generator=generator)}, paths["big_torch"])
    save_file({"weight": torch.randn(2, 4, generator=generator)}, paths["tiny_torch"])
    rng = np.random.default_rng(0)
    points = rng.normal(size=(1_250_000, 40)).astype(np.float32)  # 200 MB
    labels = rng.integers(0, 3, size=len(points))
    big = KNeighborsClassifier(n_neighbors=3, algorithm="brute").fit(points, labels)
    joblib.dump(big, paths["big_sklearn"])
    tiny = KNeighborsClassifier(n_neighbors=1, algorithm="brute").fit(points[:10], labels[:10])
    joblib.dump(tiny, paths["tiny_sklearn"])
    return paths


def _config(tmp_path: Path, artifacts: dict[str, Path]) -> Path:
    models = []
    for share in ("mmap", "off"):
        suffix = "" if share == "mmap" else "_private"
        models += [
            f"""
[[models]]
name = "tiny_torch{suffix}"
artifact = "{artifacts["tiny_torch"]}"
options = {{ factory = "tests.loaders:build_tiny_linear" }}
share = "{share}"

[[models]]
name = "big_torch{suffix}"
artifact = "{artifacts["big_torch"]}"
options = {{ factory = "tests.loaders:build_wide_linear" }}
share = "{share}"
input_shape = [5000]
warmup = [{", ".join(["0.5"] * 5_000)}]

[[models]]
name = "tiny_sklearn{suffix}"
artifact = "{artifacts["tiny_sklearn"]}"
trust = true
share = "{share}"

[[models]]
name = "big_sklearn{suffix}"
artifact = "{artifacts["big_sklearn"]}"
trust = true
share = "{share}"
warmup = [{", ".join(["0.0"] * 40)}]
"""
        ]
    config = tmp_path / "loadonce.toml"
    config.write_text("[server]\nworkers = 2\n" + "".join(models))
    return config


def _workers(server: CliServer) -> list[psutil.Process]:
    """The worker processes, by the pids /models lists for a model (the supervisor has
    other children, such as multiprocessing's resource tracker)."""
    [model, *_] = httpx.get(f"{server.url}/models").json()["models"]
    return [psutil.Process(worker["pid"]) for worker in model["workers"]]


def _mapping(process: psutil.Process, path: Path) -> tuple[int, int]:
    """(PSS, private bytes) of a process's mappings of one file."""
    for mapping in process.memory_maps(grouped=True):
        if os.path.realpath(mapping.path) == os.path.realpath(path):
            return mapping.pss, mapping.private_clean + mapping.private_dirty
    return 0, 0


@contextmanager
def _mapped_by_this_process(*paths: Path) -> Iterator[None]:
    """Map files and read every page, so that a worker's mapping of them is shared from its
    first page: a page only one process maps counts as that process's unique memory."""
    with ExitStack() as stack:
        for path in paths:
            with path.open("rb") as file:
                mapped = stack.enter_context(mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ))
            view = np.frombuffer(mapped, dtype=np.uint8)
            int(view[:: mmap.PAGESIZE].sum())
            del view  # an exported buffer would keep the mapping from closing
        yield


def _load_uss_by_worker(server: CliServer, model: str) -> dict[str, float]:
    """What each worker's load of a model added to its unique memory, from /metrics."""
    text = httpx.get(f"{server.url}/metrics").text
    return {
        sample.labels["pid"]: sample.value
        for family in text_string_to_metric_families(text)
        if family.name == "loadonce_model_memory_bytes"
        for sample in family.samples
        if sample.labels["model"] == model and sample.labels["kind"] == "uss"
    }


def test_two_workers_hold_one_copy_of_mapped_weights(
    tmp_path: Path, artifacts: dict[str, Path]
) -> None:
    env = cli_env(tmp_path)
    mappings = ExitStack()
    big = (artifacts["big_torch"], artifacts["big_sklearn"])
    mappings.enter_context(_mapped_by_this_process(*big))
    with mappings, serving([str(_config(tmp_path, artifacts))], tmp_path, env=env) as server:
        # No worker's load made a private copy of the weights: its unique memory grew by
        # less than 10% of their size (each copying load grew by about all of it), besides
        # the warm-up's freed temporaries that the allocator keeps for the next call (about
        # 20 MB for the neighbours search here, with glibc's default as with the worker's
        # threshold: a heap keeps up to twice malloc_mmap_threshold free).
        kept = 2 * ServerOptions.model_fields["malloc_mmap_threshold"].default
        for name in ("big_torch", "big_sklearn"):
            size = artifacts[name].stat().st_size
            shared_loads = _load_uss_by_worker(server, name)
            copied_loads = _load_uss_by_worker(server, f"{name}_private")
            assert len(shared_loads) == len(copied_loads) == 2, (shared_loads, copied_loads)
            assert all(uss < 0.1 * size + kept for uss in shared_loads.values()), (
                name,
                shared_loads,
            )
            assert all(uss > 0.9 * size for uss in copied_loads.values()), (name, copied_loads)
        mappings.close()  # from here on, the workers are the only processes mapping them

        workers = _workers(server)
        assert len(workers) == 2
        for name in ("big_torch", "big_sklearn"):
            size = artifacts[name].stat().st_size
            mapped = [_mapping(worker, artifacts[name]) for worker in workers]
            total_pss = sum(pss for pss, _ in mapped)
            # Counted once across the workers, not once per worker...
            assert abs(total_pss - size) < 0.1 * size, (name, total_pss / MIB, size / MIB)
            # ...and no worker holds a private part of it.
            assert all(private < 0.1 * size for _, private in mapped), (name, mapped)
        models = {m["name"]: m for m in httpx.get(f"{server.url}/models").json()["models"]}
        assert models["big_torch"]["weights_shared"] is True
        assert models["big_sklearn"]["weights_shared"] is True
        for name in ("big_torch", "big_sklearn"):
            mapped = models[name]["memory"]["mapped_bytes"]
            assert (
                abs(mapped - artifacts[name].stat().st_size) < 0.1 * artifacts[name].stat().st_size
            )
        assert models["big_torch_private"]["memory"]["mapped_bytes"] == 0
        assert models["big_torch_private"]["weights_shared"] is False
        assert models["big_sklearn_private"]["weights_shared"] is False
        # /models shows the copy a private load made.
        for name in ("big_torch", "big_sklearn"):
            size = artifacts[name].stat().st_size
            assert models[f"{name}_private"]["memory"]["uss_bytes"] > 0.9 * size

        # The same predictions with and without sharing.
        rng = np.random.default_rng(1)
        wide = rng.normal(size=(2, 5_000)).round(3).tolist()
        near = rng.normal(size=(2, 40)).round(3).tolist()
        for name, inputs in (("big_torch", wide), ("big_sklearn", near)):
            shared = httpx.post(f"{server.url}/models/{name}/predict", json={"inputs": inputs})
            private = httpx.post(
                f"{server.url}/models/{name}_private/predict", json={"inputs": inputs}
            )
            assert shared.status_code == 200, shared.text
            assert shared.json()["outputs"] == private.json()["outputs"]


def test_convert_makes_a_compressed_joblib_file_mappable(tmp_path: Path) -> None:
    import subprocess
    import sys

    from loadonce.runtimes.sklearn import compression_of
    from tests.servers import REPO_ROOT

    rng = np.random.default_rng(0)
    model = KNeighborsClassifier(n_neighbors=1, algorithm="brute").fit(
        rng.normal(size=(1000, 4)), rng.integers(0, 2, size=1000)
    )
    compressed = tmp_path / "compressed.joblib"
    joblib.dump(model, compressed, compress=3)
    assert compression_of(compressed) == "zlib"
    converted = tmp_path / "plain.joblib"

    def convert(*extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "loadonce", "convert", str(compressed), str(converted), *extra],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        )

    refused = convert()
    assert refused.returncode == 2
    assert "--trust" in refused.stderr
    done = convert("--trust")
    assert done.returncode == 0, done.stderr
    assert compression_of(converted) is None
    assert "sha256 =" in done.stdout
    mapped = joblib.load(converted, mmap_mode="r")
    assert isinstance(mapped._fit_X, np.memmap)
    probe = rng.normal(size=(5, 4))
    np.testing.assert_array_equal(mapped.predict(probe), model.predict(probe))
    assert convert("--trust").returncode == 2, "an existing file is not overwritten"
    # The wrong kind of file: one line, no traceback.
    not_a_pickle = tmp_path / "notes.txt"
    not_a_pickle.write_text("not a pickle\n")
    wrong = subprocess.run(
        [
            sys.executable,
            "-m",
            "loadonce",
            "convert",
            str(not_a_pickle),
            str(tmp_path / "x.joblib"),
            "--trust",
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert wrong.returncode == 2
    assert wrong.stderr.startswith(f"loadonce: error: {not_a_pickle} is not a joblib or pickle")
    assert len(wrong.stderr.strip().splitlines()) == 1, wrong.stderr


def test_a_forest_that_maps_only_its_classes_does_not_claim_to_share_its_weights(
    tmp_path: Path,
) -> None:
    """joblib maps a forest's classes_ array from the file, but its trees are copied into each
    worker: sharing is measured (mapped bytes against the load's private growth), not taken
    from any mapped array."""
    rng = np.random.default_rng(0)
    features = rng.normal(size=(4000, 16))
    labels = (features[:, 0] > 0).astype(int)
    forest = RandomForestClassifier(n_estimators=40, max_depth=12, random_state=0)
    path = tmp_path / "forest.joblib"
    joblib.dump(forest.fit(features, labels), path)
    spec = loadonce.ModelSpec(name="forest", artifact=path, trust=True, warmup=[0.0] * 16)
    with TestClient(loadonce.create_app([spec])) as client:
        described = client.get("/models/forest").json()
    assert described["weights_shared"] is False, described
    assert described["memory"]["mapped_bytes"] < 64 * 1024  # classes_ only
