"""XGBoost and LightGBM served from their own files (no pickle, no trust needed), with tiny
boosters the tests train."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx2 as httpx
import lightgbm
import numpy as np
import pytest
import xgboost
from fastapi.testclient import TestClient

import loadonce
from tests.boosters import BINARY, ROWS, THREE_CLASSES, served_by
from tests.servers import run_cli, serving


def _xgboost(path: Path, objective: str, labels: Any, **params: Any) -> xgboost.Booster:
    booster = xgboost.train(
        {"objective": objective, "nthread": 1, **params}, xgboost.DMatrix(ROWS, label=labels), 4
    )
    booster.save_model(str(path))
    return booster


@pytest.mark.parametrize("suffix", [".json", ".ubj"])
def test_an_xgboost_file_serves_the_boosters_own_predictions(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"churn{suffix}"
    booster = _xgboost(path, "binary:logistic", BINARY)
    spec = loadonce.ModelSpec(name="churn", artifact=path)  # no trust: the file is data
    served = served_by(spec, ROWS[:10].tolist())
    np.testing.assert_allclose(served, booster.inplace_predict(ROWS[:10]), rtol=1e-6)
    with TestClient(loadonce.create_app([spec])) as client:
        described = client.get("/models/churn").json()
        assert (described["runtime"], described["input_shape"]) == ("xgboost", [5])
        wrong = client.post("/models/churn/predict", json={"inputs": [1.0, 2.0]})
        assert wrong.status_code == 400
        tensor = {"name": "input", "shape": [2, 5], "datatype": "FP64"}
        v2 = client.post(
            "/v2/models/churn/infer",
            json={"inputs": [{**tensor, "data": ROWS[:2].ravel().tolist()}]},
        ).json()
        np.testing.assert_allclose(
            v2["outputs"][0]["data"], booster.inplace_predict(ROWS[:2]), rtol=1e-6
        )


def test_a_multiclass_xgboost_answers_a_row_of_probabilities(tmp_path: Path) -> None:
    path = tmp_path / "classes.json"
    booster = _xgboost(path, "multi:softprob", THREE_CLASSES, num_class=3)
    served = served_by(loadonce.ModelSpec(name="classes", artifact=path), ROWS[:4].tolist())
    np.testing.assert_allclose(served, booster.inplace_predict(ROWS[:4]), rtol=1e-6)
    assert len(served[0]) == 3


def test_a_lightgbm_text_file_serves_the_boosters_own_predictions(tmp_path: Path) -> None:
    booster = lightgbm.train(
        {"objective": "binary", "verbose": -1, "num_threads": 1},
        lightgbm.Dataset(ROWS, label=BINARY),
        4,
    )
    path = tmp_path / "churn.txt"
    booster.save_model(str(path))
    spec = loadonce.ModelSpec(name="churn", artifact=path, options={"threads": 1})
    served = served_by(spec, ROWS[:10].tolist())
    np.testing.assert_allclose(served, booster.predict(ROWS[:10]), rtol=1e-9)


def test_any_other_json_or_text_file_is_not_taken_for_a_booster(tmp_path: Path) -> None:
    for name, content in (("config.json", '{"a": 1}'), ("notes.txt", "tree-like notes\n")):
        path = tmp_path / name
        path.write_text(content)
        with pytest.raises(loadonce.ConfigError, match=r"is an? (XGBoost|LightGBM) model when"):
            loadonce.lifespan([loadonce.ModelSpec(name="m", artifact=path)])


@pytest.mark.parametrize("suffix", [".model", ".bin"])
def test_an_xgboost_file_under_an_older_name_is_taken_by_its_content(
    tmp_path: Path, suffix: str
) -> None:
    """save_model writes UBJSON whatever the name; ".model" was refused by its suffix."""
    saved = tmp_path / "churn.ubj"  # XGBoost warns for any other name, and writes the same
    booster = _xgboost(saved, "binary:logistic", BINARY)
    path = saved.rename(tmp_path / f"churn{suffix}")
    served = served_by(loadonce.ModelSpec(name="churn", artifact=path), ROWS[:5].tolist())
    np.testing.assert_allclose(served, booster.inplace_predict(ROWS[:5]), rtol=1e-6)
    other = tmp_path / f"weights{suffix}"
    other.write_bytes(b"\x00" * 64)
    with pytest.raises(loadonce.ConfigError, match="XGBoost's UBJSON"):
        loadonce.lifespan([loadonce.ModelSpec(name="m", artifact=other)])


def test_the_cli_serves_a_booster_file_from_forked_workers(tmp_path: Path) -> None:
    path = tmp_path / "churn.ubj"
    booster = _xgboost(path, "binary:logistic", BINARY)
    with serving([str(path), "--workers", "2"], tmp_path) as server:
        answer = httpx.post(
            f"{server.url}/models/churn/predict", json={"inputs": ROWS[:3].tolist()}
        )
        np.testing.assert_allclose(
            answer.json()["outputs"], booster.inplace_predict(ROWS[:3]), rtol=1e-6
        )


def _lightgbm_text(tmp_path: Path) -> bytes:
    booster = lightgbm.train(
        {"objective": "binary", "verbose": -1, "num_threads": 1},
        lightgbm.Dataset(ROWS, label=BINARY),
        4,
    )
    path = tmp_path / "whole.txt"
    booster.save_model(str(path))
    return path.read_bytes()


def _cut_in(text: bytes, marker: bytes, extra: int) -> bytes:
    return text[: text.index(marker) + len(marker) + extra]


# Where a cut made LightGBM itself abort or crash the process (SIGABRT, SIGSEGV): in the
# tree_sizes line, inside a tree, and among the parameters; or load a model of no trees that
# answered constants: in its header, before its tree_sizes line.
_CUTS: dict[str, Callable[[bytes], bytes]] = {
    "its header": lambda text: text[: text.index(b"tree_sizes=") // 2],
    "its tree sizes": lambda text: _cut_in(text, b"tree_sizes=", 0),
    "a tree": lambda text: _cut_in(text, b"Tree=1", 40),
    "the last tree": lambda text: _cut_in(text, b"Tree=3", 10),
    "the parameters": lambda text: _cut_in(text, b"parameters:\n", 30),
}


@pytest.mark.parametrize("where", list(_CUTS))
def test_a_truncated_lightgbm_file_fails_its_load_not_the_process(
    tmp_path: Path, where: str
) -> None:
    path = tmp_path / "cut.txt"
    path.write_bytes(_CUTS[where](_lightgbm_text(tmp_path)))
    spec = loadonce.ModelSpec(name="cut", artifact=path)
    refused = pytest.raises(loadonce.ModelLoadError, match="LightGBM model file is truncated")
    with refused, TestClient(loadonce.create_app([spec])):
        pass


def test_a_truncated_lightgbm_file_stops_the_cli_with_one_line(tmp_path: Path) -> None:
    path = tmp_path / "cut.txt"
    path.write_bytes(_CUTS["a tree"](_lightgbm_text(tmp_path)))
    done = run_cli(tmp_path, "serve", str(path), "--port", "0", timeout=120)
    assert done.returncode == 3, done.stderr
    [line] = [line for line in done.stderr.splitlines() if "startup failed:" in line]
    assert f"model 'cut' failed to load from {path}" in line
    assert "truncated" in line
    assert "Traceback" not in done.stderr


def test_null_is_a_missing_value_for_a_booster(tmp_path: Path) -> None:
    path = tmp_path / "churn.ubj"
    booster = _xgboost(path, "binary:logistic", BINARY)
    rows = ROWS[:3].tolist()
    rows[0][1] = None
    rows[2][0] = None
    served = served_by(loadonce.ModelSpec(name="churn", artifact=path), rows)
    expected = booster.inplace_predict(np.array(rows, dtype=float))
    np.testing.assert_allclose(served, expected, rtol=1e-6)


def test_a_file_of_another_kind_named_ubj_is_not_an_xgboost_model(tmp_path: Path) -> None:
    """A pickle named .ubj failed its load with a UnicodeDecodeError."""
    import pickle

    path = tmp_path / "model.ubj"
    path.write_bytes(pickle.dumps({"weights": [1.0, 2.0]}))
    spec = loadonce.ModelSpec(name="m", artifact=path, runtime="xgboost")
    refused = pytest.raises(loadonce.ModelLoadError, match="not an XGBoost model file")
    with refused, TestClient(loadonce.create_app([spec])):
        pass


# Labels with noise, so that early stopping stops well before the last round.
NOISY = (ROWS[:, 0] + np.random.default_rng(1).normal(size=len(ROWS)) > 0).astype(int)


@pytest.mark.parametrize(
    ("estimator", "answer"),
    [
        (xgboost.XGBClassifier, lambda model, rows: model.predict_proba(rows)[:, 1]),
        (xgboost.XGBRegressor, lambda model, rows: model.predict(rows)),
    ],
)
def test_an_xgboost_model_trained_with_early_stopping_answers_as_its_estimator(
    tmp_path: Path, estimator: Any, answer: Callable[[Any, Any], Any]
) -> None:
    """The file keeps every round and records best_iteration; XGBoost's scikit-learn
    estimators predict with the rounds up to it, and loadonce answered with all of them."""
    trained = estimator(
        n_estimators=60, learning_rate=0.5, early_stopping_rounds=2, n_jobs=1, max_depth=3
    )
    trained.fit(ROWS[:120], NOISY[:120], eval_set=[(ROWS[120:], NOISY[120:])], verbose=False)
    path = tmp_path / "stopped.json"
    trained.save_model(str(path))
    loaded = estimator()
    loaded.load_model(str(path))
    assert loaded.best_iteration + 1 < loaded.get_booster().num_boosted_rounds()
    served = served_by(loadonce.ModelSpec(name="stopped", artifact=path), ROWS[:20].tolist())
    np.testing.assert_allclose(served, answer(loaded, ROWS[:20]), rtol=1e-6)
    every_round = loaded.get_booster().inplace_predict(ROWS[:20])
    assert not np.allclose(served, every_round, rtol=1e-6)


def test_an_xgboost_booster_trained_with_early_stopping_answers_as_booster_predict(
    tmp_path: Path,
) -> None:
    """xgb.train's Booster records best_iteration too, but its own predict uses every round:
    a file it saved answers as it does, not as an estimator's would."""
    train = xgboost.DMatrix(ROWS[:120], label=NOISY[:120])
    evaluated = xgboost.DMatrix(ROWS[120:], label=NOISY[120:])
    params = {"objective": "binary:logistic", "eta": 0.5, "max_depth": 3, "nthread": 1}
    booster = xgboost.train(
        params, train, 60, evals=[(evaluated, "eval")], early_stopping_rounds=2, verbose_eval=False
    )
    assert booster.best_iteration + 1 < booster.num_boosted_rounds()
    path = tmp_path / "stopped.json"
    booster.save_model(str(path))
    loaded = xgboost.Booster(model_file=str(path))
    served = served_by(loadonce.ModelSpec(name="stopped", artifact=path), ROWS[:20].tolist())
    np.testing.assert_allclose(served, loaded.predict(xgboost.DMatrix(ROWS[:20])), rtol=1e-6)


