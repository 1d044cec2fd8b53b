"""scikit-learn artifacts: served predictions equal the estimator's; pickles need trust or a pin."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any

import httpx2 as httpx
import joblib
import numpy as np
import pytest
import skops.io
from fastapi.testclient import TestClient
from sklearn.base import BaseEstimator
from sklearn.datasets import make_classification
from sklearn.ensemble import RandomForestClassifier

import loadonce
from tests.servers import ThreadedServer, serving, start_cli


@pytest.fixture(scope="module")
def forest() -> tuple[RandomForestClassifier, np.ndarray[Any, Any]]:
    features, labels = make_classification(n_samples=200, n_features=6, random_state=0)
    estimator = RandomForestClassifier(n_estimators=5, max_depth=3, random_state=0, n_jobs=1)
    return estimator.fit(features, labels), features[:20]


@pytest.fixture
def forest_joblib(tmp_path: Path, forest: tuple[RandomForestClassifier, Any]) -> Path:
    path = tmp_path / "forest.joblib"
    joblib.dump(forest[0], path)
    return path


# skops does not trust scikit-learn's tree internals by default; a user lists them, as here.
JSON_TYPE = {"Content-Type": "application/json"}
TREE_TYPES = {"trusted_types": ["sklearn.tree._tree.Tree"]}


@pytest.fixture
def forest_skops(tmp_path: Path, forest: tuple[RandomForestClassifier, Any]) -> Path:
    path = tmp_path / "forest.skops"
    skops.io.dump(forest[0], path)
    return path


def _served(spec: loadonce.ModelSpec, inputs: Any) -> Any:
    with TestClient(loadonce.create_app([spec])) as client:
        response = client.post(f"/models/{spec.name}/predict", json={"inputs": inputs})
        assert response.status_code == 200, response.text
        return response.json()["outputs"]


def test_skops_file_serves_exactly_the_estimators_predictions(
    forest_skops: Path, forest: tuple[RandomForestClassifier, np.ndarray[Any, Any]]
) -> None:
    estimator, rows = forest
    path = forest_skops
    refused = loadonce.create_app([loadonce.ModelSpec(name="forest", artifact=path)])
    with pytest.raises(loadonce.ModelLoadError, match=r"not trusted: sklearn\.tree\._tree\.Tree"):
        TestClient(refused).__enter__()
    spec = loadonce.ModelSpec(name="forest", artifact=path, options=TREE_TYPES)
    assert _served(spec, rows.tolist()) == estimator.predict(rows).tolist()


def test_a_configured_method_such_as_predict_proba(
    forest_skops: Path, forest: tuple[RandomForestClassifier, np.ndarray[Any, Any]]
) -> None:
    estimator, rows = forest
    spec = loadonce.ModelSpec(
        name="f", artifact=forest_skops, options={"method": "predict_proba", **TREE_TYPES}
    )
    assert _served(spec, rows.tolist()) == estimator.predict_proba(rows).tolist()
    with TestClient(loadonce.create_app([spec])) as client:
        info = client.get("/models/f").json()
    assert info["inputs"] == [{"name": "input", "dtype": "float64", "shape": [None, 6]}]
    # The configured method's output first (what a request that picks none gets), then the
    # classifier's other methods, which a request may pick by name.
    assert info["outputs"] == [
        {"name": "probabilities", "dtype": "float64", "shape": [None, 2]},
        {"name": "label", "dtype": "int64", "shape": [None]},
    ]


def test_one_loaded_classifier_answers_the_outputs_a_request_picks(
    forest_skops: Path, forest: tuple[RandomForestClassifier, np.ndarray[Any, Any]]
) -> None:
    """label and probabilities from one copy, on both protocols (requests that pick
    differently never share a call: the batcher keeps different parameters apart)."""
    estimator, rows = forest
    spec = loadonce.ModelSpec(
        name="f",
        artifact=forest_skops,
        options=TREE_TYPES,
        batching=loadonce.Batching(max_batch_size=64),
    )
    labels, probabilities = estimator.predict(rows), estimator.predict_proba(rows)
    with TestClient(loadonce.create_app([spec])) as client:
        described = client.get("/models/f").json()["outputs"]
        assert [output["name"] for output in described] == ["label", "probabilities"]
        both = client.post(
            "/models/f/predict",
            json={"inputs": rows.tolist(), "outputs": ["label", "probabilities"]},
        ).json()["outputs"]
        assert both == [
            {"label": int(label), "probabilities": list(p)}
            for label, p in zip(labels, probabilities, strict=True)
        ]
        plain = client.post("/models/f/predict", json={"inputs": rows.tolist()}).json()
        assert plain["outputs"] == labels.tolist()
        unknown = client.post(
            "/models/f/predict", json={"inputs": rows[0].tolist(), "outputs": ["score"]}
        )
        assert unknown.status_code == 400
        assert unknown.json()["error"] == (
            "invalid inputs: unknown output 'score'; the model's outputs are label, probabilities"
        )
        tensor = {"name": "input", "shape": list(rows.shape), "datatype": "FP64"}
        v2 = client.post(
            "/v2/models/f/infer",
            json={
                "inputs": [{**tensor, "data": rows.ravel().tolist()}],
                "outputs": [{"name": "probabilities"}],
            },
        ).json()
        assert [o["name"] for o in v2["outputs"]] == ["probabilities"]
        assert v2["outputs"][0]["shape"] == [len(rows), 2]
        np.testing.assert_allclose(np.reshape(v2["outputs"][0]["data"], (-1, 2)), probabilities)
        default = client.post(
            "/v2/models/f/infer", json={"inputs": [{**tensor, "data": rows.ravel().tolist()}]}
        ).json()
        assert [(o["name"], o["data"]) for o in default["outputs"]] == [("label", labels.tolist())]


def test_wrong_feature_count_is_400_with_the_expected_shape(forest_skops: Path) -> None:
    spec = loadonce.ModelSpec(name="forest", artifact=forest_skops, options=TREE_TYPES)
    with TestClient(loadonce.create_app([spec])) as client:
        response = client.post("/models/forest/predict", json={"inputs": [[1.0, 2.0]]})
    assert response.status_code == 400
    assert "shape [6]" in response.json()["error"]
    assert "got shape [2]" in response.json()["error"]


class Doubler(BaseEstimator):  # type: ignore[misc]
    """A custom type that a skops file cannot vouch for."""

    n_features_in_ = 1

    def predict(self, rows: Any) -> Any:
        return np.asarray(rows)[:, 0] * 2


def test_skops_with_untrusted_types_is_refused_listing_them(tmp_path: Path) -> None:
    path = tmp_path / "doubler.skops"
    skops.io.dump(Doubler(), path)
    refused = loadonce.create_app([loadonce.ModelSpec(name="d", artifact=path)])
    with pytest.raises(
        loadonce.ModelLoadError, match=r"not trusted: tests\.test_sklearn_runtime\.Doubler"
    ):
        TestClient(refused).__enter__()
    trusted = loadonce.ModelSpec(
        name="d",
        artifact=path,
        options={"trusted_types": ["tests.test_sklearn_runtime.Doubler"]},
    )
    assert _served(trusted, [[1.5], [2.0]]) == [3.0, 4.0]


def test_joblib_is_refused_without_trust_or_pin_and_the_message_says_how(
    forest_joblib: Path, forest: tuple[RandomForestClassifier, np.ndarray[Any, Any]]
) -> None:
    estimator, rows = forest
    path = forest_joblib
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    app = loadonce.create_app([loadonce.ModelSpec(name="forest", artifact=path)])
    with pytest.raises(loadonce.ModelLoadError) as refused:
        TestClient(app).__enter__()
    message = str(refused.value)
    assert "refusing to unpickle" in message
    assert f'sha256 = "{digest}"' in message
    assert "--trust" in message

    expected = estimator.predict(rows).tolist()
    trusted = loadonce.ModelSpec(name="forest", artifact=path, trust=True)
    assert _served(trusted, rows.tolist()) == expected
    pinned = loadonce.ModelSpec(name="forest", artifact=path, sha256=digest)
    assert _served(pinned, rows.tolist()) == expected


def test_a_pin_that_does_not_match_refuses_the_load(forest_joblib: Path) -> None:
    wrong = "0" * 64
    spec = loadonce.ModelSpec(name="forest", artifact=forest_joblib, sha256=wrong)
    app = loadonce.create_app([spec])
    with pytest.raises(loadonce.ModelLoadError, match="sha256 mismatch"):
        TestClient(app).__enter__()


def test_cli_serves_an_artifact_and_trust_is_explicit(
    tmp_path: Path,
    forest_joblib: Path,
    forest: tuple[RandomForestClassifier, np.ndarray[Any, Any]],
) -> None:
    estimator, rows = forest
    with serving([str(forest_joblib), "--trust"], tmp_path) as server:
        response = httpx.post(
            f"{server.url}/models/forest/predict", json={"inputs": rows[:3].tolist()}
        )
        assert response.json()["outputs"] == estimator.predict(rows[:3]).tolist()


def test_cli_refuses_an_untrusted_pickle_at_startup(tmp_path: Path, forest_joblib: Path) -> None:
    path = forest_joblib
    server = start_cli([str(path)], tmp_path)
    assert server.process.wait(timeout=60) == 3
    assert f"model 'forest' failed to load from {path}" in server.log()
    assert "refusing to unpickle" in server.log()


def test_null_is_a_missing_value_for_a_model_that_takes_them(tmp_path: Path) -> None:
    """JSON has no NaN: null among a float input's numbers is NaN where the model treats NaN
    as missing (an imputer first in a pipeline, a histogram booster), and still a 400 where
    it does not. The pipeline's own tag said no, so NaN was refused even before an imputer."""
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    rows, labels = make_classification(n_samples=60, n_features=4, random_state=0)
    rows[::7, 1] = np.nan
    sent = [[0.5, None, -1.0, 2.0], [None, 1.0, 0.0, None]]
    as_nan = np.array(sent, dtype=float)
    models = {
        "imputed": make_pipeline(SimpleImputer(), LogisticRegression()).fit(rows, labels),
        "boosted": HistGradientBoostingClassifier(max_iter=5).fit(rows, labels),
    }
    specs = []
    for name, model in models.items():
        path = tmp_path / f"{name}.joblib"
        joblib.dump(model, path)
        specs.append(loadonce.ModelSpec(name=name, artifact=path, trust=True))
    plain = LogisticRegression().fit(np.nan_to_num(rows), labels)
    joblib.dump(plain, tmp_path / "plain.joblib")
    specs.append(loadonce.ModelSpec(name="plain", artifact=tmp_path / "plain.joblib", trust=True))
    with TestClient(loadonce.create_app(specs)) as client:
        for name, model in models.items():
            answer = client.post(f"/models/{name}/predict", json={"inputs": sent})
            assert answer.status_code == 200, answer.text
            assert answer.json()["outputs"] == model.predict(as_nan).tolist()
        refused = client.post("/models/plain/predict", json={"inputs": sent})
        assert refused.status_code == 400
        text = client.post("/models/boosted/predict", json={"inputs": [[None, "a", 1, 2]]})
        assert text.status_code == 400


