"""Batching on by default where a runtime's batched call is exact: a model served with no
options batches, and every answer is the model's own prediction for that example alone,
whatever shares its call; `batching = false` (or `--no-batching`) turns it off; runtimes and
loaders that make no such promise are not batched unless asked."""

from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import joblib
import numpy as np
import pytest
import skops.io
from fastapi.testclient import TestClient
from sklearn.datasets import make_regression
from sklearn.ensemble import RandomForestRegressor
from sklearn.linear_model import LinearRegression

import loadonce
from loadonce.core.spec import DEFAULT_BATCHING
from tests.servers import serving

CLIENTS = 16
ROWS_PER_CLIENT = 20


@pytest.fixture(scope="module")
def regression() -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
    features, targets = make_regression(n_samples=400, n_features=8, random_state=0)
    return features, targets


def _batch_calls(metrics: str) -> tuple[float, float]:
    """(examples, calls) the model's predict calls took, from /metrics."""

    def value(suffix: str) -> float:
        found = re.search(
            rf"^loadonce_batch_size_examples_{suffix}\{{[^}}]*\}} (\S+)$", metrics, re.M
        )
        assert found is not None, metrics
        return float(found.group(1))

    return value("sum"), value("count")


def _every_row_from_its_own_client(url: str, rows: np.ndarray[Any, Any]) -> list[Any]:
    """Each row in its own request, CLIENTS clients at once; the answers in the rows' order."""

    def client_sends(part: range) -> list[tuple[int, Any]]:
        with httpx.Client(timeout=30) as client:
            answers = []
            for index in part:
                answer = client.post(url, json={"inputs": [rows[index].tolist()]})
                assert answer.status_code == 200, answer.text
                answers.append((index, answer.json()["outputs"][0]))
            return answers

    parts = [range(start, len(rows), CLIENTS) for start in range(CLIENTS)]
    with ThreadPoolExecutor(CLIENTS) as pool:
        answered = dict(pair for answers in pool.map(client_sends, parts) for pair in answers)
    return [answered[index] for index in range(len(rows))]


@pytest.mark.parametrize("kind", ["forest", "linear"])
def test_an_artifact_served_with_no_options_batches_and_answers_each_row_as_alone(
    tmp_path: Path, regression: tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]], kind: str
) -> None:
    features, targets = regression
    if kind == "forest":
        estimator: Any = RandomForestRegressor(n_estimators=40, random_state=0, n_jobs=1)
        artifact = tmp_path / "model.joblib"
        joblib.dump(estimator.fit(features, targets), artifact)
        args = [str(artifact), "--trust"]
    else:
        estimator = LinearRegression().fit(features, targets)
        artifact = tmp_path / "model.skops"
        skops.io.dump(estimator, artifact)
        args = [str(artifact)]
    rows = np.random.default_rng(1).normal(size=(CLIENTS * ROWS_PER_CLIENT, 8))
    with serving(args, tmp_path) as server:
        listed = httpx.get(f"{server.url}/models").json()["models"][0]
        assert listed["queue"]["max_batch_size"] == DEFAULT_BATCHING.max_batch_size
        answers = _every_row_from_its_own_client(f"{server.url}/models/model/predict", rows)
        examples, calls = _batch_calls(httpx.get(f"{server.url}/metrics").text)
    alone = [estimator.predict(row[None, :])[0] for row in rows]
    if kind == "forest":
        assert answers == alone  # trees: the very same numbers
    else:
        # BLAS may round the last bits differently for a batch than for one row.
        np.testing.assert_allclose(answers, alone, rtol=1e-12, atol=1e-9)
    assert examples == len(rows)
    assert calls < examples, "no call carried more than one request: nothing was batched"


def test_no_batching_on_the_command_line_turns_it_off(
    tmp_path: Path, regression: tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]
) -> None:
    features, targets = regression
    artifact = tmp_path / "model.skops"
    skops.io.dump(LinearRegression().fit(features, targets), artifact)
    with serving([str(artifact), "--no-batching"], tmp_path) as server:
        listed = httpx.get(f"{server.url}/models").json()["models"][0]
        assert listed["queue"]["max_batch_size"] == 1
        answers = _every_row_from_its_own_client(
            f"{server.url}/models/model/predict", features[: CLIENTS * 2]
        )
        examples, calls = _batch_calls(httpx.get(f"{server.url}/metrics").text)
    assert len(answers) == examples == calls == CLIENTS * 2


class _Declares:
    batches_exactly = True

    def predict(self, rows: list[Any]) -> list[Any]:
        return rows


class _Silent:
    def predict(self, rows: list[Any]) -> list[Any]:
        return rows


@pytest.mark.parametrize(
    ("loader", "batching", "expected"),
    [
        (_Declares, None, DEFAULT_BATCHING.max_batch_size),  # the loader's object says so
        (_Silent, None, 1),  # a user's object makes no promise: not batched
        (_Declares, False, 1),  # batching = false
        (_Silent, True, loadonce.Batching().max_batch_size),  # batching = true: its defaults
        (_Silent, loadonce.Batching(max_batch_size=5), 5),
    ],
    ids=["declared", "silent", "false", "true", "table"],
)
def test_what_a_loader_and_the_spec_decide(loader: Any, batching: Any, expected: int) -> None:
    spec = loadonce.ModelSpec(name="m", loader=loader, batching=batching)
    with TestClient(loadonce.create_app([spec])) as client:
        listed = client.get("/models").json()["models"][0]
        assert listed["queue"]["max_batch_size"] == expected
        assert client.post("/models/m/predict", json={"inputs": [1, 2]}).json()["outputs"] == [
            1,
            2,
        ]


def test_batching_false_in_a_config_file(tmp_path: Path) -> None:
    from loadonce.server.config_file import read_config_file

    config = tmp_path / "serve.toml"
    config.write_text('[[models]]\nname = "m"\nloader = "tests.loaders:echo"\nbatching = false\n')
    assert read_config_file(config).models[0].batching is False
