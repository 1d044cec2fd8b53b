"""Every served Transformers task from a tiny local model: the task read from transformers' own
mappings, one batched forward pass per batch (counted), generation parameters checked and
capped, texts checked against the model's context."""

from __future__ import annotations

import base64
import io
import json
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import tritonclient.http as triton
from fastapi.testclient import TestClient
from PIL import Image
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import (
    AutoModelForSeq2SeqLM,
    BartConfig,
    BartForConditionalGeneration,
    BertConfig,
    BertForMaskedLM,
    BertForQuestionAnswering,
    BertForSequenceClassification,
    BertForTokenClassification,
    BertModel,
    BertTokenizer,
    GPT2Config,
    GPT2LMHeadModel,
    PreTrainedTokenizerFast,
    ViTConfig,
    ViTForImageClassification,
    ViTImageProcessor,
    ViTModel,
    Wav2Vec2Config,
    Wav2Vec2CTCTokenizer,
    Wav2Vec2FeatureExtractor,
    Wav2Vec2ForCTC,
    Wav2Vec2ForSequenceClassification,
    Wav2Vec2Processor,
    pipeline,
)

import loadonce
from tests.output_metadata import Request, assert_answers_as_described, binary_request
from tests.servers import ThreadedServer

WORDS = [
    "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "<s>", "</s>", "good", "bad", "movie",
    "great", "awful", "what", "is", "the", "?", "a", "it", "was",
]  # fmt: skip
TEXTS = ["good movie", "awful awful movie it was bad", "great", "bad good bad"]
CONTEXT = 32  # every model's positions: a text of more tokens does not fit
BERT: dict[str, Any] = {
    "vocab_size": len(WORDS),
    "hidden_size": 16,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "intermediate_size": 32,
    "max_position_embeddings": CONTEXT,
}


def _word_tokenizer() -> PreTrainedTokenizerFast:
    """A fast tokenizer over WORDS, built here (nothing downloaded)."""
    backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    backend.decoder = decoders.WordPiece()  # words joined by spaces
    return PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]
        tokenizer_object=backend,
        unk_token="[UNK]",
        pad_token="[PAD]",
        mask_token="[MASK]",
        bos_token="<s>",
        eos_token="</s>",
    )