@pytest.mark.parametrize("value", [1e39, -1e308, math.inf])
@pytest.mark.parametrize("nan_beside", [False, True], ids=["alone", "a NaN beside it"])
def test_a_number_past_float32_is_a_400_for_trees(
    forest_skops: Path,
    forest: tuple[RandomForestClassifier, Any],
    value: float,
    nan_beside: bool,
) -> None:
    """scikit-learn's trees compute in float32 and refuse what it cannot hold: the client's
    number is a 400 saying so (it was the model's 500), on both routes; its neighbours in
    range are answered. A NaN beside it (a forest takes missing values) hid it: the
    batch's maximum was NaN."""
    spec = loadonce.ModelSpec(name="f", artifact=forest_skops, options=TREE_TYPES)
    row = [1.0, value, math.nan if nan_beside else 0.0, 0.0, 0.0, 0.0]
    with TestClient(loadonce.create_app([spec])) as client:

        def post(path: str, body: dict[str, Any]) -> Any:  # NaN and Infinity as JSON writes them
            return client.post(path, content=json.dumps(body), headers=JSON_TYPE)

        refused = post("/models/f/predict", {"inputs": [row]})
        assert refused.status_code == 400, refused.text
        assert "outside the range of float32" in refused.json()["error"]
        tensor = {"name": "input", "datatype": "FP64", "shape": [1, 6], "data": row}
        infer = post("/v2/models/f/infer", {"inputs": [tensor]})
        assert infer.status_code == 400, infer.text
        fine = forest[1][:1].tolist()
        answered = client.post("/models/f/predict", json={"inputs": fine})
        assert answered.json()["outputs"] == forest[0].predict(forest[1][:1]).tolist()