def test_a_linear_xgboost_model_answers_as_its_estimator(tmp_path: Path) -> None:
    """A gblinear booster has no inplace_predict: it loaded, and every request failed."""
    trained = xgboost.XGBClassifier(booster="gblinear", n_estimators=8, n_jobs=1)
    trained.fit(ROWS, BINARY)
    path = tmp_path / "linear.ubj"
    trained.save_model(str(path))
    loaded = xgboost.XGBClassifier()
    loaded.load_model(str(path))
    rows = ROWS[:5].tolist()
    rows[0][2] = None  # a missing value, as for the tree boosters
    served = served_by(loadonce.ModelSpec(name="linear", artifact=path), rows)
    expected = loaded.predict_proba(np.array(rows, dtype=float))[:, 1]
    np.testing.assert_allclose(served, expected, rtol=1e-6)


def test_a_lightgbm_model_trained_with_early_stopping_answers_as_its_booster(
    tmp_path: Path,
) -> None:
    """The trained booster keeps every round and predicts with those up to its best
    iteration; LightGBM saves only those: the file answers as the booster does."""
    booster = lightgbm.train(
        {"objective": "binary", "verbose": -1, "num_threads": 1, "learning_rate": 0.5},
        lightgbm.Dataset(ROWS[:120], label=NOISY[:120]),
        60,
        valid_sets=[lightgbm.Dataset(ROWS[120:], label=NOISY[120:])],
        callbacks=[lightgbm.early_stopping(2, verbose=False)],
        keep_training_booster=True,
    )
    assert 0 < booster.best_iteration < booster.current_iteration()
    path = tmp_path / "stopped.txt"
    booster.save_model(str(path))
    served = served_by(loadonce.ModelSpec(name="stopped", artifact=path), ROWS[:20].tolist())
    np.testing.assert_allclose(served, booster.predict(ROWS[:20]), rtol=1e-9)