@pytest.fixture(scope="module")
def directories(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One tiny model directory per task, random weights; only config.json says the task."""
    root = tmp_path_factory.mktemp("tasks")
    torch.manual_seed(0)
    bert_tokenizer = BertTokenizer(vocab={word: i for i, word in enumerate(WORDS)})
    labels: dict[str, Any] = {
        "id2label": {0: "O", 1: "B-X", 2: "I-X"},
        "label2id": {"O": 0, "B-X": 1, "I-X": 2},
    }
    built: dict[str, tuple[Any, Any]] = {
        "classify": (BertForSequenceClassification(BertConfig(**BERT)), bert_tokenizer),
        "tokens": (BertForTokenClassification(BertConfig(**BERT, **labels)), bert_tokenizer),
        "masks": (BertForMaskedLM(BertConfig(**BERT)), bert_tokenizer),
        "features": (BertModel(BertConfig(**BERT)), bert_tokenizer),
        "answers": (BertForQuestionAnswering(BertConfig(**BERT)), bert_tokenizer),
        "writer": (
            GPT2LMHeadModel(
                GPT2Config(
                    vocab_size=len(WORDS),
                    n_embd=16,
                    n_layer=1,
                    n_head=2,
                    n_positions=CONTEXT,
                    bos_token_id=5,
                    eos_token_id=6,
                    pad_token_id=0,
                )
            ),
            _word_tokenizer(),
        ),
        "rewriter": (
            BartForConditionalGeneration(
                BartConfig(
                    vocab_size=len(WORDS),
                    d_model=16,
                    encoder_layers=1,
                    decoder_layers=1,
                    encoder_attention_heads=2,
                    decoder_attention_heads=2,
                    encoder_ffn_dim=32,
                    decoder_ffn_dim=32,
                    max_position_embeddings=CONTEXT,
                    pad_token_id=0,
                    bos_token_id=5,
                    eos_token_id=6,
                    decoder_start_token_id=6,
                )
            ),
            _word_tokenizer(),
        ),
    }
    vision = ViTConfig(
        image_size=32,
        patch_size=16,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        id2label={0: "cat", 1: "dog"},
        label2id={"cat": 0, "dog": 1},
    )
    pixels = ViTImageProcessor(size={"height": 32, "width": 32})
    built["looker"] = (ViTForImageClassification(vision), pixels)
    built["pictures"] = (ViTModel(vision), pixels)
    entailment = {"entailment": 0, "neutral": 1, "contradiction": 2}
    built["chooser"] = (
        BertForSequenceClassification(
            BertConfig(**BERT, label2id=entailment, id2label={i: n for n, i in entailment.items()})
        ),
        bert_tokenizer,
    )
    speech: dict[str, Any] = {
        "vocab_size": 8,
        "hidden_size": 16,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "intermediate_size": 32,
        "conv_dim": (8, 8),
        "conv_stride": (5, 4),
        "conv_kernel": (10, 8),
        "num_conv_pos_embeddings": 8,
        "num_conv_pos_embedding_groups": 2,
        "pad_token_id": 0,
    }
    # A raw-waveform model with group norm: padding is not masked (no attention mask).
    extractor = Wav2Vec2FeatureExtractor(  # type: ignore[no-untyped-call]
        sampling_rate=16000, return_attention_mask=False
    )
    built["listener"] = (
        Wav2Vec2ForSequenceClassification(
            Wav2Vec2Config(**speech, id2label={0: "yes", 1: "no"}, label2id={"yes": 0, "no": 1})
        ),
        extractor,
    )
    letters = root / "letters.json"
    letters.write_text(json.dumps({c: i for i, c in enumerate(["<pad>", "<unk>", "|", *"abcde"])}))
    characters = Wav2Vec2CTCTokenizer(  # type: ignore[no-untyped-call]
        str(letters), word_delimiter_token="|"
    )
    built["transcriber"] = (
        Wav2Vec2ForCTC(Wav2Vec2Config(**speech)),
        Wav2Vec2Processor(  # type: ignore[no-untyped-call]
            feature_extractor=extractor, tokenizer=characters
        ),
    )
    found = {}
    for name, (model, tokenizer) in built.items():
        model.save_pretrained(root / name)
        tokenizer.save_pretrained(root / name)
        found[name] = root / name
    return found


@pytest.fixture(scope="module")
def client(directories: dict[str, Path]) -> Iterator[TestClient]:
    specs = [
        loadonce.ModelSpec(
            name=name,
            artifact=path,
            options={"max_new_tokens": 12}
            if name in {"writer", "rewriter"}
            else {"task": "zero-shot-classification"}
            if name == "chooser"
            else {},
        )
        for name, path in directories.items()
    ]
    with TestClient(loadonce.create_app(specs)) as test_client:
        yield test_client


class ForwardPasses:
    """Every forward call of the top-level model classes named, with its batch's shape."""

    def __init__(self, *classes: str) -> None:
        self.classes = set(classes)
        self.shapes: list[tuple[int, ...]] = []
        self._lock = threading.Lock()

    def __enter__(self) -> ForwardPasses:
        self._handle = torch.nn.modules.module.register_module_forward_hook(
            self._seen, with_kwargs=True
        )
        return self

    def __exit__(self, *exc: object) -> None:
        self._handle.remove()

    def _seen(self, module: Any, args: Any, kwargs: Any, output: Any) -> None:
        if type(module).__name__ in self.classes:
            given = [kwargs.get(k) for k in ("input_ids", "pixel_values", "input_values")]
            ids = next((g for g in given if g is not None), args[0] if args else None)
            with self._lock:
                self.shapes.append(tuple(ids.shape) if ids is not None else ())


def _predict(client: TestClient, name: str, inputs: Any, **body: Any) -> Any:
    response = client.post(f"/models/{name}/predict", json={"inputs": inputs, **body})
    assert response.status_code == 200, response.text
    return response.json()["outputs"]


def _reference(task: str, directory: Path) -> Any:
    build: Any = pipeline  # typed per literal task name
    return build(task, model=str(directory), tokenizer=str(directory))


def test_the_task_comes_from_transformers_mappings(client: TestClient) -> None:
    """Only config.json's architectures name the task: each model answers as its task does
    (a GPT2LMHeadModel generates, a BART model generates rather than fills masks)."""
    [classified] = _predict(client, "classify", ["good movie"])
    assert set(classified) == {"label", "score"}
    [tagged] = _predict(client, "tokens", ["good movie"])
    assert {entity["word"] for entity in tagged} <= {"good", "movie"}
    [filled] = _predict(client, "masks", ["good [MASK]"])
    assert {"token_str", "score", "sequence"} <= set(filled[0])
    [written] = _predict(client, "writer", ["good movie"])
    assert written["generated_text"].startswith("good movie")
    [rewritten] = _predict(client, "rewriter", ["good movie"], parameters={"min_new_tokens": 2})
    assert set(rewritten) == {"generated_text"}
    [answered] = _predict(client, "answers", [{"question": "what is good", "context": "a movie"}])
    assert set(answered) == {"answer", "score", "start", "end"}
    info = client.get("/models/writer").json()
    assert info["runtime"] == "transformers"
    assert "max_new_tokens" in info["request_parameters"]
    assert client.get("/models/classify").json()["request_parameters"] == []


@pytest.mark.parametrize(
    ("name", "task", "texts"),
    [
        ("tokens", "token-classification", TEXTS),
        ("masks", "fill-mask", ["good [MASK]", "a [MASK] movie it was bad", "[MASK]"]),
        ("features", "feature-extraction", TEXTS),
    ],
)
def test_one_batched_pass_answers_what_each_text_alone_gets(
    client: TestClient, directories: dict[str, Path], name: str, task: str, texts: list[str]
) -> None:
    """Texts of different lengths padded into one forward pass: each answer equals the
    pipeline's for that text alone (feature vectors without the padding's positions)."""
    with ForwardPasses("BertModel") as passes:
        served = _predict(client, name, texts)
    assert len(passes.shapes) == 1
    assert passes.shapes[0][0] == len(texts)
    reference = _reference(task, directories[name])
    for text, answer in zip(texts, served, strict=True):
        alone = reference(text)
        if task == "feature-extraction":
            np.testing.assert_allclose(answer, alone, rtol=1e-4, atol=1e-5)
        else:
            assert _rounded(answer) == _rounded(alone)


def _rounded(value: Any) -> Any:
    if isinstance(value, list):
        return [_rounded(v) for v in value]
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    if isinstance(value, float | np.floating):
        return round(float(value), 4)
    return value


def test_concurrent_requests_share_one_forward_pass(directories: dict[str, Path]) -> None:
    """With batching, 8 requests of one text each arriving together are one forward pass of
    8 (the pipeline's batch), not 8 passes of one: the issue's 8 passes of shape (1, n)."""
    spec = loadonce.ModelSpec(
        name="classify",
        artifact=directories["classify"],
        batching={"max_batch_size": 8, "max_wait_ms": 500},
    )
    with TestClient(loadonce.create_app([spec])) as batched:
        answers: list[Any] = [None] * len(TEXTS * 2)
        with ForwardPasses("BertForSequenceClassification") as passes:
            threads = [
                threading.Thread(
                    target=lambda i=i, t=t: answers.__setitem__(
                        i, _predict(batched, "classify", [t])[0]
                    )
                )
                for i, t in enumerate(TEXTS * 2)
            ]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
    assert sum(shape[0] for shape in passes.shapes) == 8
    assert len(passes.shapes) <= 2, passes.shapes
    reference = _reference("text-classification", directories["classify"])
    assert _rounded(answers) == _rounded([reference(t)[0] for t in TEXTS * 2])


def test_generation_is_batched_and_greedy_answers_equal_the_pipelines(
    client: TestClient, directories: dict[str, Path]
) -> None:
    """A batch of prompts is one generate loop (forward passes: one per new token, each of
    the whole batch); greedy results equal the text-generation pipeline's, text by text."""
    with ForwardPasses("GPT2LMHeadModel") as passes:
        served = _predict(
            client, "writer", TEXTS, parameters={"max_new_tokens": 4, "do_sample": False}
        )
    assert len(passes.shapes) <= 4
    assert all(shape[0] == len(TEXTS) for shape in passes.shapes)
    reference = _reference("text-generation", directories["writer"])
    for text, answer in zip(TEXTS, served, strict=True):
        [alone] = reference(text, max_new_tokens=4, do_sample=False)
        assert answer == alone


def test_seq2seq_generation_equals_the_models_own_generate(
    client: TestClient, directories: dict[str, Path]
) -> None:
    parameters = {"max_new_tokens": 5, "min_new_tokens": 3}
    with ForwardPasses("BartForConditionalGeneration") as passes:
        served = _predict(client, "rewriter", TEXTS, parameters=parameters)
    assert all(shape == () or shape[0] == len(TEXTS) for shape in passes.shapes)
    assert len(passes.shapes) <= 5
    model = AutoModelForSeq2SeqLM.from_pretrained(directories["rewriter"])
    tokenizer = PreTrainedTokenizerFast.from_pretrained(directories["rewriter"])
    for text, answer in zip(TEXTS, served, strict=True):
        alone = model.generate(**tokenizer([text], return_tensors="pt"), **parameters)
        expected = tokenizer.decode(alone[0], skip_special_tokens=True)
        assert answer == {"generated_text": expected}
        assert len(expected.split()) >= 3


def test_question_answering_finds_a_span_of_the_context(client: TestClient) -> None:
    examples = [
        {"question": "what is good", "context": "the movie was good"},
        {"question": "what was it", "context": "it was a great awful movie"},
    ]
    with ForwardPasses("BertForQuestionAnswering") as passes:
        served = _predict(client, "answers", examples)
    assert passes.shapes == [(2, passes.shapes[0][1])]
    for example, answer in zip(examples, served, strict=True):
        assert example["context"][answer["start"] : answer["end"]] == answer["answer"]
        assert answer["answer"]
        assert 0 < answer["score"] <= 1
        assert _rounded(_predict(client, "answers", example)) == _rounded([answer])


def test_generation_parameters_are_taken_checked_and_capped(
    client: TestClient, directories: dict[str, Path]
) -> None:
    reference = _reference("text-generation", directories["writer"])
    for tokens in (1, 12):
        greedy = {"max_new_tokens": tokens, "do_sample": False}
        assert (
            _predict(client, "writer", ["good"], parameters=greedy)
            == reference(["good"], **greedy)[0]
        )
    [sampled] = _predict(
        client,
        "writer",
        ["good"],
        parameters={"do_sample": True, "temperature": 0.7, "top_p": 0.9, "top_k": 5},
    )
    assert sampled["generated_text"].startswith("good")
    # Extreme values the rules take are taken as the generate routes take them: a
    # temperature of 1e-300 is the greedy choice (it was the model's 500, NaN probabilities),
    # a repetition penalty of 1e-300 the most float32 can say.
    cold = _predict(client, "writer", ["good"], parameters={"temperature": 1e-300})
    assert cold == reference(["good"], max_new_tokens=12, do_sample=False)[0]
    # A temperature of 0 is greedy, as on the generate routes (it was a 400 here alone),
    # sampling asked for or not.
    for zero in ({"temperature": 0}, {"temperature": 0.0, "do_sample": True}):
        assert _predict(client, "writer", ["good"], parameters=zero) == cold, zero
    extreme = {"do_sample": True, "temperature": 1e-300, "repetition_penalty": 1e-300}
    assert _predict(client, "writer", ["good"], parameters=extreme)[0]["generated_text"]
    penalized = {"do_sample": True, "repetition_penalty": 1e-45}
    assert _predict(client, "writer", ["good"], parameters=penalized)[0]["generated_text"]
    refused = {
        "max_new_tokens": 13,  # the operator's cap is 12
        "temperature": -0.5,
        "top_p": 1.5,
        "do_sample": "yes",
        "repetition_penalty": float("inf"),
    }
    for name, value in refused.items():
        encoded = "Infinity" if value == float("inf") else json.dumps(value)
        response = client.post(
            "/models/writer/predict",
            content=f'{{"inputs": ["good"], "parameters": {{"{name}": {encoded}}}}}',
            headers={"content-type": "application/json"},
        )
        assert response.status_code == 400, (name, response.text)
        assert f"parameter '{name}' must be" in response.json()["error"]
    over = client.post(
        "/models/writer/predict", json={"inputs": ["good"], "parameters": {"max_new_tokens": 13}}
    )
    assert over.status_code == 400
    assert "parameter 'max_new_tokens' must be an integer from 1 to 12" in over.json()["error"]
    unknown = client.post(
        "/models/writer/predict", json={"inputs": ["good"], "parameters": {"num_beams": 64}}
    )
    assert unknown.status_code == 400
    assert "unknown parameter 'num_beams'" in unknown.json()["error"]
    assert "max_new_tokens" in unknown.json()["error"]
    fixed = client.post(
        "/models/classify/predict", json={"inputs": ["good"], "parameters": {"top_k": 2}}
    )
    assert fixed.status_code == 400
    assert "this model takes: none" in fixed.json()["error"]


@pytest.mark.parametrize("name", ["writer", "rewriter"])
@pytest.mark.parametrize(
    "parameters",
    [
        # Whole numbers: generate's processors take floats only (a ValueError: a 500).
        {"do_sample": True, "temperature": 2},
        {"do_sample": True, "repetition_penalty": 2},
        {"do_sample": True, "top_p": 1, "temperature": 3},
        # Extremes the rules take, taken as the generate routes take them (NaN probabilities
        # in the seq2seq model's generate: a 500).
        {"do_sample": True, "temperature": 1e-300},
        {"do_sample": True, "repetition_penalty": 1e-300},
        {"do_sample": True, "repetition_penalty": 1e-45},
    ],
)
def test_every_generation_parameter_the_rules_take_generates(
    client: TestClient, name: str, parameters: dict[str, Any]
) -> None:
    answers = _predict(client, name, ["good movie", "bad"], parameters=parameters)
    assert [set(answer) for answer in answers] == [{"generated_text"}] * 2


ALLOWED_PIPELINE_PARAMETERS = {
    "classify": ["function_to_apply"],
    "tokens": ["aggregation_strategy"],
    "masks": ["targets"],
}


@pytest.fixture(scope="module")
def open_client(directories: dict[str, Path]) -> Iterator[TestClient]:
    """Models whose operator lets clients set pipeline arguments."""
    specs = [
        loadonce.ModelSpec(
            name=name, artifact=directories[name], options={"request_parameters": allowed}
        )
        for name, allowed in ALLOWED_PIPELINE_PARAMETERS.items()
    ]
    with TestClient(loadonce.create_app(specs)) as test_client:
        yield test_client


@pytest.mark.parametrize(
    ("name", "parameter", "bad", "good"),
    [
        ("classify", "function_to_apply", "bogus", "softmax"),
        ("classify", "function_to_apply", 5, "SIGMOID"),
        ("tokens", "aggregation_strategy", "bogus", "first"),
        ("tokens", "aggregation_strategy", 5, "simple"),
        ("masks", "targets", "", "good"),
        ("masks", "targets", 5, "movie"),
    ],
)
def test_a_pipeline_argument_the_pipeline_cannot_take_is_a_400(
    open_client: TestClient, name: str, parameter: str, bad: Any, good: Any
) -> None:
    """An argument the operator lets clients set, with a value the pipeline fails on (a
    KeyError, TypeError or ValueError from inside it: a 500), is a 400 naming it."""
    text = "good [MASK]" if name == "masks" else "good movie"
    response = open_client.post(
        f"/models/{name}/predict", json={"inputs": [text], "parameters": {parameter: bad}}
    )
    assert response.status_code == 400, response.text
    assert f"parameter '{parameter}' must be" in response.json()["error"]
    assert _predict(open_client, name, [text], parameters={parameter: good})


def test_texts_beyond_the_models_context_are_a_400(client: TestClient) -> None:
    long_text = " ".join(["good"] * (CONTEXT + 5))
    for name in ("classify", "tokens", "writer", "rewriter"):
        response = client.post(f"/models/{name}/predict", json={"inputs": ["good", long_text]})
        assert response.status_code == 400, (name, response.text)
        assert "tokens long; this model takes at most" in response.json()["error"]
    # A text no tokenization could fit is refused before the tokenizer reads it (a prompt of
    # megabytes held the model's thread for seconds, and every request waiting for it).
    for name in ("classify", "writer"):
        huge = client.post(f"/models/{name}/predict", json={"inputs": ["good " * 400_000]})
        assert huge.status_code == 400, huge.text
        assert "2000000 characters long: more than this model reads" in huge.text
    # A prompt that fits, but not with the new tokens asked for.
    prompt = " ".join(["good"] * (CONTEXT - 4))
    response = client.post(
        "/models/writer/predict", json={"inputs": [prompt], "parameters": {"max_new_tokens": 10}}
    )
    assert response.status_code == 400
    assert "exceed the model's context of 32 tokens" in response.json()["error"]
    # Without max_new_tokens it gets what the context leaves.
    [fitted] = _predict(client, "writer", [prompt])
    assert len(fitted["generated_text"].split()) <= CONTEXT
    # A minimum the context cannot hold, without a maximum: a 400 too (generate would warn,
    # then stop short of it).
    response = client.post(
        "/models/writer/predict", json={"inputs": [prompt], "parameters": {"min_new_tokens": 10}}
    )
    assert response.status_code == 400
    assert "at least 10 new tokens exceed the model's context" in response.json()["error"]
    # A minimum at the cap (12 here) is generated, no warning from generate (pytest would fail).
    [longer] = _predict(client, "writer", ["good"], parameters={"min_new_tokens": 12})
    assert longer["generated_text"].startswith("good")


@pytest.mark.parametrize(
    ("name", "inputs", "message"),
    [
        ("masks", ["good movie"], "has no [MASK] token"),
        ("answers", [{"question": "what"}], '{"question": ..., "context": ...}'),
        ("answers", ["what is good"], '{"question": ..., "context": ...}'),
        ("answers", [{"question": 1, "context": "a"}], "object of two strings"),
        ("writer", [3], "each example must be a string"),
        ("rewriter", ["good", "  "], "example 1 holds no token"),
        # A tokenizer that adds no special token gives an empty text no token at all: every
        # task's model failed on it inside (a 500).
        ("writer", ["good", ""], "example 1 holds no token"),
    ],
)
def test_an_example_the_task_cannot_take_is_a_400(
    client: TestClient, name: str, inputs: Any, message: str
) -> None:
    response = client.post(f"/models/{name}/predict", json={"inputs": inputs})
    assert response.status_code == 400
    assert message in response.json()["error"]


def test_open_inference_protocol_generation_and_question_answering(
    directories: dict[str, Path],
) -> None:
    """tritonclient: BYTES prompts with generation parameters; two BYTES inputs for QA."""
    specs = [
        loadonce.ModelSpec(name="writer", artifact=directories["writer"]),
        loadonce.ModelSpec(name="answers", artifact=directories["answers"]),
    ]
    with ThreadedServer(loadonce.create_app(specs)) as running:
        client = triton.InferenceServerClient(running.url.removeprefix("http://"))
        prompts = triton.InferInput("text", [2], "BYTES")
        prompts.set_data_from_numpy(np.array(["good", "bad movie"], dtype=object))
        greedy = {"max_new_tokens": 3, "do_sample": False}
        result = client.infer("writer", [prompts], parameters=greedy)
        texts = [t.decode() for t in result.as_numpy("generated_text")]
        reference = _reference("text-generation", directories["writer"])
        assert texts == [reference(p, **greedy)[0]["generated_text"] for p in ["good", "bad movie"]]
        with pytest.raises(triton.InferenceServerException, match="max_new_tokens"):
            client.infer("writer", [prompts], parameters={"max_new_tokens": 10_000})
        metadata = client.get_model_metadata("answers")
        assert [i["name"] for i in metadata["inputs"]] == ["question", "context"]
        question = triton.InferInput("question", [1], "BYTES")
        question.set_data_from_numpy(np.array(["what is good"], dtype=object))
        context = triton.InferInput("context", [1], "BYTES")
        context.set_data_from_numpy(np.array(["the movie was good"], dtype=object))
        answer = client.infer("answers", [question, context])
        start, end = int(answer.as_numpy("start")[0]), int(answer.as_numpy("end")[0])
        assert answer.as_numpy("answer")[0].decode() == "the movie was good"[start:end]
        client.close()


def test_a_task_loadonce_does_not_serve_is_named_at_load(directories: dict[str, Path]) -> None:
    spec = loadonce.ModelSpec(
        name="audio",
        artifact=directories["classify"],
        options={"task": "text-to-audio"},
    )
    with pytest.raises(loadonce.ModelLoadError, match="not served by loadonce yet; served tasks"):
        TestClient(loadonce.create_app([spec])).__enter__()
    typo = spec.model_copy(update={"options": {"task": "text-clasification"}})
    with pytest.raises(loadonce.ModelLoadError, match="not a transformers task"):
        TestClient(loadonce.create_app([typo])).__enter__()


def _png(seed: int, size: tuple[int, int] = (20, 30), mode: str = "RGB") -> bytes:
    """A small PNG of random pixels (or a blank canvas of another mode), built here."""
    if mode == "RGB":
        rows = np.random.default_rng(seed).integers(0, 255, (*size, 3), dtype=np.uint8)
        image = Image.fromarray(rows)
    else:
        image = Image.new(mode, size)
    stream = io.BytesIO()
    image.save(stream, format="PNG")
    return stream.getvalue()


def test_images_are_classified_in_one_pass_from_their_bytes(
    client: TestClient, directories: dict[str, Path]
) -> None:
    """A ViT directory (no tokenizer) is an image classifier by its config alone; images of
    different sizes, sent as base64 on the JSON route and as BYTES under /v2, are one forward
    pass, each answer the pipeline's for that image alone."""
    images = [_png(seed, size=(20 + 7 * seed, 30)) for seed in range(3)]
    with ForwardPasses("ViTForImageClassification") as passes:
        served = _predict(
            client, "looker", [{"base64": base64.b64encode(i).decode()} for i in images]
        )
    assert passes.shapes == [(3, 3, 32, 32)]
    reference = _reference("image-classification", directories["looker"])
    for image, answer in zip(images, served, strict=True):
        assert _rounded(answer) == _rounded(reference(Image.open(io.BytesIO(image))))
    [features] = _predict(client, "pictures", {"base64": base64.b64encode(images[0]).decode()})
    assert np.shape(features) == (1, 5, 16)  # the class token and four patches
    looker = loadonce.ModelSpec(name="looker", artifact=directories["looker"])
    with ThreadedServer(loadonce.create_app([looker])) as running:
        triton_client = triton.InferenceServerClient(running.url.removeprefix("http://"))
        tensor = triton.InferInput("image", [2], "BYTES")
        tensor.set_data_from_numpy(np.array(images[:2], dtype=object))
        result = triton_client.infer("looker", [tensor])
        documents = [json.loads(d) for d in result.as_numpy("output")]
        assert _rounded(documents) == _rounded(served[:2])
        triton_client.close()


@pytest.mark.parametrize(
    ("example", "message"),
    [
        ("/etc/passwd", "a path or URL is never read"),
        ("https://example.com/cat.png", "a path or URL is never read"),
        ({"base64": "not base64!"}, "base64 is not valid"),
        ({"base64": base64.b64encode(b"GIF89a nonsense").decode()}, "not an image file"),
        ({"base64": base64.b64encode(_png(0, (5000, 5000), "1")).decode()}, "5000 x 5000"),
        # Past PIL's own bomb guard (twice its MAX_IMAGE_PIXELS): refused as ours would.
        (
            {"base64": base64.b64encode(_png(0, (14000, 14000), "1")).decode()},
            "claims more pixels than this model takes",
        ),
    ],
)
def test_an_image_that_is_not_one_is_a_400(client: TestClient, example: Any, message: str) -> None:
    """Never a path or URL (the pipeline would read it), and a small file claiming a huge
    canvas is refused from its header, before its pixels are decoded."""
    response = client.post("/models/looker/predict", json={"inputs": [example]})
    assert response.status_code == 400
    assert message in response.json()["error"]


def test_zero_shot_classification_batches_texts_that_share_their_labels(
    client: TestClient, directories: dict[str, Path]
) -> None:
    examples: list[dict[str, Any]] = [
        {"text": "good movie", "candidate_labels": ["good", "bad"]},
        {"text": "awful", "candidate_labels": ["good", "bad"]},
        {"text": "great movie", "candidate_labels": ["movie"], "multi_label": True},
    ]
    with ForwardPasses("BertForSequenceClassification") as passes:
        served = _predict(client, "chooser", examples)
    # Two groups of labels: a pass of 2 texts x 2 labels, and one of 1 x 1.
    assert sorted(shape[0] for shape in passes.shapes) == [1, 4]
    reference = _reference("zero-shot-classification", directories["chooser"])
    for example, answer in zip(examples, served, strict=True):
        alone = reference(
            example["text"],
            candidate_labels=example["candidate_labels"],
            multi_label=example.get("multi_label", False),
        )
        assert _rounded(answer) == _rounded(alone)
    for bad in ({"text": "good"}, {"text": "good", "candidate_labels": []}, "good"):
        response = client.post("/models/chooser/predict", json={"inputs": [bad]})
        assert response.status_code == 400
        assert "candidate_labels" in response.json()["error"]


# "This example is good." is [UNK] [UNK] is good [UNK] to the test vocabulary: 5 tokens, and a
# pair adds one [SEP] to the text's [CLS] and [SEP].
_HYPOTHESIS_TOKENS = 5 + 1
_FITS_WITH_HYPOTHESIS = " ".join(["good"] * (CONTEXT - 2 - _HYPOTHESIS_TOKENS))


@pytest.mark.parametrize(
    ("example", "message"),
    [
        # The pipeline refuses an empty text from inside (a ValueError: a 500).
        ({"text": "", "candidate_labels": ["good"]}, 'example 0: "text" is empty'),
        # Texts that fit alone, not beside the hypothesis: past the model's positions (a 500).
        (
            {"text": _FITS_WITH_HYPOTHESIS + " good", "candidate_labels": ["bad", "good"]},
            "its text and the hypothesis of the label 'bad' are 33 tokens long",
        ),
        (
            {"text": "good", "candidate_labels": ["bad", " ".join(["good"] * CONTEXT)]},
            "this model takes at most 32",
        ),
        # A label no hypothesis of the context could hold, refused before it is tokenized.
        ({"text": "good", "candidate_labels": ["good " * 10_000]}, "50000 characters long"),
    ],
)
def test_a_zero_shot_pair_the_model_cannot_take_is_a_400(
    client: TestClient, directories: dict[str, Path], example: dict[str, Any], message: str
) -> None:
    response = client.post("/models/chooser/predict", json={"inputs": [example]})
    assert response.status_code == 400, response.text
    assert message in response.json()["error"]
    # The longest text that fits with its hypothesis answers as the pipeline does alone.
    fits = {"text": _FITS_WITH_HYPOTHESIS, "candidate_labels": ["bad", "good"]}
    [answer] = _predict(client, "chooser", [fits])
    reference = _reference("zero-shot-classification", directories["chooser"])
    assert _rounded(answer) == _rounded(reference(fits["text"], candidate_labels=["bad", "good"]))


def test_zero_shot_truncation_cuts_the_text_beside_the_hypothesis(
    directories: dict[str, Path],
) -> None:
    spec = loadonce.ModelSpec(
        name="chooser",
        artifact=directories["chooser"],
        options={
            "task": "zero-shot-classification",
            "call": {"truncation": True},
            "request_parameters": ["hypothesis_template"],
        },
    )
    with TestClient(loadonce.create_app([spec])) as local:
        labels = ["bad", "good"]
        [cut] = _predict(local, "chooser", [{"text": "good " * 40, "candidate_labels": labels}])
        [kept] = _predict(
            local, "chooser", [{"text": _FITS_WITH_HYPOTHESIS, "candidate_labels": labels}]
        )
        assert cut["scores"] == pytest.approx(kept["scores"])
        # A hypothesis that leaves no room for the text cannot be cut: a 400 still.
        too_long = {"text": "good", "candidate_labels": [" ".join(["good"] * CONTEXT)]}
        response = local.post("/models/chooser/predict", json={"inputs": [too_long]})
        assert response.status_code == 400, response.text
        # A template the pipeline cannot put a label in (it raised inside: a 500).
        for template in ("no label here", "{0} {1}"):
            response = local.post(
                "/models/chooser/predict",
                json={
                    "inputs": [{"text": "good", "candidate_labels": labels}],
                    "parameters": {"hypothesis_template": template},
                },
            )
            assert response.status_code == 400, response.text
            assert "hypothesis_template" in response.json()["error"]
    # The operator's own template, wrong: said at load, not as every request's 500.
    wrong = spec.model_copy(
        update={
            "options": {"task": "zero-shot-classification", "call": {"hypothesis_template": "x"}}
        }
    )
    with pytest.raises(loadonce.ModelLoadError, match="hypothesis_template must be"):
        TestClient(loadonce.create_app([wrong])).__enter__()


def _clip(seed: int, samples: int) -> list[float]:
    clip: list[float] = (
        np.random.default_rng(seed).standard_normal(samples).astype(np.float32).tolist()
    )
    return clip


@pytest.mark.parametrize(
    ("name", "task", "model_class"),
    [
        ("listener", "audio-classification", "Wav2Vec2ForSequenceClassification"),
        ("transcriber", "automatic-speech-recognition", "Wav2Vec2ForCTC"),
    ],
)
def test_clips_of_equal_length_share_a_pass_and_answer_as_alone(
    client: TestClient, directories: dict[str, Path], name: str, task: str, model_class: str
) -> None:
    """Speech models read the clip's samples (at the model's rate) from a list of numbers.
    Without an attention mask, padding would change a raw-waveform model's answers: only
    clips of equal length share a forward pass, and each answers as it would alone."""
    clips = [_clip(0, 1600), _clip(1, 2400), _clip(2, 1600)]
    with ForwardPasses(model_class) as passes:
        served = _predict(client, name, clips)
    assert sorted(shape[0] for shape in passes.shapes) == [1, 2]
    reference = _reference(task, directories[name])
    for clip, answer in zip(clips, served, strict=True):
        assert _rounded(answer) == _rounded(reference(np.array(clip, dtype=np.float32)))
    [one] = _predict(client, name, clips[1])  # a single clip: one list of samples
    assert _rounded(one) == _rounded(served[1])


def test_a_clip_the_speech_model_cannot_take_is_a_400(client: TestClient) -> None:
    too_short = client.post("/models/transcriber/predict", json={"inputs": [[0.5] * 5]})
    assert too_short.status_code == 400
    # Measured at load: the model's convolutions need 45 samples (kernels 10 and 8, strides
    # 5 and 4, and more than one value per channel for the group norm).
    assert "5 samples long; this model needs at least 45" in too_short.json()["error"]
    too_long = client.post("/models/listener/predict", json={"inputs": [[0.0] * 480_016]})
    assert too_long.status_code == 400
    assert "30.0 s long; this model takes at most 30 s" in too_long.json()["error"]
    for bad in ([["a", "b"]], [[0.1, None]], [[[0.1, 0.2]]]):
        response = client.post("/models/listener/predict", json={"inputs": bad})
        assert response.status_code == 400, bad
    infinite = client.post(
        "/models/listener/predict",
        content='{"inputs": [[0.1, Infinity, 0.2]]}',
        headers={"content-type": "application/json"},
    )
    assert infinite.status_code == 400
    assert "samples must be finite numbers" in infinite.json()["error"]


def test_a_request_of_many_texts_runs_in_bounded_passes(client: TestClient) -> None:
    """A pass's memory grows with its examples: a request of 70 texts is passes of at most 64
    (one request may hold up to max_request_examples), for the pipelines and for loadonce's
    own question answering alike."""
    with ForwardPasses("BertForTokenClassification", "BertForQuestionAnswering") as passes:
        _predict(client, "tokens", ["good movie"] * 70)
        _predict(client, "answers", [{"question": "what", "context": "good"}] * 70)
    assert [shape[0] for shape in passes.shapes] == [64, 6, 64, 6]


@pytest.mark.parametrize("tokenizer_length", [None, 512])
def test_truncation_cuts_long_texts_when_the_tokenizer_sets_no_length(
    directories: dict[str, Path], tmp_path: Path, tokenizer_length: int | None
) -> None:
    # The tokenizer built here sets no model_max_length: truncation cut nothing, and a long
    # text failed inside the model (a 500) instead of being cut to the model's context. One
    # that sets a length past the model's 32 positions cut too little: a 500 as well.
    artifact = directories["classify"]
    if tokenizer_length is not None:
        artifact = tmp_path / "classify"
        shutil.copytree(directories["classify"], artifact)
        config = json.loads((artifact / "tokenizer_config.json").read_text())
        config["model_max_length"] = tokenizer_length
        (artifact / "tokenizer_config.json").write_text(json.dumps(config))
    spec = loadonce.ModelSpec(name="cut", artifact=artifact, options={"call": {"truncation": True}})
    with TestClient(loadonce.create_app([spec])) as local:
        words = ["good", "bad", "movie"] * 20
        [long] = _predict(local, "cut", [" ".join(words)])
        # [CLS] and [SEP] take two of the 32 positions.
        [kept] = _predict(local, "cut", [" ".join(words[: CONTEXT - 2])])
        assert long == kept
        [cut] = _predict(local, "cut", ["good " * 400_000])  # cut before it is tokenized
        assert cut == _predict(local, "cut", [" ".join(["good"] * (CONTEXT - 2))])[0]


def _texts(*texts: str, **parameters: Any) -> dict[str, Any]:
    tensor = {"name": "text", "datatype": "BYTES", "shape": [len(texts)], "data": list(texts)}
    return {"inputs": [tensor], **({"parameters": parameters} if parameters else {})}


def _images(*pngs: bytes) -> Request:
    """Images as BYTES in binary (JSON carries text only)."""
    data = b"".join(len(png).to_bytes(4, "little") + png for png in pngs)
    tensor = {"name": "image", "datatype": "BYTES", "shape": [len(pngs)]}
    parameters = {"binary_data_size": len(data)}
    return binary_request({"inputs": [{**tensor, "parameters": parameters}]}, data)


def _clips(*clips: list[float]) -> dict[str, Any]:
    shape = [len(clips), len(clips[0])]
    data = [sample for clip in clips for sample in clip]
    return {"inputs": [{"name": "audio", "datatype": "FP32", "shape": shape, "data": data}]}


def _questions(count: int) -> dict[str, Any]:
    return {
        "inputs": [
            {"name": "question", "datatype": "BYTES", "shape": [count], "data": ["what"] * count},
            {
                "name": "context",
                "datatype": "BYTES",
                "shape": [count],
                "data": ["good movie"] * count,
            },
        ]
    }


DOCUMENTS = [("output", "BYTES", [-1])]
# What each task's metadata says before any request: (name, datatype, shape) per output.
TASK_OUTPUTS = {
    "classify": [("label", "BYTES", [-1]), ("score", "FP64", [-1])],
    "ranker": DOCUMENTS,  # top_k a request may set: a list of labels, or one
    "tokens": DOCUMENTS,
    "masks": DOCUMENTS,
    "features": DOCUMENTS,
    "writer": [("generated_text", "BYTES", [-1])],
    "rewriter": [("generated_text", "BYTES", [-1])],
    "answers": [
        ("answer", "BYTES", [-1]),
        ("score", "FP32", [-1]),
        ("start", "INT64", [-1]),
        ("end", "INT64", [-1]),
    ],
    "looker": DOCUMENTS,
    "pictures": DOCUMENTS,
    "listener": DOCUMENTS,
    "transcriber": [("text", "BYTES", [-1])],
}


def test_each_tasks_output_metadata_before_any_request_is_what_its_answers_hold(
    directories: dict[str, Path],
) -> None:
    """Declared at load, per task: never learnt from a first answer, which was then false for
    the next (feature extraction's FP64 [-1, 1, 4, 16] from a text of 4 tokens; a text
    without entities made token classification's FP64 [-1, 0]). Texts of different lengths,
    one and several per request: a list per text (entities, filled masks, token vectors,
    ranked labels) is one JSON document per text; an object of single values one tensor
    per value."""
    options: dict[str, dict[str, Any]] = {
        "writer": {"max_new_tokens": 3},
        "rewriter": {"max_new_tokens": 3},
        "ranker": {"request_parameters": ["top_k"]},
    }
    artifacts = {**directories, "ranker": directories["classify"]}
    specs = [
        loadonce.ModelSpec(name=name, artifact=artifacts[name], options=options.get(name, {}))
        for name in TASK_OUTPUTS
    ]
    texts: list[Request] = [
        _texts("good"),
        _texts("bad movie", "great", "awful awful movie it was bad"),
    ]
    images = [_images(_png(0)), _images(_png(1), _png(2, size=(40, 20)))]
    clips: list[Request] = [_clips(_clip(0, 1600)), _clips(_clip(1, 800), _clip(2, 800))]
    requests: dict[str, list[Request]] = {
        "masks": [_texts("good [MASK]"), _texts("[MASK] movie it was [MASK]", "great [MASK]")],
        "answers": [_questions(1), _questions(2)],
        "looker": images,
        "pictures": images,
        "listener": clips,
        "transcriber": clips,
        "ranker": [*texts, _texts("good", "bad movie", top_k=2)],
    }
    with TestClient(loadonce.create_app(specs)) as http:
        for name, expected in TASK_OUTPUTS.items():
            described = assert_answers_as_described(http, name, requests.get(name, texts))
            assert [(o["name"], o["datatype"], o["shape"]) for o in described] == expected
        # A batch without any entity: a list of no objects per text, still one document each.
        entities = http.post("/v2/models/tokens/infer", json=_texts("good", "good")).json()
        assert [json.loads(d) for d in entities["outputs"][0]["data"]] == [[], []]
        answer = http.post("/v2/models/features/infer", json=_texts("good movie")).json()
        [vectors] = answer["outputs"]
        assert np.shape(json.loads(vectors["data"][0])) == (1, 4, 16)  # [CLS] good movie [SEP]


def test_a_zero_shot_answer_is_its_one_output(client: TestClient) -> None:
    """Its object of labels and scores, of a length each example decides, is its one
    declared output (one JSON document per example under /v2), also when picked by name."""
    [output] = client.get("/v2/models/chooser").json()["outputs"]
    assert output == {"name": "output", "datatype": "BYTES", "shape": [-1]}
    example = {"text": "good movie", "candidate_labels": ["good", "bad"]}
    [whole] = _predict(client, "chooser", [example])
    assert _predict(client, "chooser", [example], outputs=["output"]) == [{"output": whole}]
