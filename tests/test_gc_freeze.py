"""Once started, a server leaves its loaded models out of Python's cyclic garbage collection
(``gc.freeze``), collects its youngest generation every 10,000 objects instead of 700, and a
model replaced while serving is still freed, reference cycles and all.

The servers run in this process (uvicorn in a thread), so the test can look at the collector
itself; each test thaws what its server froze, so the rest of the session collects as usual.
"""

from __future__ import annotations

import gc
import re
import weakref
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, ClassVar

import httpx2 as httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

import loadonce
from tests.servers import ThreadedServer, run_python


class CyclicModel:
    """A predictor holding a reference cycle, as many real models do (a module and its
    children, a tree and its nodes): only the cyclic collector can free it."""

    alive: ClassVar[weakref.WeakSet[CyclicModel]] = weakref.WeakSet()

    def __init__(self) -> None:
        self.myself = self
        self.weights = [[float(i)] * 8 for i in range(1000)]
        CyclicModel.alive.add(self)

    def predict(self, batch: list[Any]) -> list[Any]:
        return [x * 2 for x in batch]


def _spec() -> loadonce.ModelSpec:
    return loadonce.ModelSpec(name="cyclic", loader=CyclicModel, input_shape=())


@pytest.fixture(autouse=True)
def _thawed() -> Iterator[None]:
    thresholds = gc.get_threshold()
    gc.set_threshold(700, *thresholds[1:])  # Python's default, whatever a test before chose
    gc.unfreeze()
    yield
    gc.unfreeze()
    gc.set_threshold(*thresholds)
    gc.collect()


def _collected(model: CyclicModel) -> bool:
    """Whether the collector walks ``model`` (a frozen object is in none of its generations)."""
    return any(tracked is model for tracked in gc.get_objects())


def _frozen_gauge(url: str) -> float:
    metrics = httpx.get(f"{url}/metrics").text
    found = re.search(r"^loadonce_gc_frozen_objects (\S+)$", metrics, re.MULTILINE)
    assert found is not None, metrics
    return float(found.group(1))


def _predict(url: str) -> list[Any]:
    answer = httpx.post(f"{url}/models/cyclic/predict", json={"inputs": [1, 2]})
    assert answer.status_code == 200, answer.text
    outputs: list[Any] = answer.json()["outputs"]
    return outputs


def test_the_loaded_model_is_frozen_once_the_server_starts() -> None:
    with ThreadedServer(loadonce.create_app([_spec()])) as server:
        [model] = CyclicModel.alive
        assert not _collected(model)
        assert gc.get_freeze_count() > 0
        # As counted when frozen: frozen objects freed since (by reference count) have left.
        assert _frozen_gauge(server.url) >= gc.get_freeze_count() > 0
        assert _predict(server.url) == [2, 4]
        # Requests in flight are not walked every 700 allocations (docs/benchmarks.md).
        assert gc.get_threshold()[0] == 10_000


def test_a_young_threshold_the_process_chose_is_kept() -> None:
    gc.set_threshold(1234)
    with ThreadedServer(loadonce.create_app([_spec()])) as server:
        assert gc.get_freeze_count() > 0
        assert _predict(server.url) == [2, 4]
        assert gc.get_threshold()[0] == 1234


def test_freezing_can_be_turned_off() -> None:
    with ThreadedServer(loadonce.create_app([_spec()], gc_freeze=False)) as server:
        [model] = CyclicModel.alive
        assert _collected(model)
        assert gc.get_freeze_count() == 0
        assert gc.get_threshold()[0] == 700
        assert _frozen_gauge(server.url) == 0
        assert _predict(server.url) == [2, 4]


def test_a_reloaded_model_is_freed_cycles_and_all_and_its_successor_frozen() -> None:
    with ThreadedServer(loadonce.create_app([_spec()])) as server:
        [first] = CyclicModel.alive
        first_ref = weakref.ref(first)
        del first
        answer = httpx.post(f"{server.url}/admin/models/cyclic/reload", json={}, timeout=30)
        assert answer.status_code == 200, answer.text
        # Frozen, the first instance would be kept by its own cycle for the life of the server.
        assert first_ref() is None
        [second] = CyclicModel.alive
        assert not _collected(second)
        assert _frozen_gauge(server.url) >= gc.get_freeze_count() > 0
        assert _predict(server.url) == [2, 4]


def test_an_unloaded_model_is_freed() -> None:
    with ThreadedServer(loadonce.create_app([_spec()])) as server:
        [loaded] = CyclicModel.alive
        loaded_ref = weakref.ref(loaded)
        del loaded
        answer = httpx.post(f"{server.url}/v2/repository/models/cyclic/unload", timeout=30)
        assert answer.status_code == 200, answer.text
        assert loaded_ref() is None
        assert len(CyclicModel.alive) == 0


@asynccontextmanager
async def _own_lifespan(app: FastAPI) -> AsyncIterator[None]:
    yield


@pytest.mark.parametrize(
    "build",
    [
        pytest.param(lambda: loadonce.create_app([_spec()]), id="create_app"),
        pytest.param(lambda: FastAPI(lifespan=loadonce.lifespan([_spec()])), id="own app"),
        pytest.param(
            lambda: FastAPI(lifespan=loadonce.lifespan([_spec()], wrap=_own_lifespan)),
            id="own app with its own lifespan",
        ),
    ],
)
def test_an_app_stopped_in_the_process_frees_its_models(build: Any) -> None:
    """A test suite starts and stops the app over and over in one process (TestClient), as
    does an app factory: each stop left its models frozen, kept by their own cycles for
    good (a test session grew by a model's memory per test)."""
    for _ in range(4):
        with TestClient(build()) as client:
            answer = client.post("/models/cyclic/predict", json={"inputs": [1]})
            assert answer.status_code in (200, 404)  # an own app has no /models routes
    gc.collect()
    # The instance closed last may still be held by the thread that ran its close() until
    # that thread's next task; the next stop frees it. None of the others is kept.
    assert len(CyclicModel.alive) <= 1


_CHILD_SCRIPT = """
import sys
from loadonce.server.settings import ServeConfig
from loadonce.server.worker_start import worker_context
from tests.loaders import report_frozen_objects

config = ServeConfig.model_validate({
    "server": {"gc_freeze": sys.argv[1] == "on"},
    "models": [{"name": "echo", "loader": "tests.loaders:echo"}],
})
context = worker_context(config)
answers = context.SimpleQueue()
child = context.Process(target=report_frozen_objects, args=(answers,))
child.start()
print(answers.get())
child.join()
"""


def _frozen_in_a_new_worker(tmp_path: Path, setting: str) -> tuple[int, int]:
    """How many objects a new worker inherits frozen, and its youngest generation's
    threshold."""
    done = run_python(tmp_path, _CHILD_SCRIPT, setting)
    assert done.returncode == 0, done.stderr
    frozen, young_threshold = done.stdout.split()
    return int(frozen), int(young_threshold)


def test_workers_are_forked_with_the_preloaded_libraries_already_frozen(tmp_path: Path) -> None:
    # Frozen in the fork server, the libraries' objects are never walked by a worker's
    # collector, which would write to (and so copy) every page holding one.
    frozen, young_threshold = _frozen_in_a_new_worker(tmp_path, "on")
    assert frozen > 10_000
    assert young_threshold == 10_000
    assert _frozen_in_a_new_worker(tmp_path, "off") == (0, 700)