def _text_and_category_models(tmp_path: Path) -> dict[str, tuple[Path, Any, list[Any]]]:
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder

    texts = ["good film", "bad film", "great plot", "awful plot"]
    reviews = make_pipeline(TfidfVectorizer(), LogisticRegression()).fit(texts, [1, 0, 1, 0])
    colors = np.array([["red", "s"], ["blue", "m"], ["red", "m"], ["green", "s"]])
    encoded = make_pipeline(OneHotEncoder(), LogisticRegression()).fit(colors, [1, 0, 1, 0])
    imputed = make_pipeline(
        SimpleImputer(strategy="most_frequent"), OneHotEncoder(), LogisticRegression()
    ).fit(colors.astype(object), [1, 0, 1, 0])
    models = {
        "reviews": (reviews, ["good plot", "bad film"]),
        "colors": (encoded, colors[:2]),
        "imputed": (imputed, colors[:2]),
    }
    found = {}
    for name, (model, rows) in models.items():
        path = tmp_path / f"{name}.joblib"
        joblib.dump(model, path)
        found[name] = (path, model, np.asarray(rows).tolist())
    return found


def test_models_fitted_on_text_take_text_and_refuse_numbers(tmp_path: Path) -> None:
    """A pipeline beginning with a text vectorizer takes one text per example; one whose
    encoder was fitted on an array of strings takes rows of text. Each answers as the model
    does, and numbers are a 400 (a 500 from inside the vectorizer before; strings to the
    encoder's pipeline were refused as "must be numbers", and numbers were its 500)."""
    models = _text_and_category_models(tmp_path)
    specs = [
        loadonce.ModelSpec(name=name, artifact=path, trust=True)
        for name, (path, _, _) in models.items()
    ]
    with TestClient(loadonce.create_app(specs)) as client:
        for name, (_, model, rows) in models.items():
            answer = client.post(f"/models/{name}/predict", json={"inputs": rows})
            assert answer.status_code == 200, answer.text
            assert answer.json()["outputs"] == model.predict(np.asarray(rows)).tolist()
            numbers = np.zeros(np.shape(rows)).tolist()
            refused = client.post(f"/models/{name}/predict", json={"inputs": numbers})
            assert refused.status_code == 400, refused.text
            assert "strings" in refused.json()["error"]
            [described] = client.get(f"/v2/models/{name}").json()["inputs"]
            assert described["datatype"] == "BYTES"
            shape = [len(rows), *np.shape(rows)[1:]]
            flat = np.asarray(rows).ravel().tolist()
            tensor = {"name": described["name"], "datatype": "BYTES", "shape": shape}
            infer = client.post(
                f"/v2/models/{name}/infer", json={"inputs": [{**tensor, "data": flat}]}
            )
            assert infer.status_code == 200, infer.text


