"""Models fitted on a pandas DataFrame: each column a named input, on both protocols.

A real scikit-learn pipeline (a ColumnTransformer one-hot encoding a text column and scaling
two numeric ones, then a classifier), saved with skops and joblib, served through
``create_app``; answers are compared with the pipeline's own on the same DataFrame.
"""

from __future__ import annotations

import asyncio
import importlib.abc
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2 as httpx
import joblib
import numpy as np
import pandas as pd
import pytest
import skops.io
import tritonclient.http as triton
from fastapi.testclient import TestClient
from sklearn.base import clone
from sklearn.compose import ColumnTransformer
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import (
    OneHotEncoder,
    OrdinalEncoder,
    StandardScaler,
    TargetEncoder,
)

import loadonce
from tests.servers import ThreadedServer, serving

TRAINING = pd.DataFrame(
    {
        "age": [23, 35, 47, 52, 29, 61, 44, 38],
        "city": ["Oslo", "Bergen", "Oslo", "Tromso", "Bergen", "Oslo", "Tromso", "Bergen"],
        "income": [31.0, 52.5, 61.0, 75.0, 40.0, 82.5, 58.0, 49.0],
    }
)
LABELS = ["no", "yes", "no", "yes", "no", "yes", "yes", "no"]
ROWS = [
    {"age": 31, "city": "Oslo", "income": 45.5},
    {"age": 58, "city": "Tromso", "income": 70.0},
    {"age": 40, "city": "Bergen", "income": 39.0},
]
COLUMNS = {name: [row[name] for row in ROWS] for name in ("age", "city", "income")}
FRAME = pd.DataFrame(ROWS)


def _pipeline(handle_unknown: str) -> Pipeline:
    encode = ColumnTransformer(
        [
            ("city", OneHotEncoder(handle_unknown=handle_unknown), ["city"]),
            ("numbers", StandardScaler(), ["age", "income"]),
        ]
    )
    return Pipeline([("encode", encode), ("classify", LogisticRegression())]).fit(TRAINING, LABELS)


@pytest.fixture(scope="module")
def pipeline() -> Pipeline:
    return _pipeline("error")


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory, pipeline: Pipeline) -> dict[str, Path]:
    directory = tmp_path_factory.mktemp("columns")
    skops_path, joblib_path = directory / "people.skops", directory / "people.joblib"
    skops.io.dump(pipeline, skops_path)
    joblib.dump(pipeline, joblib_path)
    lenient = directory / "lenient.skops"
    skops.io.dump(_pipeline("ignore"), lenient)
    return {"skops": skops_path, "joblib": joblib_path, "lenient": lenient}


def _specs(artifacts: dict[str, Path]) -> list[loadonce.ModelSpec]:
    return [
        loadonce.ModelSpec(name="people", artifact=artifacts["skops"]),
        loadonce.ModelSpec(name="pickled", artifact=artifacts["joblib"], trust=True),
        loadonce.ModelSpec(name="lenient", artifact=artifacts["lenient"]),
        loadonce.ModelSpec(
            name="batched",
            artifact=artifacts["skops"],
            batching=loadonce.Batching(max_batch_size=16, max_wait_ms=300),
        ),
    ]


@pytest.fixture(scope="module")
def client(artifacts: dict[str, Path]) -> Iterator[TestClient]:
    with TestClient(loadonce.create_app(_specs(artifacts))) as connected:
        yield connected


@pytest.fixture(scope="module")
def server(artifacts: dict[str, Path]) -> Iterator[ThreadedServer]:
    with ThreadedServer(loadonce.create_app(_specs(artifacts))) as running:
        yield running


def _predict(client: TestClient, body: dict[str, Any], model: str = "people") -> Any:
    response = client.post(f"/models/{model}/predict", json=body)
    assert response.status_code == 200, response.text
    return response.json()["outputs"]


def _refusal(client: TestClient, body: dict[str, Any]) -> str:
    response = client.post("/models/people/predict", json=body)
    assert response.status_code == 400, response.text
    message: str = response.json()["error"]
    assert "Traceback" not in message
    return message


# The JSON route


@pytest.mark.parametrize("model", ["people", "pickled"])
def test_records_and_columns_answer_as_the_pipeline_does(
    client: TestClient, pipeline: Pipeline, model: str
) -> None:
    expected = pipeline.predict(FRAME).tolist()
    assert _predict(client, {"inputs": ROWS}, model) == expected
    assert _predict(client, {"inputs": COLUMNS}, model) == expected
    # One record is one example.
    assert _predict(client, {"inputs": ROWS[1]}, model) == expected[1:2]


def test_records_in_any_key_order_reach_the_model_in_the_fitted_order(
    client: TestClient, pipeline: Pipeline
) -> None:
    shuffled = [{"income": r["income"], "city": r["city"], "age": r["age"]} for r in ROWS]
    assert _predict(client, {"inputs": shuffled}) == pipeline.predict(FRAME).tolist()


