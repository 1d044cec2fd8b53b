"""CatBoost served from its own ``.cbm`` files (no pickle, no trust needed), with tiny models
the tests train: answers on the scale the other boosters use, checked against CatBoost's own."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import catboost
import httpx2 as httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient

import loadonce
from tests.boosters import BINARY, ROWS, THREE_CLASSES, served_by
from tests.servers import serving

# Tiny, one thread, and nothing written into the working directory (catboost_info/).
TINY = {"iterations": 10, "thread_count": 1, "allow_writing_files": False, "verbose": False}


def _saved(model: Any, labels: Any, path: Path, **fit: Any) -> Any:
    model.fit(ROWS, labels, **fit)
    model.save_model(str(path))
    return model


def test_a_binary_classifier_answers_its_second_class_probability(tmp_path: Path) -> None:
    path = tmp_path / "churn.cbm"
    model = _saved(catboost.CatBoostClassifier(**TINY), BINARY, path)
    spec = loadonce.ModelSpec(name="churn", artifact=path)  # no trust: the file is data
    expected = model.predict_proba(ROWS[:10])[:, 1]
    np.testing.assert_allclose(served_by(spec, ROWS[:10].tolist()), expected, rtol=1e-9)
    with TestClient(loadonce.create_app([spec])) as client:
        described = client.get("/models/churn").json()
        assert (described["runtime"], described["input_shape"]) == ("catboost", [5])
        assert described["concurrency"] == "shared"
        wrong = client.post("/models/churn/predict", json={"inputs": [[1.0, 2.0]]})
        assert wrong.status_code == 400
        assert "shape [5]" in wrong.json()["error"]
        metadata = client.get("/v2/models/churn").json()
        assert metadata["platform"] == "catboost"
        assert metadata["inputs"] == [{"name": "input", "datatype": "FP64", "shape": [-1, 5]}]
        tensor = {"name": "input", "shape": [2, 5], "datatype": "FP64"}
        v2 = client.post(
            "/v2/models/churn/infer",
            json={"inputs": [{**tensor, "data": ROWS[:2].ravel().tolist()}]},
        ).json()
        np.testing.assert_allclose(v2["outputs"][0]["data"], expected[:2], rtol=1e-9)


def test_a_multiclass_classifier_answers_a_row_of_probabilities(tmp_path: Path) -> None:
    path = tmp_path / "classes.cbm"
    model = _saved(
        catboost.CatBoostClassifier(loss_function="MultiClass", **TINY), THREE_CLASSES, path
    )
    served = served_by(loadonce.ModelSpec(name="classes", artifact=path), ROWS[:4].tolist())
    np.testing.assert_allclose(served, model.predict_proba(ROWS[:4]), rtol=1e-9)
    assert len(served[0]) == 3
    # Metadata says so (it said one number per example: [-1], dims []).
    spec = loadonce.ModelSpec(name="classes", artifact=path)
    with TestClient(loadonce.create_app([spec])) as client:
        [output] = client.get("/v2/models/classes").json()["outputs"]
        assert output["shape"] == [-1, 3]
        [configured] = client.get("/v2/models/classes/config").json()["output"]
        assert configured["dims"] == [3]


@pytest.mark.parametrize("threads", [0, -2, 1.5, True, "2"])
def test_a_thread_count_that_is_not_one_or_more_fails_the_load(
    tmp_path: Path, threads: Any
) -> None:
    """threads = 0 loaded, and every predict failed; 1.5 and true were taken as 1."""
    path = tmp_path / "churn.cbm"
    _saved(catboost.CatBoostClassifier(**TINY), BINARY, path)
    spec = loadonce.ModelSpec(name="churn", artifact=path, options={"threads": threads})
    refused = pytest.raises(loadonce.ModelLoadError, match=r"options\.threads must be a whole")
    with refused, TestClient(loadonce.create_app([spec])):
        pass


@pytest.mark.parametrize("loss", ["RMSE", "Poisson", "RMSEWithUncertainty"])
def test_a_regressor_answers_its_own_predictions(tmp_path: Path, loss: str) -> None:
    path = tmp_path / "price.cbm"
    labels = np.abs(ROWS[:, 0]) if loss == "Poisson" else ROWS[:, 0]
    model = _saved(catboost.CatBoostRegressor(loss_function=loss, **TINY), labels, path)
    spec = loadonce.ModelSpec(name="price", artifact=path, options={"threads": 1})
    # CatBoostRegressor.predict answers exp(raw score) for Poisson, as XGBoost and LightGBM do,
    # and a [mean, variance] row for RMSEWithUncertainty.
    np.testing.assert_allclose(served_by(spec, ROWS[:10].tolist()), model.predict(ROWS[:10]))


def _nan_row(client: TestClient, name: str) -> httpx.Response:
    # JSON has no NaN; the NaN literal many encoders write is read as one.
    body = b'{"inputs": [[NaN, 0.5, -0.5, 1.0, 0.0]]}'
    headers = {"content-type": "application/json"}
    return client.post(f"/models/{name}/predict", content=body, headers=headers)


def test_nan_is_a_missing_value_unless_the_model_was_trained_to_forbid_it(tmp_path: Path) -> None:
    missing, forbidden = tmp_path / "missing.cbm", tmp_path / "forbidden.cbm"
    model = _saved(catboost.CatBoostClassifier(**TINY), BINARY, missing)
    _saved(catboost.CatBoostClassifier(nan_mode="Forbidden", **TINY), BINARY, forbidden)
    specs = [loadonce.ModelSpec(name=path.stem, artifact=path) for path in (missing, forbidden)]
    with TestClient(loadonce.create_app(specs)) as client:
        answer = _nan_row(client, "missing")
        assert answer.status_code == 200, answer.text
        row = np.array([[np.nan, 0.5, -0.5, 1.0, 0.0]])
        np.testing.assert_allclose(answer.json()["outputs"], model.predict_proba(row)[:, 1])
        refused = _nan_row(client, "forbidden")
        assert refused.status_code == 400
        assert "nan_mode 'Forbidden'" in refused.json()["error"]


def _load_failure(spec: loadonce.ModelSpec) -> str:
    with pytest.raises(loadonce.ModelLoadError) as failure:
        TestClient(loadonce.create_app([spec])).__enter__()
    return str(failure.value)


def _rows_with_text(kind: str) -> tuple[list[list[Any]], dict[str, Any]]:
    """ROWS with a column of text first: a shop (a category) or a review (a text feature),
    and how CatBoost is told which column it is."""
    if kind == "categorical":
        rows = [[f"shop{int(row[3] > 0)}", *row[:3]] for row in ROWS.tolist()]
        return rows, {"cat_features": [0]}
    words = ("good fine", "bad awful", "good great", "awful poor")
    rows = [[words[int(row[3] > 0) * 2 + int(row[4] > 0)], *row[:3]] for row in ROWS.tolist()]
    return rows, {"text_features": [0]}


@pytest.mark.parametrize("saved_as", ["cbm", "joblib"])
@pytest.mark.parametrize("kind", ["categorical", "text"])
def test_a_model_with_categorical_or_text_features_takes_rows_of_text_and_numbers(
    tmp_path: Path, kind: str, saved_as: str
) -> None:
    """CatBoost reads its categorical and text features as text: a row is text there and
    numbers elsewhere, on the JSON route and /v2 (BYTES). The .cbm file was refused at load;
    the scikit-learn class saved with joblib loaded, and refused every request ("must be
    numbers")."""
    import joblib

    rows, features = _rows_with_text(kind)
    model = catboost.CatBoostClassifier(**TINY).fit(rows, BINARY, **features)
    path = tmp_path / f"shops.{saved_as}"
    if saved_as == "cbm":
        model.save_model(str(path))
        expected: list[Any] = model.predict_proba(rows[:6])[:, 1].tolist()
    else:
        joblib.dump(model, path)
        expected = model.predict(rows[:6]).tolist()
    spec = loadonce.ModelSpec(name="shops", artifact=path, trust=saved_as == "joblib")
    with TestClient(loadonce.create_app([spec])) as client:
        described = client.get("/v2/models/shops").json()["inputs"]
        assert described == [{"name": "input", "datatype": "BYTES", "shape": [-1, 4]}]
        answer = client.post("/models/shops/predict", json={"inputs": rows[:6]})
        assert answer.status_code == 200, answer.text
        np.testing.assert_allclose(answer.json()["outputs"], expected, rtol=1e-9)
        # /v2: one BYTES tensor of rows, the numbers written out (repr: no digit lost).
        data = [value if i == 0 else repr(value) for row in rows[:6] for i, value in enumerate(row)]
        tensor = {"name": "input", "datatype": "BYTES", "shape": [6, 4], "data": data}
        infer = client.post("/v2/models/shops/infer", json={"inputs": [tensor]})
        assert infer.status_code == 200, infer.text
        np.testing.assert_allclose(infer.json()["outputs"][0]["data"], expected, rtol=1e-9)
        # A number or a null (which CatBoost fails on) where it reads text, text where it
        # reads numbers: 400s naming the column.
        for wrong in ([1.5, *rows[0][1:]], [None, *rows[0][1:]], [rows[0][0], "x", *rows[0][2:]]):
            refused = client.post("/models/shops/predict", json={"inputs": [wrong]})
            assert refused.status_code == 400, refused.text
            assert "column" in refused.json()["error"]


def test_a_model_with_embedding_features_is_refused_at_load(tmp_path: Path) -> None:
    path = tmp_path / "shops.cbm"
    import pandas as pd

    frame = pd.DataFrame({"vector": [np.array(row[:2]) for row in ROWS], "x": ROWS[:, 2]})
    model = catboost.CatBoostClassifier(**TINY).fit(frame, BINARY, embedding_features=[0])
    model.save_model(str(path))
    assert _load_failure(loadonce.ModelSpec(name="shops", artifact=path)) == (
        f"model 'shops' failed to load from {path}: ValueError: the model has embedding "
        "features (columns 0); the catboost runtime serves numeric, categorical and text "
        "features only"
    )


@pytest.mark.parametrize("content", [None, b"not a model", b"CBM1 and then too short"])
def test_a_missing_or_corrupt_file_fails_the_load_naming_it(
    tmp_path: Path, content: bytes | None
) -> None:
    path = tmp_path / "broken.cbm"
    if content is not None:
        path.write_bytes(content)
    message = _load_failure(loadonce.ModelSpec(name="broken", artifact=path))
    assert message.startswith(f"model 'broken' failed to load from {path}: ")
    assert ("no such file" if content is None else "not a CatBoost model file") in message
    assert ".cpp:" not in message
    assert "\n" not in message


def test_the_cli_serves_a_cbm_file_from_forked_workers(tmp_path: Path) -> None:
    path = tmp_path / "churn.cbm"
    model = _saved(catboost.CatBoostClassifier(**TINY), BINARY, path)
    with serving([str(path), "--workers", "2"], tmp_path) as server:
        answer = httpx.post(
            f"{server.url}/models/churn/predict", json={"inputs": ROWS[:3].tolist()}
        )
        np.testing.assert_allclose(
            answer.json()["outputs"], model.predict_proba(ROWS[:3])[:, 1], rtol=1e-9
        )


def test_without_catboost_installed_the_load_names_the_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "churn.cbm"
    _saved(catboost.CatBoostClassifier(**TINY), BINARY, path)
    monkeypatch.setitem(sys.modules, "catboost", None)  # import catboost now fails
    message = _load_failure(loadonce.ModelSpec(name="churn", artifact=path))
    assert message.endswith("install it with: pip install 'loadonce[catboost]'")


def test_a_scikit_learn_style_classifier_saved_with_joblib_takes_its_features(
    tmp_path: Path,
) -> None:
    """Unpickled, CatBoostClassifier says n_features_in_ == 0: the input shape came out [0]
    and every request was refused. Its feature names say how many it takes."""
    import joblib

    model = catboost.CatBoostClassifier(
        iterations=5, verbose=0, thread_count=1, allow_writing_files=False
    )
    model.fit(ROWS, BINARY)
    path = tmp_path / "churn.joblib"
    joblib.dump(model, path)
    spec = loadonce.ModelSpec(name="churn", artifact=path, trust=True)
    with TestClient(loadonce.create_app([spec])) as client:
        assert client.get("/models/churn").json()["input_shape"] == [ROWS.shape[1]]
        answer = client.post("/models/churn/predict", json={"inputs": ROWS[:6].tolist()})
        assert answer.json()["outputs"] == model.predict(ROWS[:6]).tolist(), answer.text


@pytest.mark.parametrize("use_best_model", [True, False])
def test_a_model_trained_with_an_eval_set_answers_as_catboosts_own_predict(
    tmp_path: Path, use_best_model: bool
) -> None:
    """CatBoost cuts the trees past the best iteration itself (use_best_model), or keeps them
    all and predicts with all: the file's trees are what CatBoost answers with, unlike
    XGBoost's, whose estimators stop at the best iteration the file records."""
    noisy = (ROWS[:, 0] + np.random.default_rng(1).normal(size=len(ROWS)) > 0).astype(int)
    model = catboost.CatBoostClassifier(
        **{**TINY, "iterations": 60}, learning_rate=0.5, use_best_model=use_best_model
    )
    model.fit(ROWS[:120], noisy[:120], eval_set=(ROWS[120:], noisy[120:]))
    assert model.get_best_iteration() + 1 < 60
    path = tmp_path / "stopped.cbm"
    model.save_model(str(path))
    loaded = catboost.CatBoostClassifier()
    loaded.load_model(str(path))
    served = served_by(loadonce.ModelSpec(name="stopped", artifact=path), ROWS[:20].tolist())
    np.testing.assert_allclose(served, loaded.predict_proba(ROWS[:20])[:, 1], rtol=1e-9)
