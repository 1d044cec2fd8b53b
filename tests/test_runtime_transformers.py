"""Transformers: a local model directory, offline; served results equal the pipeline's own."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2 as httpx
import numpy as np
import pytest
import torch
import tritonclient.http as triton
from fastapi.testclient import TestClient
from transformers import BertConfig, BertForSequenceClassification, BertTokenizer, pipeline

import loadonce
from tests.servers import ThreadedServer, serving

WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "good", "bad", "movie", "great", "awful"]
TEXTS = ["good movie", "awful awful movie", "great", "bad good bad"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny BERT sentiment classifier with random weights, built here: nothing downloaded."""
    root = tmp_path_factory.mktemp("bert")
    torch.manual_seed(0)
    config = BertConfig(  # type: ignore[call-arg]  # num_labels is a PreTrainedConfig kwarg
        vocab_size=len(WORDS),
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=32,
        num_labels=2,
        id2label={0: "NEGATIVE", 1: "POSITIVE"},
        label2id={"NEGATIVE": 0, "POSITIVE": 1},
        initializer_range=1.0,
    )
    directory = root / "sentiment"
    BertForSequenceClassification(config).save_pretrained(directory)
    tokenizer = BertTokenizer(vocab={word: i for i, word in enumerate(WORDS)})
    tokenizer.save_pretrained(directory)
    assert tokenizer("good movie")["input_ids"] == [2, 5, 7, 3], "a real vocabulary, not [UNK]s"
    return directory


def _spec(directory: Path, **options: Any) -> loadonce.ModelSpec:
    return loadonce.ModelSpec(
        name="sentiment", artifact=directory, options={"task": "text-classification", **options}
    )


@pytest.fixture
def client(model_dir: Path) -> Iterator[TestClient]:
    with TestClient(loadonce.create_app([_spec(model_dir)])) as test_client:
        yield test_client


def test_served_results_equal_the_pipelines_own(client: TestClient, model_dir: Path) -> None:
    reference = pipeline("text-classification", model=str(model_dir), local_files_only=True)
    response = client.post("/models/sentiment/predict", json={"inputs": TEXTS})
    assert response.status_code == 200
    assert response.json()["outputs"] == reference(TEXTS)
    scores = [o["score"] for o in response.json()["outputs"]]
    assert len(set(scores)) == len(TEXTS), "different texts, different results"
    one = client.post("/models/sentiment/predict", json={"inputs": "good movie"})
    assert one.json()["outputs"] == reference(["good movie"])


def test_the_runtime_is_chosen_from_the_directory_and_is_serialized(client: TestClient) -> None:
    info = client.get("/models/sentiment").json()
    assert info["runtime"] == "transformers"
    assert info["concurrency"] == "serialized"
    assert info["input_dtype"] == "string"


def test_call_options_reach_the_pipeline(model_dir: Path) -> None:
    spec = _spec(model_dir, call={"top_k": None})
    with TestClient(loadonce.create_app([spec])) as client:
        outputs = client.post("/models/sentiment/predict", json={"inputs": ["good"]}).json()
    [scores] = outputs["outputs"]
    assert sorted(s["label"] for s in scores) == ["NEGATIVE", "POSITIVE"]


def test_text_is_required(client: TestClient) -> None:
    response = client.post("/models/sentiment/predict", json={"inputs": [1, 2]})
    assert response.status_code == 400
    assert "each example must be a string" in response.json()["error"]


@pytest.mark.parametrize("missing", ["config.json", "model.safetensors", "tokenizer.json"])
def test_a_missing_file_is_named(model_dir: Path, tmp_path: Path, missing: str) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(model_dir, broken)
    (broken / missing).unlink()
    spec = _spec(broken, task="text-classification")
    if missing == "config.json":
        spec = spec.model_copy(update={"runtime": "transformers"})
    with pytest.raises(loadonce.ModelLoadError) as failure:
        TestClient(loadonce.create_app([spec])).__enter__()
    message = str(failure.value)
    assert "model 'sentiment' failed to load" in message
    assert str(broken) in message
    assert missing in message


def test_the_task_is_read_from_config_json_else_asked_for(model_dir: Path, tmp_path: Path) -> None:
    inferred = loadonce.ModelSpec(name="s", artifact=model_dir)
    with TestClient(loadonce.create_app([inferred])) as client:
        response = client.post("/models/s/predict", json={"inputs": ["good"]})
        assert response.json()["outputs"][0]["label"] in {"NEGATIVE", "POSITIVE"}
    unknown = tmp_path / "unknown"
    shutil.copytree(model_dir, unknown)
    (unknown / "config.json").write_text('{"architectures": ["SomethingNew"]}')
    spec = loadonce.ModelSpec(name="s", artifact=unknown)
    with pytest.raises(loadonce.ModelLoadError, match=r"SomethingNew.*set options\.task"):
        TestClient(loadonce.create_app([spec])).__enter__()


def test_cli_serves_a_model_directory_from_two_workers(model_dir: Path, tmp_path: Path) -> None:
    reference = pipeline("text-classification", model=str(model_dir), local_files_only=True)
    with serving([str(model_dir), "--workers", "2"], tmp_path) as server:
        response = httpx.post(f"{server.url}/models/sentiment/predict", json={"inputs": TEXTS})
    assert response.json()["outputs"] == reference(TEXTS)


def test_open_inference_protocol_with_text_and_allowed_parameters(model_dir: Path) -> None:
    """BYTES in; top_k from the request only because the operator allowed it
    (options.request_parameters). A request may then make the answer a list of labels: every
    answer, with top_k or not, is one JSON document per text (the metadata's ``output``),
    never label and score tensors for some requests and documents for others."""
    spec = _spec(model_dir, request_parameters=["top_k"])
    reference = pipeline("text-classification", model=str(model_dir), local_files_only=True)
    with ThreadedServer(loadonce.create_app([spec])) as running:
        client = triton.InferenceServerClient(running.url.removeprefix("http://"))
        texts = triton.InferInput("text", [len(TEXTS)], "BYTES")
        texts.set_data_from_numpy(np.array(TEXTS, dtype=object))
        [output] = client.get_model_metadata("sentiment")["outputs"]
        assert output == {"name": "output", "datatype": "BYTES", "shape": [-1]}
        result = client.infer("sentiment", [texts])
        expected = reference(TEXTS)
        answered = [json.loads(d) for d in result.as_numpy("output")]
        assert [a["label"] for a in answered] == [e["label"] for e in expected]
        np.testing.assert_allclose([a["score"] for a in answered], [e["score"] for e in expected])
        ranked = client.infer("sentiment", [texts], parameters={"top_k": 2, "other": 1})
        documents = [json.loads(d) for d in ranked.as_numpy("output")]
        # One padded pass for the four texts: equal to the pipeline's up to float rounding.
        expected_ranks: Any = reference(TEXTS, top_k=2)
        assert [[r["label"] for r in d] for d in documents] == [
            [r["label"] for r in d] for d in expected_ranks
        ]
        np.testing.assert_allclose(
            [[r["score"] for r in d] for d in documents],
            [[r["score"] for r in d] for d in expected_ranks],
            rtol=1e-5,
        )
        client.close()


def test_a_device_that_is_not_there_fails_the_load_in_one_line(model_dir: Path) -> None:
    spec = _spec(model_dir, device="cuda:99")
    with pytest.raises(
        loadonce.ModelLoadError, match=r"device 'cuda:99' was asked for, but"
    ) as raised:
        TestClient(loadonce.create_app([spec])).__enter__()
    assert "\n" not in str(raised.value)
