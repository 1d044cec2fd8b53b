"""Output metadata from startup: what `/v2/models/{m}` (and `/config`, `/models/{m}`) says of a
scikit-learn model's outputs before any request is what every answer then holds. It was
empty until the first request, then copied from that one answer (the Transformers tasks'
check is in test_transformers_tasks.py)."""

from __future__ import annotations

import warnings
from typing import Any

import joblib
import numpy as np
import pytest
from catboost import CatBoostRegressor
from fastapi.testclient import TestClient
from sklearn.cluster import KMeans
from sklearn.ensemble import ExtraTreesRegressor, IsolationForest, RandomForestClassifier
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LinearRegression, LogisticRegression, Ridge
from sklearn.multioutput import MultiOutputClassifier
from sklearn.neural_network import MLPRegressor
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from xgboost import XGBRegressor

import loadonce
from tests.output_metadata import assert_answers_as_described

ROWS = np.random.default_rng(0).normal(size=(60, 4))
TARGETS = np.c_[ROWS[:, 0] * 2, ROWS[:, 1] - ROWS[:, 2]]
CLASSES = np.c_[(ROWS[:, 0] > 0).astype(int), np.digitize(ROWS[:, 1], [-1, 0, 1])]


def _estimators() -> dict[str, tuple[Any, dict[str, Any]]]:
    """Each estimator, fitted here, with its spec's options."""
    text = np.c_[np.array(["x", "y"])[CLASSES[:, 0]], np.array(["p", "q", "r", "s"])[CLASSES[:, 1]]]
    return {
        "clusters": (KMeans(3, n_init=2, random_state=0).fit(ROWS), {}),
        "outliers": (IsolationForest(n_estimators=5, random_state=0).fit(ROWS), {}),
        "outlier_scores": (
            IsolationForest(n_estimators=5, random_state=0).fit(ROWS),
            {"method": "score_samples"},
        ),
        "one_target": (Ridge().fit(ROWS, TARGETS[:, 0]), {}),
        "one_column": (
            make_pipeline(StandardScaler(), LinearRegression()).fit(ROWS, TARGETS[:, :1]),
            {},
        ),
        "two_targets": (ExtraTreesRegressor(n_estimators=3, random_state=0).fit(ROWS, TARGETS), {}),
        "network": (
            MLPRegressor(hidden_layer_sizes=(3,), max_iter=20, random_state=0).fit(ROWS, TARGETS),
            {},
        ),
        # Regressors of other libraries: CatBoost's has (empty) classes_ and tags that say
        # one target; XGBoost's predicts float32, sent as the FP64 its metadata says.
        "catboost_targets": (
            CatBoostRegressor(
                iterations=2, loss_function="MultiRMSE", verbose=0, allow_writing_files=False
            ).fit(ROWS, TARGETS),
            {},
        ),
        "xgboost_targets": (XGBRegressor(n_estimators=2).fit(ROWS, TARGETS), {}),
        "two_labels": (RandomForestClassifier(n_estimators=3, random_state=0).fit(ROWS, text), {}),
        "label_columns": (MultiOutputClassifier(LogisticRegression()).fit(ROWS, CLASSES), {}),
        # Probabilities per label column: of 2 and 4 classes (a JSON document per row), and
        # of 2 and 2 (a [columns, classes] tensor). No output was listed before an answer.
        "column_probabilities": (
            MultiOutputClassifier(LogisticRegression()).fit(ROWS, CLASSES),
            {"method": "predict_proba"},
        ),
        "equal_column_probabilities": (
            RandomForestClassifier(n_estimators=3, random_state=0).fit(
                ROWS, np.c_[CLASSES[:, 0], 1 - CLASSES[:, 0]]
            ),
            {"method": "predict_proba"},
        ),
        "classifier": (LogisticRegression().fit(ROWS, CLASSES[:, 1]), {}),
        "log_probabilities": (
            LogisticRegression().fit(ROWS, CLASSES[:, 1]),
            {"method": "predict_log_proba"},
        ),
    }