def _xgboost_quantiles(path: Path) -> None:
    _xgboost(path, "reg:quantileerror", ROWS[:, 0], quantile_alpha=[0.1, 0.5, 0.9])


def _xgboost_classes(path: Path) -> None:
    _xgboost(path, "multi:softprob", THREE_CLASSES, num_class=3)


def _xgboost_targets(path: Path) -> None:
    booster = xgboost.train(
        {"tree_method": "hist", "multi_strategy": "multi_output_tree", "nthread": 1},
        xgboost.DMatrix(ROWS, label=ROWS[:, :2]),
        3,
    )
    booster.save_model(str(path))


def _lightgbm_classes(path: Path) -> None:
    params = {"objective": "multiclass", "num_class": 3, "verbose": -1, "num_threads": 1}
    lightgbm.train(params, lightgbm.Dataset(ROWS, label=THREE_CLASSES), 3).save_model(str(path))


@pytest.mark.parametrize(
    ("save", "file_name", "width", "datatype"),
    [
        (_xgboost_classes, "m.json", 3, "FP32"),
        (_xgboost_quantiles, "m.json", 3, "FP32"),
        (_xgboost_targets, "m.ubj", 2, "FP32"),
        (_lightgbm_classes, "m.txt", 3, "FP64"),
    ],
)
def test_a_booster_of_several_outputs_per_example_says_so_in_its_metadata(
    tmp_path: Path, save: Callable[[Path], None], file_name: str, width: int, datatype: str
) -> None:
    """Classes, quantiles and targets: the metadata said one number per example ([-1],
    dims []) while each answer was a row of them."""
    path = tmp_path / file_name
    save(path)
    with TestClient(loadonce.create_app([loadonce.ModelSpec(name="m", artifact=path)])) as client:
        [output] = client.get("/v2/models/m").json()["outputs"]
        assert (output["shape"], output["datatype"]) == ([-1, width], datatype)
        [configured] = client.get("/v2/models/m/config").json()["output"]
        assert configured["dims"] == [width]
        assert client.get("/models/m").json()["outputs"][0]["shape"] == [None, width]
        tensor = {"name": "input", "shape": [2, 5], "datatype": "FP64"}
        answer = client.post(
            "/v2/models/m/infer", json={"inputs": [{**tensor, "data": ROWS[:2].ravel().tolist()}]}
        ).json()
        assert answer["outputs"][0]["shape"] == [2, width]
    binary = tmp_path / "binary.json"
    _xgboost(binary, "binary:logistic", BINARY)
    spec = loadonce.ModelSpec(name="one", artifact=binary)
    with TestClient(loadonce.create_app([spec])) as client:
        [output] = client.get("/v2/models/one").json()["outputs"]
        assert output["shape"] == [-1]


