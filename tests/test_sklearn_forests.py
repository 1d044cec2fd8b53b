"""Forests served tree by tree (runtimes/sklearn_forests.py): the very answers scikit-learn
gives, without joblib's per-tree wrapper, and scikit-learn's own methods wherever it would run
the trees otherwise."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pytest
import sklearn.ensemble._forest as sklearn_forest
import skops.io
from fastapi.testclient import TestClient
from sklearn.base import BaseEstimator
from sklearn.datasets import make_classification, make_regression
from sklearn.ensemble import (
    ExtraTreesClassifier,
    ExtraTreesRegressor,
    RandomForestClassifier,
    RandomForestRegressor,
)

import loadonce
from loadonce.runtimes import resolve_runtime
from loadonce.runtimes._base import SELECTED_OUTPUTS, Predictor

ROWS = np.random.default_rng(7).normal(size=(37, 6))


def _classification(outputs: int) -> tuple[Any, Any]:
    features, labels = make_classification(
        n_samples=300, n_features=6, n_informative=4, n_classes=3, random_state=0
    )
    if outputs == 1:
        return features, labels
    # A second output with string classes of its own: labels of another dtype per output.
    second = np.where(features[:, 0] > 0, "high", "low")
    return features, np.column_stack([labels.astype(str), second])


def _regression(outputs: int) -> tuple[Any, Any]:
    features, targets = make_regression(
        n_samples=300, n_features=6, n_targets=outputs, random_state=0
    )
    return features, targets


def _served_predictor(estimator: BaseEstimator, tmp_path: Path) -> Predictor:
    artifact = tmp_path / "model.joblib"
    joblib.dump(estimator, artifact)
    spec = loadonce.ModelSpec(name="m", artifact=artifact, trust=True)
    return resolve_runtime(spec).load(spec)


def _assert_same_probabilities(picked: Any, expected: Any) -> None:
    """Each example's picked probabilities are the estimator's row, bit for bit."""
    assert len(picked) == len(expected)
    for answer, row in zip(picked, expected, strict=True):
        assert np.array_equal(answer["probabilities"], row)


@pytest.fixture
def no_joblib_wrapper(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """scikit-learn's forests reach joblib through this name; every call (fitting's too) is
    counted."""
    calls: list[int] = []
    real = sklearn_forest.Parallel

    def counting(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(sklearn_forest, "Parallel", counting)
    return calls


KINDS = [
    (RandomForestClassifier, _classification, 1),
    (RandomForestClassifier, _classification, 2),
    (ExtraTreesClassifier, _classification, 1),
    (ExtraTreesClassifier, _classification, 2),
    (RandomForestRegressor, _regression, 1),
    (RandomForestRegressor, _regression, 3),
    (ExtraTreesRegressor, _regression, 1),
    (ExtraTreesRegressor, _regression, 2),
]


@pytest.mark.parametrize(("forest_class", "data", "outputs"), KINDS)
def test_a_forest_answers_bit_for_bit_what_scikit_learn_answers_without_joblib(
    tmp_path: Path, forest_class: Any, data: Any, outputs: int, no_joblib_wrapper: list[int]
) -> None:
    features, targets = data(outputs)
    forest = forest_class(n_estimators=25, max_depth=6, random_state=0).fit(features, targets)
    predictor = _served_predictor(forest, tmp_path)
    rows = predictor.prepare(list(ROWS))
    no_joblib_wrapper.clear()  # fitting used it
    served = predictor.predict(rows)
    assert no_joblib_wrapper == []
    expected = forest.predict(ROWS)
    assert no_joblib_wrapper, "scikit-learn's own predict went through joblib"
    assert np.asarray(served).dtype == expected.dtype
    assert np.array_equal(served, expected)
    if forest_class in (RandomForestClassifier, ExtraTreesClassifier) and outputs == 1:
        # A request may pick the probabilities (an estimator of one output offers them).
        picked = predictor.predict_with(rows, {SELECTED_OUTPUTS: ["probabilities"]})
        _assert_same_probabilities(picked, forest.predict_proba(ROWS))


def test_missing_values_reach_the_trees_as_scikit_learn_lets_them(
    tmp_path: Path, no_joblib_wrapper: list[int]
) -> None:
    features, labels = _classification(1)
    features = features.copy()
    features[::7, 2] = np.nan  # fitted with gaps: the trees learn where NaN goes
    forest = RandomForestClassifier(n_estimators=20, random_state=0).fit(features, labels)
    rows = ROWS.copy()
    rows[::3, 2] = np.nan
    predictor = _served_predictor(forest, tmp_path)
    no_joblib_wrapper.clear()  # fitting used it
    served = predictor.predict(predictor.prepare(list(rows)))
    assert no_joblib_wrapper == []
    assert np.array_equal(served, forest.predict(rows))


class OwnForest(RandomForestRegressor):  # type: ignore[misc]
    """A subclass may predict otherwise: it keeps scikit-learn's methods, whatever they are."""