def test_picked_outputs_work_on_columns(client: TestClient, pipeline: Pipeline) -> None:
    outputs = _predict(client, {"inputs": COLUMNS, "outputs": ["label", "probabilities"]})
    assert [o["label"] for o in outputs] == pipeline.predict(FRAME).tolist()
    np.testing.assert_allclose([o["probabilities"] for o in outputs], pipeline.predict_proba(FRAME))


def test_the_model_describes_its_columns(client: TestClient) -> None:
    described = client.get("/models/people").json()
    assert described["inputs"] == [
        {"name": "age", "dtype": "float64", "shape": [None]},
        {"name": "city", "dtype": "string", "shape": [None]},
        {"name": "income", "dtype": "float64", "shape": [None]},
    ]
    # The old description, an array of three numbers, could be answered by nothing.
    assert described["input_shape"] is None
    metadata = client.get("/v2/models/people").json()
    assert metadata["inputs"] == [
        {"name": "age", "datatype": "FP64", "shape": [-1]},
        {"name": "city", "datatype": "BYTES", "shape": [-1]},
        {"name": "income", "datatype": "FP64", "shape": [-1]},
    ]


def test_the_operators_declaration_wins(artifacts: dict[str, Path], pipeline: Pipeline) -> None:
    declared = {"columns": {"age": "int64", "income": "float64"}}
    spec = loadonce.ModelSpec(name="declared", artifact=artifacts["skops"], options=declared)
    with TestClient(loadonce.create_app([spec])) as client:
        inputs = client.get("/models/declared").json()["inputs"]
        assert [(i["name"], i["dtype"]) for i in inputs] == [
            ("age", "int64"),
            ("city", "string"),
            ("income", "float64"),
        ]
        expected = pipeline.predict(FRAME).tolist()
        assert _predict(client, {"inputs": ROWS}, "declared") == expected
        response = client.post(
            "/models/declared/predict", json={"inputs": [{**ROWS[0], "age": 31.5}]}
        )
        assert response.status_code == 400
        assert "'age'" in response.json()["error"]
        assert "integers" in response.json()["error"]
        # Declared numbers take no booleans (an assumed column does: below).
        response = client.post(
            "/models/declared/predict", json={"inputs": [{**ROWS[0], "income": True}]}
        )
        assert response.status_code == 400
        assert "'income'" in response.json()["error"]
        assert "numbers" in response.json()["error"]


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ({"inputs": [{"age": 31, "city": "Oslo"}]}, ["missing", "income"]),
        ({"inputs": {"age": [31], "city": ["Oslo"]}}, ["missing", "income"]),
        ({"inputs": [{**ROWS[0], "height": 180}]}, ["unknown", "height"]),
        ({"inputs": {**COLUMNS, "height": [1, 2, 3]}}, ["unknown", "height"]),
        ({"inputs": [{**ROWS[0], "age": "old"}]}, ["'age'", "numbers"]),
        ({"inputs": {**COLUMNS, "age": ["a", "b", "c"]}}, ["'age'", "numbers"]),
        ({"inputs": [{**ROWS[0], "city": 7}]}, ["'city'", "strings"]),
        ({"inputs": [{**ROWS[0], "income": None}]}, ["'income'", "null"]),
        ({"inputs": [{**ROWS[0], "income": [True, 1.0]}]}, ["'income'", "shape"]),
        ({"inputs": [{**ROWS[0], "income": [1.0, 2.0]}]}, ["'income'", "shape"]),
        ({"inputs": [{**ROWS[0], "city": "Paris"}]}, ["'city'", "unknown value 'Paris'", "Oslo"]),
        ({"inputs": {**COLUMNS, "age": [31, 58]}}, ["differ in length", "'age' 2", "'city' 3"]),
        ({"inputs": {"age": [], "city": [], "income": []}}, ["empty"]),
        ({"inputs": []}, ["empty"]),
        ({"inputs": [1, 2, 3]}, ["object", "age, city, income"]),
        ({"inputs": [[31, "Oslo", 45.5]]}, ["object", "age, city, income"]),
    ],
)
def test_client_mistakes_are_400_naming_the_column(
    client: TestClient, body: dict[str, Any], words: list[str]
) -> None:
    message = _refusal(client, body)
    for word in words:
        assert word in message


def test_an_unseen_category_reaches_a_model_that_ignores_unknowns(client: TestClient) -> None:
    assert len(_predict(client, {"inputs": [{**ROWS[0], "city": "Paris"}]}, "lenient")) == 1


# The Open Inference Protocol


def _v2_inputs(ages: Any = COLUMNS["age"], **changes: Any) -> list[dict[str, Any]]:
    tensors = {
        "age": {"name": "age", "datatype": "FP64", "shape": [len(ages)], "data": ages},
        "city": {"name": "city", "datatype": "BYTES", "shape": [3], "data": COLUMNS["city"]},
        "income": {"name": "income", "datatype": "FP64", "shape": [3], "data": COLUMNS["income"]},
    }
    for name, change in changes.items():
        if change is None:
            del tensors[name]
        else:
            tensors[name] = {**tensors.get(name, {"name": name}), **change}
    return list(tensors.values())