# What each model's metadata says before any request: (name, datatype, shape) per output.
DESCRIBED = {
    "clusters": [("output", "INT64", [-1])],
    "outliers": [("output", "INT64", [-1])],
    "outlier_scores": [("output", "FP64", [-1])],
    "one_target": [("output", "FP64", [-1])],
    "one_column": [("output", "FP64", [-1, 1])],
    "two_targets": [("output", "FP64", [-1, 2])],
    "network": [("output", "FP64", [-1, 2])],
    "catboost_targets": [("output", "FP64", [-1, 2])],
    "xgboost_targets": [("output", "FP64", [-1, 2])],
    "two_labels": [("output", "BYTES", [-1, 2])],
    "label_columns": [("output", "INT64", [-1, 2])],
    "column_probabilities": [("output", "BYTES", [-1])],
    "equal_column_probabilities": [("output", "FP64", [-1, 2, 2])],
    "classifier": [
        ("label", "INT64", [-1]),
        ("probabilities", "FP64", [-1, 4]),
        ("decision_function", "FP64", [-1, 4]),
    ],
    "log_probabilities": [("output", "FP64", [-1, 4])],
}


@pytest.fixture(scope="module")
def http(tmp_path_factory: pytest.TempPathFactory) -> Any:
    root = tmp_path_factory.mktemp("estimators")
    specs = []
    with warnings.catch_warnings():
        # A network of a few steps is enough to have a shape: it need not converge.
        warnings.simplefilter("ignore", ConvergenceWarning)
        estimators = _estimators()
    for name, (estimator, options) in estimators.items():
        joblib.dump(estimator, root / f"{name}.joblib")
        specs.append(
            loadonce.ModelSpec(
                name=name, artifact=root / f"{name}.joblib", trust=True, options=options
            )
        )
    with TestClient(loadonce.create_app(specs)) as client:
        yield client


def _rows(rows: np.ndarray[Any, Any]) -> dict[str, Any]:
    data = rows.tolist()
    return {
        "inputs": [{"name": "input", "datatype": "FP64", "shape": list(rows.shape), "data": data}]
    }


@pytest.mark.parametrize("model", list(DESCRIBED))
def test_the_metadata_before_any_request_is_what_every_answer_holds(
    http: TestClient, model: str
) -> None:
    """Requests of one row and of several, each answered as the metadata said before them."""
    requests = [_rows(ROWS[:1]), _rows(ROWS[5:12]), _rows(ROWS[20:23])]
    if model == "classifier":  # its other outputs when asked for
        names = ["probabilities", "decision_function", "label"]
        requests.append({**_rows(ROWS[30:32]), "outputs": [{"name": n} for n in names]})
    described = assert_answers_as_described(http, model, requests)
    assert [(o["name"], o["datatype"], o["shape"]) for o in described] == DESCRIBED[model]


def test_a_requested_output_of_a_model_of_one_output_is_that_output(http: TestClient) -> None:
    """Declared, a regressor's one output can be asked for by name (it could not, before its
    first answer) on both routes."""
    body = {**_rows(ROWS[:2]), "outputs": [{"name": "output"}]}
    answer = http.post("/v2/models/two_targets/infer", json=body)
    assert answer.status_code == 200, answer.text
    [output] = answer.json()["outputs"]
    assert (output["name"], output["shape"]) == ("output", [2, 2])
    picked = http.post(
        "/models/two_targets/predict", json={"inputs": ROWS[:2].tolist(), "outputs": ["output"]}
    )
    assert picked.status_code == 200, picked.text
    assert [set(o) for o in picked.json()["outputs"]] == [{"output"}, {"output"}]
    wrong = http.post(
        "/models/two_targets/predict", json={"inputs": ROWS[:1].tolist(), "outputs": ["label"]}
    )
    assert wrong.status_code == 400
    assert "the model's outputs are output" in wrong.json()["error"]