def test_a_truncated_joblib_file_says_so(tmp_path: Path) -> None:
    """Its mapped arrays ran past the file's end: 'mmap length is greater than file size'."""
    from sklearn.linear_model import LinearRegression

    rows = np.random.default_rng(0).random((200, 50))
    model = LinearRegression().fit(rows, rows[:, 0])
    model.extra = rows.ravel()  # an array large enough to be written apart, then mapped
    joblib.dump(model, tmp_path / "whole.joblib")
    whole = (tmp_path / "whole.joblib").read_bytes()
    (tmp_path / "cut.joblib").write_bytes(whole[: len(whole) // 2])
    spec = loadonce.ModelSpec(name="m", artifact=tmp_path / "cut.joblib", trust=True)
    refused = pytest.raises(loadonce.ModelLoadError, match="the joblib file is truncated")
    with refused, TestClient(loadonce.create_app([spec])):
        pass


ROWS_OF_TEXT_AND_NUMBERS = np.array(
    [["red", 1.0], ["blue", 2.0], ["green", 3.0], ["red", 4.0]] * 5, dtype=object
)


def _models_of_text_and_numbers() -> dict[str, Any]:
    """Pipelines fitted on an object array of [text, number] rows, whose encoder of the text
    column is nested in each of the ways scikit-learn lets one nest it."""
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline, make_union
    from sklearn.preprocessing import OneHotEncoder, OrdinalEncoder, StandardScaler

    def imputed(encoder: Any) -> Any:
        return make_pipeline(SimpleImputer(strategy="most_frequent"), encoder)

    color, number = [0], [1]
    layouts = {
        "direct": ColumnTransformer([("c", OneHotEncoder(), color)], remainder="passthrough"),
        "imputed": ColumnTransformer(
            [("c", imputed(OneHotEncoder()), color), ("n", "passthrough", number)]
        ),
        "nested": make_pipeline(
            ColumnTransformer(
                [
                    ("c", make_pipeline(imputed(OrdinalEncoder())), color),
                    ("n", SimpleImputer(), number),
                ]
            )
        ),
        "union": make_union(
            ColumnTransformer([("c", imputed(OneHotEncoder()), color)]),
            ColumnTransformer([("n", StandardScaler(), number)]),
        ),
        "inner": ColumnTransformer(
            [
                (
                    "all",
                    ColumnTransformer(
                        [("c", imputed(OneHotEncoder()), color)], remainder="passthrough"
                    ),
                    [0, 1],
                )
            ]
        ),
    }
    labels = [0, 1, 1, 0] * 5
    return {
        name: make_pipeline(layout, LogisticRegression()).fit(ROWS_OF_TEXT_AND_NUMBERS, labels)
        for name, layout in layouts.items()
    }


@pytest.fixture(scope="module")
def text_and_numbers(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Any]]:
    directory = tmp_path_factory.mktemp("mixed")
    found = {}
    for name, model in _models_of_text_and_numbers().items():
        skops.io.dump(model, directory / f"{name}.skops")
        found[name] = (directory / f"{name}.skops", model)
    return found


def _text_and_numbers_specs(models: dict[str, tuple[Path, Any]]) -> list[loadonce.ModelSpec]:
    trusted = {"trusted_types": ["numpy.dtype"]}
    return [
        loadonce.ModelSpec(name=name, artifact=path, options=trusted)
        for name, (path, _) in models.items()
    ]


def test_rows_of_text_and_numbers_reach_the_encoder_however_it_is_nested(
    text_and_numbers: dict[str, tuple[Path, Any]],
) -> None:
    """Behind an imputer, its text column was declared a number: every row was a 400 ("must
    be numbers"); the Open Inference Protocol described no input, and a BYTES row reached the
    model as bytes (its 500, "unknown categories [b'blue']"). Each layout now takes a row of
    text and numbers on both protocols, as the model does in process."""
    rows = [["blue", 2.0], ["red", 4], ["green", 1.5]]
    text_rows = [[color, str(value)] for color, value in rows]
    with TestClient(loadonce.create_app(_text_and_numbers_specs(text_and_numbers))) as client:
        for name, (_, model) in text_and_numbers.items():
            expected = model.predict(np.array(rows, dtype=object)).tolist()
            answer = client.post(f"/models/{name}/predict", json={"inputs": rows})
            assert answer.status_code == 200, (name, answer.text)
            assert answer.json()["outputs"] == expected
            [described] = client.get(f"/models/{name}").json()["inputs"]
            assert described == {"name": "input", "dtype": "object", "shape": [None, 2]}
            [metadata] = client.get(f"/v2/models/{name}").json()["inputs"]
            assert metadata == {"name": "input", "datatype": "BYTES", "shape": [-1, 2]}
            tensor = {"name": "input", "datatype": "BYTES", "shape": [3, 2], "data": text_rows}
            infer = client.post(f"/v2/models/{name}/infer", json={"inputs": [tensor]})
            assert infer.status_code == 200, (name, infer.text)
            assert infer.json()["outputs"][0]["data"] == expected


@pytest.mark.parametrize(
    ("row", "words"),
    [
        (["purple", 2.0], ["column 0", "unknown value 'purple'", "blue, green, red"]),
        (["red", "many"], ["column 1", "number", "'many'"]),
        ([3, 2.0], ["column 0", "text"]),
        (["red", True], ["column 1", "number"]),
        # float() reads these as 10 and 12: no JSON number is written so.
        (["red", "1_0"], ["column 1", "number", "'1_0'"]),
        (["red", "\u0661\u0662"], ["column 1", "number", "'\u0661\u0662'"]),
        (["red", " 2"], ["column 1", "number", "' 2'"]),
        (["red"], ["2", "text, number"]),
    ],
)
def test_a_row_of_text_and_numbers_the_model_cannot_take_is_a_400_naming_the_column(
    text_and_numbers: dict[str, tuple[Path, Any]], row: list[Any], words: list[str]
) -> None:
    """An unseen category was the model's 500 ("Found unknown categories"), on every route."""
    with TestClient(loadonce.create_app(_text_and_numbers_specs(text_and_numbers))) as client:
        for name in text_and_numbers:
            refused = client.post(f"/models/{name}/predict", json={"inputs": [row]})
            assert refused.status_code == 400, (name, refused.text)
            for word in words:
                assert word in refused.json()["error"]
            if len(row) == 2 and all(isinstance(value, str | float) for value in row):
                tensor = {"name": "input", "datatype": "BYTES", "shape": [1, 2]}
                data = [str(value) for value in row]
                refused = client.post(
                    f"/v2/models/{name}/infer", json={"inputs": [{**tensor, "data": data}]}
                )
                assert refused.status_code == 400, (name, refused.text)
                assert words[0] in refused.json()["error"]
                assert words[2] in refused.json()["error"]


@pytest.mark.parametrize("handle_unknown", ["error", "ignore"])
def test_an_integer_column_of_an_object_array_takes_its_numbers(
    tmp_path: Path, handle_unknown: str
) -> None:
    """An encoder fitted on an object array whose first column holds Python ints (a zip code
    beside a colour) learnt an object array of ints. It was taken for text: the model's own
    numbers were a 400 "expected strings", and their text an unknown category (a 400 "unknown
    value '1'; the model knows 1, 2, 3", or with handle_unknown="ignore" a silently other
    answer). The column now takes numbers (and their text, as /v2 BYTES carries them), which
    reach the encoder as the Python ints it learnt."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder

    rows = np.array([[1, "a"], [2, "b"], [3, "a"], [1, "b"], [2, "a"], [3, "b"]], dtype=object)
    model = make_pipeline(OneHotEncoder(handle_unknown=handle_unknown), LogisticRegression())
    model.fit(rows, [0, 1, 1, 1, 0, 0])
    joblib.dump(model, tmp_path / "zips.joblib")
    spec = loadonce.ModelSpec(name="zips", artifact=tmp_path / "zips.joblib", trust=True)
    sent = [[1, "a"], [3, "b"], [2, "b"]]
    expected = model.predict(np.array(sent, dtype=object)).tolist()
    with TestClient(loadonce.create_app([spec])) as client:
        answer = client.post("/models/zips/predict", json={"inputs": sent})
        assert answer.status_code == 200, answer.text
        assert answer.json()["outputs"] == expected
        as_text = [[str(zip_code), letter] for zip_code, letter in sent]
        answer = client.post("/models/zips/predict", json={"inputs": as_text})
        assert answer.json()["outputs"] == expected
        tensor = {"name": "input", "datatype": "BYTES", "shape": [3, 2], "data": as_text}
        infer = client.post("/v2/models/zips/infer", json={"inputs": [tensor]})
        assert infer.status_code == 200, infer.text
        assert infer.json()["outputs"][0]["data"] == expected
        unseen = client.post("/models/zips/predict", json={"inputs": [[9, "a"]]})
        if handle_unknown == "error":
            assert unseen.status_code == 400
            assert "column 0: unknown value '9'" in unseen.json()["error"]
        else:
            unknown = model.predict(np.array([[9, "a"]], dtype=object)).tolist()
            assert unseen.json()["outputs"] == unknown


def test_missing_values_reach_a_booster_behind_a_passthrough_remainder(tmp_path: Path) -> None:
    """scikit-learn keeps remainder="passthrough" as an identity FunctionTransformer, whose
    tags say it takes no NaN: null and "nan" in the number column of a histogram booster's
    rows were a 400 "does not accept a missing value", though the model predicts from NaN
    (and infinity). They now reach it, on both protocols."""
    from sklearn.compose import ColumnTransformer
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OrdinalEncoder

    def encoded() -> ColumnTransformer:
        return ColumnTransformer([("c", OrdinalEncoder(), [0])], remainder="passthrough")

    rows = np.array([["a", 1.0], ["b", 2.0], ["a", np.nan], ["b", 4.0]] * 5, dtype=object)
    labels = [0, 1, 1, 0] * 5
    booster = HistGradientBoostingClassifier(max_iter=5, min_samples_leaf=1)
    model = make_pipeline(encoded(), booster).fit(rows, labels)
    joblib.dump(model, tmp_path / "boosted.joblib")
    # The same columns into a model that takes no missing value: still refused.
    finite = np.array([["a", 1.0], ["b", 2.0], ["a", 3.0], ["b", 4.0]] * 5, dtype=object)
    linear = make_pipeline(encoded(), LogisticRegression()).fit(finite, labels)
    joblib.dump(linear, tmp_path / "linear.joblib")
    specs = [
        loadonce.ModelSpec(name=name, artifact=tmp_path / f"{name}.joblib", trust=True)
        for name in ("boosted", "linear")
    ]
    sent = [["a", None], ["b", "nan"], ["a", math.inf], ["b", 2.0]]
    values = [["a", np.nan], ["b", np.nan], ["a", np.inf], ["b", 2.0]]
    expected = model.predict(np.array(values, dtype=object)).tolist()
    with TestClient(loadonce.create_app(specs)) as client:
        answer = client.post("/models/boosted/predict", content=json.dumps({"inputs": sent}))
        assert answer.status_code == 200, answer.text
        assert answer.json()["outputs"] == expected
        text = [["a", "NaN"], ["b", "nan"], ["a", "Infinity"], ["b", "2.0"]]
        tensor = {"name": "input", "datatype": "BYTES", "shape": [4, 2], "data": text}
        infer = client.post("/v2/models/boosted/infer", json={"inputs": [tensor]})
        assert infer.status_code == 200, infer.text
        assert infer.json()["outputs"][0]["data"] == expected
        refused = client.post("/models/linear/predict", json={"inputs": [["a", None]]})
        assert refused.status_code == 400
        assert "column 1" in refused.json()["error"]


def test_tritonclient_sends_rows_of_text_and_numbers_as_bytes(
    text_and_numbers: dict[str, tuple[Path, Any]],
) -> None:
    import tritonclient.http as triton

    rows = np.array([["blue", "2.0"], ["red", "4"]], dtype=object)
    _, model = text_and_numbers["imputed"]
    expected = model.predict(np.array([["blue", 2.0], ["red", 4.0]], dtype=object)).tolist()
    specs = _text_and_numbers_specs({"imputed": text_and_numbers["imputed"]})
    with ThreadedServer(loadonce.create_app(specs)) as server:
        connection = triton.InferenceServerClient(server.url.removeprefix("http://"))
        try:
            for binary in (True, False):
                tensor = triton.InferInput("input", [2, 2], "BYTES")
                tensor.set_data_from_numpy(rows, binary_data=binary)
                result = connection.infer("imputed", [tensor])
                assert result.as_numpy("label").tolist() == expected
            # Text that is not UTF-8 is the client's mistake.
            tensor = triton.InferInput("input", [1, 2], "BYTES")
            tensor.set_data_from_numpy(np.array([[b"\xffred", b"2"]], dtype=object))
            with pytest.raises(triton.InferenceServerException, match="not UTF-8"):
                connection.infer("imputed", [tensor])
        finally:
            connection.close()


def test_a_classifier_of_several_outputs_answers_each_row_its_probabilities(
    tmp_path: Path,
) -> None:
    """Fitted on two target columns, predict_proba answers a list of one array per output,
    each of every row: it was handed out as one entry per row (each row got one output's
    probabilities for every row; one row alone was a 500; with batching, other requests'
    rows). Each row now gets its list of per-output probabilities, as the model computes."""
    features = np.random.RandomState(0).rand(60, 4)
    targets = np.stack([(features[:, 0] > 0.5), (features[:, 1] * 3).astype(int)], axis=1)
    forest = RandomForestClassifier(n_estimators=5, random_state=0).fit(features, targets)
    joblib.dump(forest, tmp_path / "two_outputs.joblib")
    rows = [[0.1, 0.2, 0.3, 0.4], [0.9, 0.9, 0.9, 0.9], [0.6, 0.1, 0.5, 0.5]]
    computed = forest.predict_proba(np.array(rows))
    expected = [[output[row].tolist() for output in computed] for row in range(len(rows))]
    spec = loadonce.ModelSpec(
        name="m",
        artifact=tmp_path / "two_outputs.joblib",
        trust=True,
        options={"method": "predict_proba"},
        batching={"max_batch_size": 8},
    )
    with TestClient(loadonce.create_app([spec])) as client:
        answered = client.post("/models/m/predict", json={"inputs": rows})
        assert answered.json()["outputs"] == expected
        alone = client.post("/models/m/predict", json={"inputs": rows[1:2]})
        assert alone.json()["outputs"] == expected[1:2]


def test_a_model_whose_methods_need_writable_arrays_loads_its_own_copy(tmp_path: Path) -> None:
    """libsvm's predict_proba refuses read-only arrays, which a shared (mapped) joblib file
    gives: every request for an SVC's probabilities was a 500 ("buffer source array is
    read-only"), listed outputs and all. Such a model now loads as the worker's own copy."""
    from sklearn.datasets import load_iris
    from sklearn.svm import SVC

    features, labels = load_iris(return_X_y=True)
    with pytest.warns(FutureWarning):  # scikit-learn 1.9 deprecates probability=True
        svc = SVC(probability=True, random_state=0).fit(features, labels)
    joblib.dump(svc, tmp_path / "svc.joblib")
    spec = loadonce.ModelSpec(name="svc", artifact=tmp_path / "svc.joblib", trust=True)
    with TestClient(loadonce.create_app([spec])) as client:
        answer = client.post(
            "/models/svc/predict",
            json={"inputs": [features[0].tolist()], "outputs": ["probabilities"]},
        )
        assert answer.status_code == 200, answer.text
        expected = svc.predict_proba(features[:1])[0]
        np.testing.assert_allclose(answer.json()["outputs"][0]["probabilities"], expected)


def _fitted_transformers() -> dict[str, tuple[Any, list[Any]]]:
    """Transformers users serve as the model (no predict), each with the examples sent."""
    from sklearn.decomposition import PCA
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    rows = np.random.default_rng(0).normal(size=(20, 3))
    cities = np.array([["Oslo", "a"], ["Bergen", "b"], ["Oslo", "b"]], dtype=object)
    return {
        "scaler": (StandardScaler().fit(rows), rows[:3].tolist()),
        "pca": (PCA(2).fit(rows), rows[:3].tolist()),
        "scaler then pca": (make_pipeline(StandardScaler(), PCA(2)).fit(rows), rows[:3].tolist()),
        "one-hot": (OneHotEncoder().fit(cities), cities.tolist()),
        "tf-idf": (TfidfVectorizer().fit(["a fine day", "a day"]), ["fine day", "a"]),
    }


@pytest.mark.parametrize("batching", [False, True])
@pytest.mark.parametrize("kind", list(_fitted_transformers()))
def test_a_transformer_without_predict_serves_its_transform(
    tmp_path: Path, kind: str, batching: bool
) -> None:
    """A fitted scaler, PCA, encoder or vectorizer saved as the model answers its
    ``transform`` with no option (its load failed: "has no method 'predict'"); a sparse
    result arrives as its dense rows."""
    estimator, examples = _fitted_transformers()[kind]
    path = tmp_path / "transformer.joblib"
    joblib.dump(estimator, path)
    spec = loadonce.ModelSpec(name="t", artifact=path, trust=True, batching=batching)
    expected = estimator.transform(examples if kind == "tf-idf" else np.array(examples))
    expected = expected.toarray() if hasattr(expected, "toarray") else expected
    np.testing.assert_allclose(_served(spec, examples), expected)


def test_a_method_the_estimator_lacks_fails_the_load_naming_those_it_has(tmp_path: Path) -> None:
    from sklearn.cluster import KMeans

    path = tmp_path / "clusters.joblib"
    joblib.dump(KMeans(2, n_init=1, random_state=0).fit(np.eye(4)), path)
    spec = loadonce.ModelSpec(
        name="k", artifact=path, trust=True, options={"method": "predict_proba"}
    )
    with pytest.raises(loadonce.ModelLoadError) as refused:
        TestClient(loadonce.create_app([spec])).__enter__()
    assert "KMeans has no method 'predict_proba'" in str(refused.value)
    assert "options.method" in str(refused.value)
    assert "among predict, transform" in str(refused.value)
