"""An answer carries the version of the model that computed it: a request queued before a
reload is computed by the version it was queued for, and was labelled with the new one
(``{"version": "2", "outputs": [<version 1's answer>]}``) when the reload ended first."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2 as httpx
import pytest

import loadonce
from tests.servers import ThreadedServer


class SlowConstant:
    """Answers its artifact's text for every example, after a pause long enough for a
    reload to finish while a call runs."""

    def __init__(self, text: str) -> None:
        self.text = text

    def predict(self, batch: list[Any]) -> list[Any]:
        time.sleep(0.8)
        return [self.text for _ in batch]


def slow_constant(path: Path) -> SlowConstant:
    return SlowConstant(Path(path).read_text())


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[ThreadedServer, Path]]:
    (tmp_path / "one.txt").write_text("one")
    (tmp_path / "two.txt").write_text("two")
    spec = loadonce.ModelSpec(
        name="m", loader=slow_constant, artifact=tmp_path / "one.txt", input_shape=()
    )
    with ThreadedServer(loadonce.create_app([spec])) as running:
        yield running, tmp_path


@pytest.mark.parametrize(
    ("path", "body", "read"),
    [
        (
            "/models/m/predict",
            {"inputs": [1.0]},
            lambda answer: (answer["version"], answer["outputs"][0]),
        ),
        (
            "/v2/models/m/infer",
            {"inputs": [{"name": "input", "shape": [1], "datatype": "FP64", "data": [1.0]}]},
            lambda answer: (answer["model_version"], answer["outputs"][0]["data"][0]),
        ),
    ],
)
def test_a_request_running_across_a_reload_is_labelled_with_the_version_that_answered(
    server: tuple[ThreadedServer, Path], path: str, body: dict[str, Any], read: Any
) -> None:
    running, directory = server
    answers: list[Any] = []

    def ask() -> None:
        answers.append(httpx.post(running.url + path, json=body, timeout=30).json())

    asking = threading.Thread(target=ask)
    asking.start()
    time.sleep(0.3)  # queued and running on version 1
    reloaded = httpx.post(
        f"{running.url}/admin/models/m/reload",
        json={"artifact": str(directory / "two.txt"), "version": "2"},
        timeout=30,
    )
    assert reloaded.status_code == 200, reloaded.text
    asking.join()
    assert read(answers[0]) == ("1", "one")
    after = httpx.post(running.url + path, json=body, timeout=30).json()
    assert read(after) == ("2", "two")