def _shops() -> tuple[Any, Any]:
    """A DataFrame with a pandas category column between two of numbers, and labels that
    depend on the category."""
    import pandas as pd

    rng = np.random.default_rng(3)
    frame = pd.DataFrame(
        {
            "size": rng.normal(size=120),
            "city": pd.Categorical(rng.choice(["Oslo", "Bergen", "Tromso"], 120)),
            "rent": rng.normal(size=120),
        }
    )
    labels = ((frame["size"] > 0) ^ (frame["city"] == "Oslo")).astype(int)
    return frame, labels


def _categorical_booster(kind: str, path: Path) -> Callable[[Any], Any]:
    """A booster trained on _shops() saved to its own file the way ``kind`` says; returns
    the library's own predict on a DataFrame."""
    frame, labels = _shops()
    if kind == "xgboost Booster":
        params = {"objective": "binary:logistic", "max_depth": 3, "nthread": 1}
        data = xgboost.DMatrix(frame, labels, enable_categorical=True)
        booster = xgboost.train(params, data, 5)
        booster.save_model(str(path))
        return lambda rows: booster.predict(xgboost.DMatrix(rows, enable_categorical=True))
    if kind == "XGBClassifier":
        model = xgboost.XGBClassifier(n_estimators=5, max_depth=3, enable_categorical=True)
        model.fit(frame, labels)
        model.save_model(str(path))
        return lambda rows: model.predict_proba(rows)[:, 1]
    params = {"objective": "binary", "num_leaves": 4, "min_data_in_leaf": 5, "verbose": -1}
    trained = lightgbm.train(params, lightgbm.Dataset(frame, labels), 5)
    trained.save_model(str(path))
    return trained.predict