def test_v2_one_tensor_per_column(client: TestClient, pipeline: Pipeline) -> None:
    body = {"inputs": _v2_inputs(), "outputs": [{"name": "probabilities"}]}
    response = client.post("/v2/models/people/infer", json=body)
    assert response.status_code == 200, response.text
    [probabilities] = response.json()["outputs"]
    np.testing.assert_allclose(
        np.reshape(probabilities["data"], probabilities["shape"]), pipeline.predict_proba(FRAME)
    )


@pytest.mark.parametrize(
    ("inputs", "words"),
    [
        (_v2_inputs(city=None), ["missing input 'city'"]),
        (
            _v2_inputs(height={"datatype": "FP64", "shape": [3], "data": [1, 2, 3]}),
            ["unknown input 'height'", "age, city, income"],
        ),
        (_v2_inputs(city={"datatype": "INT64", "data": [1, 2, 3]}), ["'city'", "BYTES"]),
        (_v2_inputs(age={"datatype": "BYTES", "data": ["a", "b", "c"]}), ["'age'", "FP64"]),
        (_v2_inputs(ages=[31, 58]), ["'age' 2", "'city' 3"]),
        (_v2_inputs(city={"data": ["Oslo", "Bergen", "Paris"]}), ["'city'", "'Paris'"]),
        (_v2_inputs(age={"shape": [3, 1], "data": [[31], [58], [40]]}), ["'age'", "[-1]"]),
    ],
)
def test_v2_client_mistakes_are_400_naming_the_column(
    client: TestClient, inputs: list[dict[str, Any]], words: list[str]
) -> None:
    response = client.post("/v2/models/people/infer", json={"inputs": inputs})
    assert response.status_code == 400, response.text
    for word in words:
        assert word in response.json()["error"]


def test_tritonclient_sends_one_tensor_per_column(
    server: ThreadedServer, pipeline: Pipeline
) -> None:
    connection = triton.InferenceServerClient(server.url.removeprefix("http://"))
    try:
        columns = [
            ("age", FRAME["age"].to_numpy(np.float64), "FP64"),
            ("city", FRAME["city"].to_numpy(object), "BYTES"),
            ("income", FRAME["income"].to_numpy(np.float64), "FP64"),
        ]
        for binary in (True, False):
            inputs = []
            for name, values, datatype in columns:
                tensor = triton.InferInput(name, [len(values)], datatype)
                tensor.set_data_from_numpy(values, binary_data=binary)
                inputs.append(tensor)
            outputs = [triton.InferRequestedOutput(n) for n in ("label", "probabilities")]
            result = connection.infer("people", inputs, outputs=outputs)
            labels = [label.decode() for label in result.as_numpy("label")]
            assert labels == pipeline.predict(FRAME).tolist()
            np.testing.assert_allclose(
                result.as_numpy("probabilities"), pipeline.predict_proba(FRAME)
            )
        # A NaN travels in a binary FP64 tensor; the pipeline cannot take it.
        inputs = []
        for name, values, datatype in columns:
            sent = values.copy()
            if name == "income":
                sent[1] = np.nan
            tensor = triton.InferInput(name, [len(sent)], datatype)
            tensor.set_data_from_numpy(sent, binary_data=True)
            inputs.append(tensor)
        with pytest.raises(triton.InferenceServerException, match=r"column 'income'.*NaN"):
            connection.infer("people", inputs)
    finally:
        connection.close()


# Batching


def test_concurrent_requests_are_one_dataframe_call_and_get_their_own_answers(
    server: ThreadedServer, pipeline: Pipeline
) -> None:
    bodies: list[dict[str, Any]] = [
        {"inputs": ROWS[:2]},
        {"inputs": {k: v[2:] for k, v in COLUMNS.items()}},
    ]

    async def post_both() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as connection:
            return await asyncio.gather(
                *(connection.post("/models/batched/predict", json=body) for body in bodies)
            )

    first, second = asyncio.run(post_both())
    expected = pipeline.predict(FRAME).tolist()
    assert first.json()["outputs"] == expected[:2]
    assert second.json()["outputs"] == expected[2:]
    metrics = httpx.get(f"{server.url}/metrics").text
    assert 'loadonce_batch_size_examples_count{model="batched"} 1.0' in metrics
    assert 'loadonce_batch_size_examples_sum{model="batched"} 3.0' in metrics


# Loading


class _WithoutPandas(importlib.abc.MetaPathFinder):
    """As if pandas were not installed: its import fails."""

    def find_spec(self, name: str, path: object, target: object = None) -> None:
        if name.partition(".")[0] == "pandas":
            raise ModuleNotFoundError(f"No module named {name!r}")