def _spec_of(estimator: BaseEstimator, tmp_path: Path, **options: Any) -> loadonce.ModelSpec:
    artifact = tmp_path / "model.joblib"
    joblib.dump(estimator, artifact)
    return loadonce.ModelSpec(name="m", artifact=artifact, trust=True, options=options)


@pytest.mark.parametrize("settings", [{"n_jobs": 2}, {"n_jobs": -1}, {"verbose": 1}])
def test_a_forest_kept_with_training_jobs_is_served_tree_by_tree_as_with_one_job(
    tmp_path: Path,
    settings: dict[str, Any],
    no_joblib_wrapper: list[int],
    caplog: pytest.LogCaptureFixture,
) -> None:
    features, targets = _regression(1)
    forest = RandomForestRegressor(n_estimators=20, random_state=0, **settings)
    forest.fit(features, targets)
    spec = _spec_of(forest, tmp_path)
    with caplog.at_level("INFO", logger="loadonce"):
        predictor = resolve_runtime(spec).load(spec)
    assert "is called tree by tree" in caplog.text
    assert "tree_by_tree = false" in caplog.text
    no_joblib_wrapper.clear()  # fitting used it
    served = predictor.predict(predictor.prepare(list(ROWS)))
    assert no_joblib_wrapper == []
    forest.set_params(n_jobs=1, verbose=0)  # the reference: one job, summed in order
    assert np.array_equal(served, forest.predict(ROWS))


@pytest.mark.parametrize("case", ["option off", "subclass", "python loader with 2 jobs"])
def test_scikit_learns_own_methods_where_asked_or_where_the_forest_is_not_one_of_the_four(
    tmp_path: Path, case: str, no_joblib_wrapper: list[int]
) -> None:
    features, targets = _regression(1)
    forest_class = OwnForest if case == "subclass" else RandomForestRegressor
    jobs = 2 if case == "python loader with 2 jobs" else 1
    forest = forest_class(n_estimators=10, random_state=0, n_jobs=jobs).fit(features, targets)
    if case == "python loader with 2 jobs":  # the loader's object: its settings are the user's
        spec = loadonce.ModelSpec(name="m", loader=lambda: forest)
    else:
        options = {"tree_by_tree": False} if case == "option off" else {}
        spec = _spec_of(forest, tmp_path, **options)
    predictor = resolve_runtime(spec).load(spec)
    no_joblib_wrapper.clear()  # fitting used it
    served = predictor.predict(predictor.prepare(list(ROWS)))
    assert no_joblib_wrapper, "the forest did not go through scikit-learn's own predict"
    np.testing.assert_allclose(served, forest.predict(ROWS), rtol=1e-12)


def test_tree_by_tree_takes_true_or_false_and_nothing_else(tmp_path: Path) -> None:
    features, targets = _regression(1)
    forest = RandomForestRegressor(n_estimators=3, random_state=0).fit(features, targets)
    spec = _spec_of(forest, tmp_path, tree_by_tree="yes")
    with pytest.raises(ValueError, match="tree_by_tree must be true or false"):
        resolve_runtime(spec).load(spec)


def test_a_served_forest_answers_the_estimators_labels_and_probabilities(
    tmp_path: Path,
) -> None:
    features, labels = _classification(1)
    forest = RandomForestClassifier(n_estimators=30, random_state=0).fit(features, labels)
    artifact = tmp_path / "forest.skops"
    skops.io.dump(forest, artifact)
    spec = loadonce.ModelSpec(
        name="forest",
        artifact=artifact,
        options={"trusted_types": ["sklearn.tree._tree.Tree"]},
    )
    with TestClient(loadonce.create_app([spec])) as client:
        response = client.post(
            "/models/forest/predict",
            json={"inputs": ROWS.tolist(), "outputs": ["label", "probabilities"]},
        )
    assert response.status_code == 200, response.text
    answers = response.json()["outputs"]
    assert [answer["label"] for answer in answers] == forest.predict(ROWS).tolist()
    assert [answer["probabilities"] for answer in answers] == forest.predict_proba(ROWS).tolist()