@pytest.mark.parametrize("batching", [False, True])
@pytest.mark.parametrize(
    ("kind", "suffix"),
    [
        ("xgboost Booster", ".json"),
        ("xgboost Booster", ".ubj"),
        ("XGBClassifier", ".json"),
        ("lightgbm Booster", ".txt"),
    ],
)
def test_a_booster_file_trained_on_category_columns_takes_them_by_name(
    tmp_path: Path, kind: str, suffix: str, batching: bool
) -> None:
    """A booster file trained on a DataFrame with a pandas category column takes its
    columns by name, the category by its value, as the library's own predict on the
    DataFrame (the file records the columns and the categories); the metadata lists them.
    It took one array of numbers: the category's code, which no client knows ("Oslo" was
    refused as not a number, a code it never had answered as a missing value). A null
    category is a missing value, as in the library."""
    predict = _categorical_booster(kind, tmp_path / f"shops{suffix}")
    frame, _ = _shops()
    some = frame[:6]
    records = [
        {"size": float(s), "city": str(c), "rent": float(r)}
        for s, c, r in zip(some["size"], some["city"], some["rent"], strict=True)
    ]
    expected = predict(some)
    spec = loadonce.ModelSpec(name="shops", artifact=tmp_path / f"shops{suffix}", batching=batching)
    with TestClient(loadonce.create_app([spec])) as client:
        described = client.get("/v2/models/shops").json()["inputs"]
        assert [(t["name"], t["datatype"], t["shape"]) for t in described] == [
            ("size", "FP64", [-1]),
            ("city", "BYTES", [-1]),
            ("rent", "FP64", [-1]),
        ]
        answer = client.post("/models/shops/predict", json={"inputs": records})
        assert answer.status_code == 200, answer.text
        np.testing.assert_allclose(answer.json()["outputs"], expected, rtol=1e-6)
        tensors = [
            {"name": "size", "datatype": "FP64", "shape": [6], "data": some["size"].tolist()},
            {
                "name": "city",
                "datatype": "BYTES",
                "shape": [6],
                "data": [str(c) for c in some["city"]],
            },
            {"name": "rent", "datatype": "FP64", "shape": [6], "data": some["rent"].tolist()},
        ]
        infer = client.post("/v2/models/shops/infer", json={"inputs": tensors})
        assert infer.status_code == 200, infer.text
        np.testing.assert_allclose(infer.json()["outputs"][0]["data"], expected, rtol=1e-6)
        # A row of numbers (codes), or a number for the category: 400s that say what it takes.
        for wrong, words in (
            ([[0.5, 1, 0.1]], "several inputs (size, city, rent)"),
            ([{**records[0], "city": 1}], "city"),
        ):
            refused = client.post("/models/shops/predict", json={"inputs": wrong})
            assert refused.status_code == 400, refused.text
            assert words in refused.json()["error"]
        # A missing category (null), the only one in its call: what the library answers
        # for NaN there (XGBoost failed on a category column of no categories: a 500).
        missing = some[:1].copy()
        missing.loc[missing.index[0], "city"] = None
        answer = client.post(
            "/models/shops/predict", json={"inputs": [{**records[0], "city": None}]}
        )
        assert answer.status_code == 200, answer.text
        np.testing.assert_allclose(answer.json()["outputs"], predict(missing), rtol=1e-6)
        # An unseen category is named: LightGBM keeps its categories; XGBoost's model
        # records its texts, and failed on an unseen one (its 500, a traceback per request).
        unseen = client.post(
            "/models/shops/predict", json={"inputs": [{**records[0], "city": "Paris"}]}
        )
        assert unseen.status_code == 400
        assert "unknown value 'Paris'" in unseen.json()["error"]
        assert "Oslo" in unseen.json()["error"]