def test_without_pandas_a_dataframe_model_names_the_extra_and_others_load(
    artifacts: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    plain = tmp_path / "plain.skops"
    skops.io.dump(LogisticRegression().fit(TRAINING[["age", "income"]].to_numpy(), LABELS), plain)
    # scikit-learn looks for pandas in sys.modules: gone from there, it is not installed.
    monkeypatch.delitem(sys.modules, "pandas")
    monkeypatch.setattr(sys, "meta_path", [_WithoutPandas(), *sys.meta_path])
    with TestClient(loadonce.create_app([loadonce.ModelSpec(name="plain", artifact=plain)])) as c:
        assert _predict(c, {"inputs": [[31, 45.5]]}, "plain") in (["no"], ["yes"])
    assert "pandas" not in sys.modules
    app = loadonce.create_app([loadonce.ModelSpec(name="people", artifact=artifacts["skops"])])
    with pytest.raises(loadonce.ModelLoadError, match=r"pip install 'loadonce\[pandas\]'"):
        TestClient(app).__enter__()


@pytest.mark.parametrize(
    ("columns", "words"),
    [
        ({"height": "float64"}, ["'height'", "age, city, income"]),
        ({"age": "decimal"}, ["'age'", "'decimal'", "float64"]),
    ],
)
def test_a_wrong_declaration_fails_the_load(
    artifacts: dict[str, Path], columns: dict[str, str], words: list[str]
) -> None:
    spec = loadonce.ModelSpec(
        name="people", artifact=artifacts["skops"], options={"columns": columns}
    )
    with pytest.raises(loadonce.ModelLoadError) as raised:
        TestClient(loadonce.create_app([spec])).__enter__()
    for word in words:
        assert word in str(raised.value)


def test_cli_serves_a_dataframe_model(
    tmp_path: Path, artifacts: dict[str, Path], pipeline: Pipeline
) -> None:
    with serving([str(artifacts["skops"])], tmp_path) as running:
        response = httpx.post(f"{running.url}/models/people/predict", json={"inputs": COLUMNS})
        assert response.status_code == 200, (response.text, running.log())
        assert response.json()["outputs"] == pipeline.predict(FRAME).tolist()


def test_declaring_columns_for_a_model_fitted_on_an_array_fails_the_load(tmp_path: Path) -> None:
    plain = tmp_path / "plain.skops"
    skops.io.dump(LogisticRegression().fit(TRAINING[["age", "income"]].to_numpy(), LABELS), plain)
    options = {"columns": {"age": "float64"}}
    spec = loadonce.ModelSpec(name="plain", artifact=plain, options=options)
    with pytest.raises(loadonce.ModelLoadError, match="not fitted on a DataFrame"):
        TestClient(loadonce.create_app([spec])).__enter__()


def test_a_histogram_boosters_native_categories_take_text(tmp_path: Path) -> None:
    """HistGradientBoosting with categorical_features="from_dtype" encodes a pandas
    Categorical column itself: the column was typed float64, and "Oslo" was a 400."""
    from sklearn.ensemble import HistGradientBoostingClassifier

    training = TRAINING.assign(city=TRAINING["city"].astype("category"))
    model = HistGradientBoostingClassifier(
        categorical_features="from_dtype", max_iter=5, min_samples_leaf=1
    ).fit(training, LABELS)
    path = tmp_path / "native.joblib"
    joblib.dump(model, path)
    spec = loadonce.ModelSpec(name="native", artifact=path, trust=True)
    with TestClient(loadonce.create_app([spec])) as client:
        described = {i["name"]: i["dtype"] for i in client.get("/models/native").json()["inputs"]}
        assert described == {"age": "float64", "city": "string", "income": "float64"}
        answer = client.post("/models/native/predict", json={"inputs": ROWS})
        assert answer.status_code == 200, answer.text
        assert answer.json()["outputs"] == model.predict(FRAME).tolist()


@pytest.mark.parametrize("library", ["lightgbm", "xgboost"])
def test_a_booster_fitted_on_pandas_categories_takes_them_again(
    tmp_path: Path, library: str
) -> None:
    """LightGBM and XGBoost take a DataFrame's category columns as categories: their
    estimators fitted on one were served with those columns as float64, and no request
    could succeed (text: 400 "must be numbers"; codes: the model's 500). Now a request
    names the category, as the DataFrame held it, and gets the model's own answer."""
    import lightgbm
    import xgboost

    rng = np.random.default_rng(0)
    cities = ["Oslo", "Bergen", "Tromso"]
    frame = pd.DataFrame(
        {
            "age": rng.integers(18, 80, 90).astype(float),
            "city": pd.Categorical(rng.choice(cities, 90)),
            "size": pd.Categorical(rng.choice([1, 2, 3], 90)),
        }
    )
    labels = ((frame["city"] == "Oslo") | (frame["age"] > 50)).astype(int)
    if library == "lightgbm":
        model: Any = lightgbm.LGBMClassifier(n_estimators=5, min_child_samples=5, verbose=-1)
    else:
        model = xgboost.XGBClassifier(n_estimators=5, enable_categorical=True)
    model.fit(frame, labels)
    joblib.dump(model, tmp_path / "booster.joblib")
    records = [{"age": 30.0, "city": "Oslo", "size": 2}, {"age": 70.0, "city": "Tromso", "size": 3}]
    asked = pd.DataFrame(records)
    for name in ("city", "size"):
        asked[name] = pd.Categorical(asked[name], categories=frame[name].cat.categories)
    expected = model.predict_proba(asked).tolist()
    spec = loadonce.ModelSpec(
        name="m",
        artifact=tmp_path / "booster.joblib",
        trust=True,
        options={"method": "predict_proba"},
    )
    with TestClient(loadonce.create_app([spec])) as client:
        described = {i["name"]: i["dtype"] for i in client.get("/models/m").json()["inputs"]}
        assert (described["city"], described["size"]) == ("string", "int64")
        answer = client.post("/models/m/predict", json={"inputs": records})
        assert answer.status_code == 200, answer.text
        np.testing.assert_allclose(answer.json()["outputs"], expected)
        # Missing categories only (a null): the model's answer for NaN there (XGBoost
        # failed on a category column of no categories at all: a 500).
        nulls = [{**records[0], "city": None}]
        missing = asked[:1].copy()
        missing.loc[missing.index[0], "city"] = None
        answer = client.post("/models/m/predict", json={"inputs": nulls})
        assert answer.status_code == 200, answer.text
        np.testing.assert_allclose(answer.json()["outputs"], model.predict_proba(missing))
        # An unseen category is named: LightGBM keeps its categories; XGBoost's model
        # records its texts, and failed on an unseen one (its 500, a traceback per request).
        unseen = client.post("/models/m/predict", json={"inputs": [{**records[0], "city": "Rome"}]})
        assert unseen.status_code == 400
        assert "Rome" in unseen.json()["error"]


def test_null_reaches_a_model_that_takes_missing_values(tmp_path: Path) -> None:
    """JSON's only way to say "missing" is null. A pipeline whose ColumnTransformer imputes
    its numbers, and a histogram booster whose category column was fitted with missing
    values, predict from NaN in process; served, null was a 400 ("got null, which is not a
    value"; "expected strings"). Each now gets NaN, as in process."""
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.impute import SimpleImputer

    people = pd.DataFrame(
        {
            "age": [25.0, np.nan, 40.0, 33.0, 51.0, 19.0],
            "city": ["Oslo", "Rome", "Oslo", "Rome", "Lima", "Lima"],
            "income": [30.0, 52.0, np.nan, 41.0, 70.0, 12.0],
        }
    )
    bought = ["no", "yes", "yes", "no", "yes", "no"]
    numbers = Pipeline([("impute", SimpleImputer()), ("scale", StandardScaler())])
    columns = ColumnTransformer(
        [("numbers", numbers, ["age", "income"]), ("city", OneHotEncoder(), ["city"])]
    )
    imputing = Pipeline([("columns", columns), ("model", LogisticRegression())]).fit(people, bought)
    joblib.dump(imputing, tmp_path / "imputing.joblib")
    colors = pd.DataFrame(
        {
            "x": np.arange(40, dtype=float),
            "color": pd.Categorical(["red", "blue", None, "green"] * 10),
        }
    )
    booster = HistGradientBoostingClassifier(max_iter=5, categorical_features="from_dtype")
    booster.fit(colors, [0, 1] * 20)
    joblib.dump(booster, tmp_path / "booster.joblib")
    specs = [
        loadonce.ModelSpec(name=name, artifact=tmp_path / f"{name}.joblib", trust=True)
        for name in ("imputing", "booster")
    ]
    with TestClient(loadonce.create_app(specs)) as served:
        row = {"age": None, "city": "Oslo", "income": 45.5}
        answer = served.post("/models/imputing/predict", json={"inputs": [row]})
        missing_age = pd.DataFrame({"age": [np.nan], "city": ["Oslo"], "income": [45.5]})
        assert answer.json()["outputs"] == imputing.predict(missing_age).tolist()
        # Its city goes to an encoder and then a model that take no missing value: a 400
        # naming the column, never the model's 500.
        row = {"age": 30, "city": None, "income": 45.5}
        refused = served.post("/models/imputing/predict", json={"inputs": [row]})
        assert refused.status_code == 400
        assert "column 'city'" in refused.json()["error"]
        answer = served.post("/models/booster/predict", json={"inputs": [{"x": 3, "color": None}]})
        categories = colors["color"].cat.categories
        missing_color = pd.DataFrame(
            {"x": [3.0], "color": pd.Categorical([None], categories=categories)}
        )
        assert answer.json()["outputs"] == booster.predict(missing_color).tolist()


def test_a_column_fitted_as_bool_takes_booleans(tmp_path: Path) -> None:
    """scikit-learn records no column dtypes, so a bool column was declared float64: JSON's
    true was a 400 "must be numbers", a /v2 BOOL tensor "is BOOL, but the model takes FP64",
    though the model predicts from the training DataFrame. A column whose dtype nothing
    declared or recorded now takes numbers or booleans, and booleans with nulls (missing
    values, which were a 400 "must be numbers" even for a model that takes them)."""
    from sklearn.ensemble import HistGradientBoostingRegressor

    rng = np.random.default_rng(0)
    people = pd.DataFrame({"age": rng.integers(18, 80, 60), "member": rng.random(60) > 0.5})
    target = (people["member"] & (people["age"] > 40)).astype(int)
    models = {
        "scaled": Pipeline([("scale", StandardScaler()), ("model", LogisticRegression())]),
        "boosted": HistGradientBoostingRegressor(max_iter=10),
    }
    specs = []
    for name, model in models.items():
        skops.io.dump(model.fit(people, target), tmp_path / f"{name}.skops")
        path = tmp_path / f"{name}.skops"
        trusted = {"trusted_types": skops.io.get_untrusted_types(file=path)}
        specs.append(loadonce.ModelSpec(name=name, artifact=path, options=trusted))
    some = people[:4]
    records = [
        {"age": int(a), "member": bool(m)} for a, m in zip(some.age, some.member, strict=True)
    ]
    with TestClient(loadonce.create_app(specs)) as client:
        for name, model in models.items():
            expected = model.predict(some).tolist()
            answer = client.post(f"/models/{name}/predict", json={"inputs": records})
            assert answer.status_code == 200, answer.text
            np.testing.assert_allclose(answer.json()["outputs"], expected)
            tensors = [
                {"name": "age", "datatype": "FP64", "shape": [4], "data": some.age.tolist()},
                {"name": "member", "datatype": "BOOL", "shape": [4], "data": some.member.tolist()},
            ]
            infer = client.post(f"/v2/models/{name}/infer", json={"inputs": tensors})
            assert infer.status_code == 200, infer.text
            np.testing.assert_allclose(infer.json()["outputs"][0]["data"], expected)
            # Its numbers too, as before.
            numbers = [{**record, "member": int(record["member"])} for record in records]
            answer = client.post(f"/models/{name}/predict", json={"inputs": numbers})
            np.testing.assert_allclose(answer.json()["outputs"], expected)
            for word in ("yes", ""):
                text = client.post(
                    f"/models/{name}/predict", json={"inputs": [{"age": 30, "member": word}]}
                )
                assert text.status_code == 400
                for words in ("'member'", "booleans", "options", 'member = "string"'):
                    assert words in text.json()["error"]
            wrong = client.post(
                f"/v2/models/{name}/infer",
                json={"inputs": [tensors[0], {**tensors[1], "datatype": "INT8", "data": [1] * 4}]},
            )
            assert wrong.status_code == 400
            assert "FP64 or BOOL" in wrong.json()["error"]
            # Booleans with a null (a missing value), as numbers with one: the booster
            # predicts from NaN there; the scaled model takes no missing value (a 400).
            missing = [records[0], {**records[1], "member": None}]
            answer = client.post(f"/models/{name}/predict", json={"inputs": missing})
            if name == "boosted":
                frame = some[:2].astype({"member": float})
                frame.loc[frame.index[1], "member"] = np.nan
                assert answer.status_code == 200, answer.text
                np.testing.assert_allclose(answer.json()["outputs"], model.predict(frame))
            else:
                assert answer.status_code == 400
                assert "'member'" in answer.json()["error"]


def test_a_column_of_numbers_fitted_as_objects_takes_numbers(tmp_path: Path) -> None:
    """A DataFrame column of object dtype holding numbers (zip codes) gives its encoder an
    object array of ints: the column was declared text, and its numbers refused ("expected
    strings", "is INT64, but the model takes BYTES"). It now takes integers, on both
    protocols, which reach the encoder as the Python ints it learnt (NumPy's fail its
    comparison: the model's 500)."""
    people = pd.DataFrame(
        {
            "zip": pd.Series([1010, 2020, 3030, 1010, 2020, 3030], dtype=object),
            "city": ["Oslo", "Rome", "Oslo", "Rome", "Lima", "Lima"],
            "income": [30.0, 52.0, 12.0, 41.0, 70.0, 12.0],
        }
    )
    encoded = ColumnTransformer(
        [("codes", OneHotEncoder(), ["zip", "city"])], remainder="passthrough"
    )
    model = Pipeline([("columns", encoded), ("model", LogisticRegression())])
    model.fit(people, ["no", "yes", "yes", "no", "yes", "no"])
    joblib.dump(model, tmp_path / "zips.joblib")
    spec = loadonce.ModelSpec(name="zips", artifact=tmp_path / "zips.joblib", trust=True)
    rows = [
        {"zip": 3030, "city": "Oslo", "income": 20.0},
        {"zip": 1010, "city": "Lima", "income": 60.0},
    ]
    expected = model.predict(pd.DataFrame(rows).astype({"zip": object})).tolist()
    with TestClient(loadonce.create_app([spec])) as client:
        [zip_code, *_] = client.get("/v2/models/zips").json()["inputs"]
        assert zip_code == {"name": "zip", "datatype": "INT64", "shape": [-1]}
        assert _predict(client, {"inputs": rows}, model="zips") == expected
        tensors = [
            {"name": "zip", "datatype": "INT64", "shape": [2], "data": [3030, 1010]},
            {"name": "city", "datatype": "BYTES", "shape": [2], "data": ["Oslo", "Lima"]},
            {"name": "income", "datatype": "FP64", "shape": [2], "data": [20.0, 60.0]},
        ]
        infer = client.post("/v2/models/zips/infer", json={"inputs": tensors})
        assert infer.status_code == 200, infer.text
        assert infer.json()["outputs"][0]["data"] == expected
        unseen = client.post("/models/zips/predict", json={"inputs": [{**rows[0], "zip": 9}]})
        assert unseen.status_code == 400
        assert "column 'zip': unknown value '9'" in unseen.json()["error"]


def test_missing_values_reach_a_booster_through_a_passthrough_remainder(tmp_path: Path) -> None:
    """scikit-learn keeps remainder="passthrough" as an identity FunctionTransformer, whose
    tags say it takes no NaN: null in a column it passes to a histogram booster was a 400
    ("does not accept NaN"), though the booster predicts from NaN. It now reaches it; a
    model that takes no missing value still refuses it, naming the column."""
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.preprocessing import OrdinalEncoder

    people = pd.DataFrame(
        {
            "city": ["Oslo", "Rome", "Oslo", "Rome", "Lima", "Lima"] * 3,
            "income": [30.0, np.nan, 12.0, 41.0, 70.0, 12.0] * 3,
        }
    )
    bought = ["no", "yes", "yes", "no", "yes", "no"] * 3
    models = {}
    for name, last in (
        ("boosted", HistGradientBoostingClassifier(max_iter=5, min_samples_leaf=1)),
        ("linear", LogisticRegression()),
    ):
        columns = ColumnTransformer([("city", OrdinalEncoder(), ["city"])], remainder="passthrough")
        training = people if name == "boosted" else people.fillna(0.0)
        models[name] = Pipeline([("columns", columns), ("model", last)]).fit(training, bought)
        joblib.dump(models[name], tmp_path / f"{name}.joblib")
    specs = [
        loadonce.ModelSpec(name=name, artifact=tmp_path / f"{name}.joblib", trust=True)
        for name in models
    ]
    rows = [{"city": "Rome", "income": None}, {"city": "Oslo", "income": 30.0}]
    frame = pd.DataFrame(rows).astype({"income": float})
    with TestClient(loadonce.create_app(specs)) as client:
        answer = _predict(client, {"inputs": rows}, model="boosted")
        assert answer == models["boosted"].predict(frame).tolist()
        refused = client.post("/models/linear/predict", json={"inputs": rows})
        assert refused.status_code == 400
        assert "'income'" in refused.json()["error"]


def _none_learnt(imputer: Any) -> Pipeline:
    """A text column with None at fit, one-hot encoded behind ``imputer`` (or none)."""
    text = (
        OneHotEncoder()
        if imputer is None
        else Pipeline([("fill", imputer), ("oh", OneHotEncoder())])
    )
    encode = ColumnTransformer([("n", "passthrough", ["size"]), ("t", text, ["shade"])])
    return Pipeline([("encode", encode), ("classify", LogisticRegression())])


@pytest.mark.parametrize(
    "imputer",
    [
        None,  # None is a category of its own
        SimpleImputer(strategy="most_frequent"),  # missing_values=NaN passes None on
        SimpleImputer(missing_values=None, strategy="constant", fill_value="unknown"),
    ],
    ids=["category", "passed-on", "imputed"],
)
def test_a_null_reaches_a_column_that_learnt_none_as_none(tmp_path: Path, imputer: Any) -> None:
    """A DataFrame built from records (or JSON) holds None for a missing text, and the model
    learnt that None (an encoder's category, or what an imputer told missing_values=None
    replaces). A request's null reached it as NaN: refused ("expected strings"), imputed
    where the model had never imputed it (another answer), or a 500 on the imputer that
    takes None only ("Input contains NaN"). It now reaches it as None: the model's answer."""
    frame = pd.DataFrame(
        {"size": [1.0, 2.0, 3.0, 4.0, 5.0, 6.0], "shade": ["p", "q", None, "p", None, "q"]}
    )
    model = _none_learnt(imputer).fit(frame, [0, 1, 1, 0, 1, 0])
    joblib.dump(model, tmp_path / "shades.joblib")
    array_model = Pipeline([("oh", OneHotEncoder()), ("classify", LogisticRegression())])
    array_model.fit(np.array([["p"], ["q"], [None], ["p"]], dtype=object), [0, 1, 1, 0])
    joblib.dump(array_model, tmp_path / "rows.joblib")
    specs = [
        loadonce.ModelSpec(name=name, artifact=tmp_path / f"{name}.joblib", trust=True)
        for name in ("shades", "rows")
    ]
    records = [{"size": 1.5, "shade": None}, {"size": 2.5, "shade": "q"}]
    with TestClient(loadonce.create_app(specs)) as client:
        body = {"inputs": records, "outputs": ["probabilities"]}
        answer = client.post("/models/shades/predict", json=body)
        assert answer.status_code == 200, answer.text
        expected = model.predict_proba(pd.DataFrame(records)).tolist()
        assert [o["probabilities"] for o in answer.json()["outputs"]] == expected
        # An array model fitted on None alike.
        body = {"inputs": [[None], ["q"]], "outputs": ["probabilities"]}
        answer = client.post("/models/rows/predict", json=body)
        assert answer.status_code == 200, answer.text
        rows = np.array([[None], ["q"]], dtype=object)
        expected = array_model.predict_proba(rows).tolist()
        assert [o["probabilities"] for o in answer.json()["outputs"]] == expected
        # A null where the model takes no missing value is still the client's mistake.
        refused = client.post(
            "/models/shades/predict", json={"inputs": [{"size": None, "shade": "p"}]}
        )
        assert refused.status_code == 400
        assert "column 'size'" in refused.json()["error"]
        assert "null" in refused.json()["error"]


@pytest.mark.parametrize(
    ("encoder", "fitted_with_nan"),
    [
        (TargetEncoder(), False),
        (OneHotEncoder(handle_unknown="ignore"), False),
        (OneHotEncoder(), True),
        (OrdinalEncoder(encoded_missing_value=-1), True),
        (OrdinalEncoder(handle_unknown="use_encoded_value", unknown_value=-1), False),
    ],
    ids=["target", "one-hot-ignoring", "one-hot-of-nan", "ordinal-of-nan", "ordinal-unknown"],
)
def test_a_null_reaches_an_encoder_that_turns_it_into_numbers(
    tmp_path: Path, encoder: Any, fitted_with_nan: bool
) -> None:
    """An encoder that gives a missing value numbers of its own (a TargetEncoder's mean, a
    one-hot row of zeros or of its NaN category, an ordinal code) takes care of it: the
    model answers a DataFrame with NaN there, though a linear model follows. A request's null
    in such a text column was a 400 ("expected strings"), in a named column or a row."""
    shades: list[Any] = ["p", "q", "p", "q"] * 5
    if fitted_with_nan:
        shades[2] = np.nan
    frame = pd.DataFrame({"size": np.arange(20.0), "shade": shades})
    target = [0, 1, 0, 1, 1, 0, 1, 0, 0, 1] * 2  # ten of each: TargetEncoder's five folds
    encode = ColumnTransformer([("n", "passthrough", ["size"]), ("t", encoder, ["shade"])])
    model = Pipeline([("encode", encode), ("classify", LogisticRegression())]).fit(frame, target)
    joblib.dump(model, tmp_path / "shades.joblib")
    rows_model = Pipeline([("encode", clone(encoder)), ("classify", LogisticRegression())])
    rows_model.fit(frame[["shade"]].to_numpy(), target)
    joblib.dump(rows_model, tmp_path / "rows.joblib")
    specs = [
        loadonce.ModelSpec(name=name, artifact=tmp_path / f"{name}.joblib", trust=True)
        for name in ("shades", "rows")
    ]
    records = [{"size": 1.5, "shade": None}, {"size": 2.5, "shade": "q"}]
    missing = pd.DataFrame({"size": [1.5, 2.5], "shade": [np.nan, "q"]})
    with TestClient(loadonce.create_app(specs)) as client:
        body = {"inputs": records, "outputs": ["probabilities"]}
        answer = client.post("/models/shades/predict", json=body)
        assert answer.status_code == 200, answer.text
        expected = model.predict_proba(missing).tolist()
        assert [o["probabilities"] for o in answer.json()["outputs"]] == expected
        body = {"inputs": [[None], ["q"]], "outputs": ["probabilities"]}
        answer = client.post("/models/rows/predict", json=body)
        assert answer.status_code == 200, answer.text
        expected = rows_model.predict_proba(missing[["shade"]].to_numpy()).tolist()
        assert [o["probabilities"] for o in answer.json()["outputs"]] == expected
        # The number column still takes no missing value: nothing takes care of it.
        refused = client.post(
            "/models/shades/predict", json={"inputs": [{"size": None, "shade": "p"}]}
        )
        assert refused.status_code == 400
        assert "column 'size'" in refused.json()["error"]


def test_an_encoder_that_refuses_unknown_values_leaves_a_null_refused(tmp_path: Path) -> None:
    """A OneHotEncoder that never saw a missing value and refuses unknown ones fails on NaN:
    a null there stays the client's 400, not the model's 500."""
    frame = pd.DataFrame({"size": np.arange(4.0), "shade": ["p", "q", "q", "p"]})
    encode = ColumnTransformer([("n", "passthrough", ["size"]), ("t", OneHotEncoder(), ["shade"])])
    model = Pipeline([("encode", encode), ("classify", LogisticRegression())])
    joblib.dump(model.fit(frame, [0, 1, 1, 0]), tmp_path / "coded.joblib")
    spec = loadonce.ModelSpec(name="coded", artifact=tmp_path / "coded.joblib", trust=True)
    with TestClient(loadonce.create_app([spec])) as client:
        body = {"inputs": [{"size": 1.0, "shade": None}]}
        refused = client.post("/models/coded/predict", json=body)
        assert refused.status_code == 400
        assert "'shade'" in refused.json()["error"]