def test_a_forest_a_python_loader_returns_is_called_tree_by_tree_too(
    no_joblib_wrapper: list[int],
) -> None:
    features, targets = _regression(2)
    forest = ExtraTreesRegressor(n_estimators=15, random_state=0).fit(features, targets)
    spec = loadonce.ModelSpec(name="m", loader=lambda: forest)
    predictor = resolve_runtime(spec).load(spec)
    no_joblib_wrapper.clear()  # fitting used it
    served = predictor.predict(predictor.prepare(list(ROWS)))
    assert no_joblib_wrapper == []
    assert np.array_equal(served, forest.predict(ROWS))


def test_a_forest_fitted_on_a_dataframe_checks_its_columns_and_answers_the_same(
    tmp_path: Path, no_joblib_wrapper: list[int]
) -> None:
    import pandas as pd

    features, labels = _classification(1)
    names = [f"f{index}" for index in range(features.shape[1])]
    forest = RandomForestClassifier(n_estimators=15, random_state=0)
    forest.fit(pd.DataFrame(features, columns=names), labels)
    predictor = _served_predictor(forest, tmp_path)
    examples = [dict(zip(names, row, strict=True)) for row in ROWS.tolist()]
    no_joblib_wrapper.clear()  # fitting used it
    served = predictor.predict(predictor.prepare(examples))
    assert no_joblib_wrapper == []
    assert np.array_equal(served, forest.predict(pd.DataFrame(ROWS, columns=names)))


def test_a_pipeline_ending_in_a_forest_runs_its_transforms_then_the_trees(
    tmp_path: Path, no_joblib_wrapper: list[int]
) -> None:
    from sklearn.decomposition import PCA
    from sklearn.pipeline import Pipeline, make_pipeline
    from sklearn.preprocessing import StandardScaler

    features, labels = _classification(1)
    inner = Pipeline([("skip", "passthrough"), ("pca", PCA(n_components=4))])
    pipeline = make_pipeline(
        StandardScaler(),
        Pipeline(
            [
                ("reduce", inner),
                ("forest", RandomForestClassifier(n_estimators=20, random_state=0, n_jobs=-1)),
            ]
        ),
    ).fit(features, labels)
    predictor = _served_predictor(pipeline, tmp_path)
    rows = predictor.prepare(list(ROWS))
    no_joblib_wrapper.clear()  # fitting used it
    served = predictor.predict(rows)
    picked = predictor.predict_with(rows, {SELECTED_OUTPUTS: ["probabilities"]})
    assert no_joblib_wrapper == []
    pipeline.set_params(pipeline__forest__n_jobs=1)  # the reference: one job, summed in order
    assert np.array_equal(served, pipeline.predict(ROWS))
    _assert_same_probabilities(picked, pipeline.predict_proba(ROWS))


def test_a_dataframe_pipeline_with_encoded_columns_ending_in_a_forest(
    tmp_path: Path, no_joblib_wrapper: list[int]
) -> None:
    import pandas as pd
    from sklearn.compose import make_column_transformer
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder

    rng = np.random.default_rng(3)
    frame = pd.DataFrame(
        {"size": rng.normal(size=200), "city": rng.choice(["Oslo", "Lima", "Pune"], size=200)}
    )
    targets = frame["size"] * 2 + (frame["city"] == "Lima")
    pipeline = make_pipeline(
        make_column_transformer((OneHotEncoder(), ["city"]), remainder="passthrough"),
        ExtraTreesRegressor(n_estimators=15, random_state=0),
    ).fit(frame, targets)
    predictor = _served_predictor(pipeline, tmp_path)
    examples = [{"size": 0.5, "city": "Pune"}, {"size": -1.25, "city": "Oslo"}]
    no_joblib_wrapper.clear()  # fitting used it
    served = predictor.predict(predictor.prepare(examples))
    assert no_joblib_wrapper == []
    assert np.array_equal(served, pipeline.predict(pd.DataFrame(examples)))
