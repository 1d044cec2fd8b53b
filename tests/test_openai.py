"""The OpenAI-compatible routes (/v1), driven by the real ``openai`` client against a real
server (one per module), and in-process for the answers' details: completions and chat,
whole and streamed, embeddings, and every refusal in OpenAI's error body."""

from __future__ import annotations

import base64
import gzip
import json
import logging
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2 as httpx
import numpy as np
import openai
import pytest
import torch
from fastapi import FastAPI
from fastapi.testclient import TestClient
from transformers import BertConfig, BertModel, BertTokenizer, GPT2Config, GPT2LMHeadModel

import loadonce
from loadonce.core.errors import NewTokensLimitError
from loadonce.core.generation import GenerationRequest, IteratorEngine
from loadonce.server.http_protocol import guarded_protocol
from tests.servers import ThreadedServer, wait_until
from tests.test_generation_engine import SMALL
from tests.test_transformers_tasks import CONTEXT, _word_tokenizer

KEY = "openai-test-key-0123456789"
WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "good", "bad", "movie", "it", "was"]


class Echo(loadonce.Predictor):
    """Generates the prompt's words back, one word a token."""

    max_new_tokens = 64
    pause_s = 0.0

    def predict(self, batch: Any) -> list[Any]:
        return list(batch)

    def generate(self, request: GenerationRequest) -> Iterator[str]:
        for word in self.words(request):
            time.sleep(self.pause_s)
            yield word + " "

    def words(self, request: GenerationRequest) -> list[str]:
        return (request.prompt or "").split()


class Slow(Echo):
    pause_s = 0.05


class Chat(Echo):
    """Takes chat messages too: answers with the last message's words, after its role."""

    def words(self, request: GenerationRequest) -> list[str]:
        if request.messages is None:
            return super().words(request)
        last = request.messages[-1]
        return [f"{last['role']}:", *str(last["content"]).split()]

    def generation_engine(self) -> IteratorEngine:
        return _MessagesEngine(
            self.generate, default_new_tokens=self.max_new_tokens, max_new_tokens=64
        )


class _MessagesEngine(IteratorEngine):
    def check(self, request: GenerationRequest) -> None:
        if request.max_new_tokens is not None and request.max_new_tokens > 64:
            raise NewTokensLimitError("max_tokens must be at most 64")  # as the engines say it


class FailsMidway(Echo):
    def generate(self, request: GenerationRequest) -> Iterator[str]:
        yield "first "
        raise RuntimeError("broke down at /srv/secret/weights.bin")


@pytest.fixture(scope="module")
def features(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_bert(tmp_path_factory.mktemp("features"))


def tiny_bert(directory: Path) -> Path:
    """A tiny BERT feature-extraction model in ``directory``, random weights, built here."""
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(WORDS),
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=32,
    )
    BertModel(config).save_pretrained(directory)
    BertTokenizer(vocab={word: i for i, word in enumerate(WORDS)}).save_pretrained(directory)
    return directory


def _specs(features: Path) -> list[loadonce.ModelSpec]:
    return [
        loadonce.ModelSpec(name="echo", loader=Echo),
        loadonce.ModelSpec(name="slow", loader=Slow),
        loadonce.ModelSpec(name="chat", loader=Chat),
        loadonce.ModelSpec(name="fails", loader=FailsMidway),
        loadonce.ModelSpec(name="features", artifact=features),
        loadonce.ModelSpec(name="adder", loader=lambda: lambda batch: [sum(x) for x in batch]),
    ]


@pytest.fixture(scope="module")
def app(features: Path) -> FastAPI:
    return loadonce.create_app(_specs(features), access=loadonce.AccessKeys(inference=(KEY,)))


@pytest.fixture(scope="module")
def server(app: FastAPI) -> Iterator[ThreadedServer]:
    with ThreadedServer(app) as running:
        yield running


@pytest.fixture(scope="module")
def client(server: ThreadedServer) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=f"{server.url}/v1", api_key=KEY, max_retries=0) as made:
        yield made


@pytest.fixture(scope="module")
def local(features: Path) -> Iterator[TestClient]:
    app = loadonce.create_app(_specs(features))
    with TestClient(app, raise_server_exceptions=False) as test_client:
        yield test_client


def test_the_client_lists_the_models_that_generate_or_embed(client: openai.OpenAI) -> None:
    listed = {model.id: model for model in client.models.list()}
    assert set(listed) == {"echo", "slow", "chat", "fails", "features"}  # not "adder"
    assert listed["echo"].owned_by == "loadonce"
    assert client.models.retrieve("features").id == "features"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("adder")


@pytest.mark.parametrize("model_id", ["org/echo", "a/b/c", "echo/", "nope", "adder"])
def test_retrieving_an_id_no_model_has_is_model_not_found(
    client: openai.OpenAI, model_id: str
) -> None:
    """An id with a slash (the client sends it as one segment, ``org%2Fecho``) was a 404 of
    no route: no code, and in a user's app the app's own body, not OpenAI's."""
    with pytest.raises(openai.NotFoundError) as missing:
        client.models.retrieve(model_id)
    assert (missing.value.code, missing.value.param) == ("model_not_found", "model")


def test_a_completion_whole_and_streamed(client: openai.OpenAI) -> None:
    whole = client.completions.create(model="echo", prompt="good movie it was", max_tokens=3)
    [choice] = whole.choices
    assert (choice.text, choice.finish_reason) == ("good movie it ", "length")
    assert whole.usage is not None
    assert (whole.usage.completion_tokens, whole.usage.total_tokens) == (3, 3)

    stream = client.completions.create(
        model="echo",
        prompt="good movie it was",
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    texts = [c.choices[0].text for c in chunks if c.choices and c.choices[0].finish_reason is None]
    assert texts == ["good ", "movie ", "it ", "was "]
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 4


def test_nulls_the_reference_allows_are_taken(client: openai.OpenAI) -> None:
    """``stream`` and ``include_usage`` are "boolean or null" (the client sends null for
    None), and top_p's range starts at 0: each was a 400."""
    whole = client.completions.create(model="echo", prompt="good movie", stream=None, top_p=0)
    assert whole.choices[0].text == "good movie "
    chat = client.chat.completions.create(
        model="chat", messages=[{"role": "user", "content": "good"}], stream=None
    )
    assert chat.choices[0].finish_reason is not None
    stream = client.completions.create(  # the client's types do not say null: sent as such
        model="echo",
        prompt="good",
        stream=True,
        extra_body={"stream_options": {"include_usage": None}},
    )
    chunks = list(stream)
    assert chunks[-1].usage is None, "null is not asking for usage"


def test_a_stop_string_ends_the_text_before_it(client: openai.OpenAI) -> None:
    answer = client.completions.create(model="echo", prompt="good bad movie", stop=["bad", "x"])
    assert (answer.choices[0].text, answer.choices[0].finish_reason) == ("good ", "stop")


def test_a_chat_completion_whole_and_streamed(client: openai.OpenAI) -> None:
    messages: list[Any] = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": [{"type": "text", "text": "good movie"}]},
    ]
    whole = client.chat.completions.create(model="chat", messages=messages)
    assert whole.object == "chat.completion"
    message = whole.choices[0].message
    assert (message.role, message.content) == ("assistant", "user: good movie ")

    stream = client.chat.completions.create(
        model="chat", messages=messages, max_completion_tokens=2, stream=True
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "user: good "
    assert chunks[-1].choices[0].finish_reason == "length"
    assert all(c.object == "chat.completion.chunk" for c in chunks)


def test_embeddings_are_the_mean_of_the_token_vectors(
    client: openai.OpenAI, local: TestClient
) -> None:
    texts = ["good movie", "it was bad"]
    packed = client.embeddings.create(model="features", input=texts)  # base64, the default
    floats = client.embeddings.create(model="features", input=texts, encoding_format="float")
    tokens = local.post("/models/features/predict", json={"inputs": texts}).json()["outputs"]
    for index, text_tokens in enumerate(tokens):
        expected = np.mean(np.asarray(text_tokens[0]), axis=0)
        np.testing.assert_allclose(packed.data[index].embedding, expected, rtol=1e-5)
        np.testing.assert_allclose(floats.data[index].embedding, expected, rtol=1e-5)
    assert packed.usage.prompt_tokens == 4 + 5  # each text with its [CLS] and [SEP]


def test_a_compressed_body_is_read(local: TestClient) -> None:
    body = json.dumps({"model": "features", "input": ["good movie"]}).encode()
    headers = {"content-type": "application/json", "content-encoding": "gzip"}
    answer = local.post("/v1/embeddings", content=gzip.compress(body), headers=headers)
    assert answer.status_code == 200, answer.text
    assert (
        answer.json()["data"][0]["embedding"]
        == local.post(
            "/v1/embeddings", content=body, headers={"content-type": "application/json"}
        ).json()["data"][0]["embedding"]
    )


def test_an_embedding_json_cannot_carry_is_said_to_be_the_models(tmp_path: Path) -> None:
    """NaN in a vector: base64 carries it; JSON numbers cannot, and the encoder's ValueError
    was answered as the server's failure."""
    directory = tiny_bert(tmp_path / "nan")
    broken = BertModel.from_pretrained(directory)
    with torch.no_grad():
        broken.embeddings.LayerNorm.weight.fill_(float("nan"))
    broken.save_pretrained(directory)
    spec = loadonce.ModelSpec(name="nan", artifact=directory)
    with TestClient(loadonce.create_app([spec]), raise_server_exceptions=False) as http:
        body = {"model": "nan", "input": ["good movie"]}
        packed = http.post("/v1/embeddings", json={**body, "encoding_format": "base64"})
        assert packed.status_code == 200, packed.text
        vector = np.frombuffer(base64.b64decode(packed.json()["data"][0]["embedding"]), "<f4")
        assert np.isnan(vector).all()
        floats = http.post("/v1/embeddings", json={**body, "encoding_format": "float"})
    assert floats.status_code == 500
    message = floats.json()["error"]["message"]
    assert "model 'nan' answered an embedding holding NaN" in message


def test_refusals_are_the_clients_own_exceptions(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError, match="must be from 1 to 64"):
        client.completions.create(model="echo", prompt="good", max_tokens=65)
    with pytest.raises(openai.BadRequestError) as refused:
        client.completions.create(model="echo", prompt="good", n=2)
    assert refused.value.param == "n"
    with pytest.raises(openai.NotFoundError) as missing:
        client.completions.create(model="nope", prompt="good")
    assert missing.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError, match="takes a prompt, not chat messages"):
        client.chat.completions.create(model="echo", messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.BadRequestError, match="does not embed text"):
        client.embeddings.create(model="echo", input="good")


def test_an_api_key_is_required_and_taken_as_a_bearer_token(server: ThreadedServer) -> None:
    stranger = openai.OpenAI(
        base_url=f"{server.url}/v1", api_key="not-the-key-0123456789", max_retries=0
    )
    with stranger, pytest.raises(openai.AuthenticationError) as refused:
        stranger.models.list()
    assert refused.value.code == "invalid_api_key"
    # The client never sends no key; another one may: the refusal is OpenAI's body too.
    keyless = httpx.post(f"{server.url}/v1/completions", json=_body("completions"))
    assert keyless.status_code == 401
    assert keyless.json()["error"]["code"] == "invalid_api_key"
    assert "API key is required" in keyless.json()["error"]["message"]


def test_a_deadline_during_generation_keeps_the_text_and_says_deadline(
    client: openai.OpenAI,
) -> None:
    """X-Request-Timeout, as on every route: past it, the text generated so far is answered,
    with finish_reason "deadline" (which the client passes on as it is)."""
    answer = client.completions.create(
        model="slow",
        prompt=" ".join(["good"] * 60),
        max_tokens=60,
        extra_headers={"X-Request-Timeout": "0.6"},
    )
    [choice] = answer.choices
    assert choice.finish_reason == "deadline"  # type: ignore[comparison-overlap]
    assert 0 < len(choice.text.split()) < 60


def test_a_failure_after_the_stream_began_is_its_last_event(client: openai.OpenAI) -> None:
    stream = client.completions.create(model="fails", prompt="good", stream=True)
    seen = iter(stream)
    assert next(seen).choices[0].text == "first "
    with pytest.raises(openai.APIError, match="the model raised RuntimeError") as failed:
        next(seen)
    assert "/srv" not in str(failed.value)


def test_a_stream_its_client_leaves_stops_generating(
    client: openai.OpenAI, server: ThreadedServer, app: FastAPI
) -> None:
    """The client closes the stream after its first chunk: the sequence leaves the model's
    batch long before its 60 words (3 s) would have ended it."""
    state = loadonce.LoadonceState.on(app)
    assert state is not None
    generation = state.registry.get("slow").generation
    assert generation is not None
    stream = client.completions.create(
        model="slow", prompt=" ".join(["good"] * 60), max_tokens=60, stream=True
    )
    assert next(iter(stream)).choices[0].text == "good "
    assert generation.generating == 1
    stream.close()
    wait_until(lambda: generation.generating == 0, 2.0, "the generation to stop")


# In-process: the answers' details.


@pytest.mark.parametrize(
    ("route", "field", "value"),
    [
        ("completions", "echo", True),
        ("completions", "logprobs", 2),
        ("completions", "best_of", 3),
        ("completions", "suffix", "end"),
        ("completions", "presence_penalty", 0.5),
        ("chat/completions", "tools", [{"type": "function"}]),
        ("chat/completions", "logprobs", True),
        ("chat/completions", "response_format", {"type": "json_object"}),
        ("embeddings", "dimensions", 8),
        # Of another JSON type than the off value, though Python's == takes them as it.
        ("completions", "n", True),
        ("completions", "n", 1.0),
        ("completions", "best_of", True),
        ("completions", "echo", 0),
        ("chat/completions", "logprobs", 0),
    ],
)
def test_what_loadonce_does_not_do_is_refused_by_name(
    local: TestClient, route: str, field: str, value: Any
) -> None:
    body = _body(route) | {field: value}
    response = local.post(f"/v1/{route}", json=body)
    assert response.status_code == 400
    error = response.json()["error"]
    assert (error["param"], error["type"]) == (field, "invalid_request_error")
    assert error["message"].startswith(f"'{field}' is not supported")


def test_off_values_and_unknown_fields_are_accepted(local: TestClient) -> None:
    body = _body("completions") | {"echo": False, "n": 1, "best_of": 1, "user": "u", "foo": 1}
    assert local.post("/v1/completions", json=body).status_code == 200
    penalties = {"presence_penalty": 0, "frequency_penalty": 0.0}  # a number: 0 or 0.0
    assert local.post("/v1/completions", json=_body("completions") | penalties).is_success
    chat = _body("chat/completions") | {"tools": [], "logprobs": False, "store": True}
    assert local.post("/v1/chat/completions", json=chat).status_code == 200


_CHAT = {"model": "chat", "messages": [{"role": "user", "content": "good"}]}


def _body(route: str) -> dict[str, Any]:
    if route == "completions":
        return {"model": "echo", "prompt": "good movie"}
    if route == "chat/completions":
        return {"model": "chat", "messages": [{"role": "user", "content": "good"}]}
    return {"model": "features", "input": "good"}


@pytest.mark.parametrize(
    ("body", "param", "words"),
    [
        ({"model": "echo"}, "prompt", "Field required"),
        ({"model": "echo", "prompt": ["good", "bad"]}, "prompt", "several prompts"),
        ({"model": "echo", "prompt": [1, 2]}, "prompt", "token ids"),
        # One token id (out of any vocabulary or not) was read as a list of one prompt, then
        # "must be a string": the client was not told why.
        ({"model": "echo", "prompt": [99999999]}, "prompt", "token ids"),
        ({"model": "echo", "prompt": None}, "prompt", "must be a string"),
        ({"model": "echo", "prompt": "a", "stop": "x" * 129}, "stop", "at most 128 characters"),
        ({"model": "echo", "prompt": "a", "stop": ["a", "b", "c", "d", "e"]}, "stop", "at most 4"),
        ({"model": "echo", "prompt": "a", "temperature": 3}, "temperature", "less than"),
        ({"model": "echo", "prompt": "a", "stream": "maybe"}, "stream", "boolean"),
        # Strict, as OpenAI's own API: no text for numbers, no booleans for counts.
        ({"model": "echo", "prompt": "a", "temperature": "0.5"}, "temperature", "valid number"),
        ({"model": "echo", "prompt": "a", "max_tokens": True}, "max_tokens", "valid integer"),
        ({"model": "echo", "prompt": "a", "temperature": float("nan")}, "temperature", "finite"),
        # A field of several types is named alone, not with the type tried ("stop.str").
        ({"model": "echo", "prompt": "a", "stop": 5}, "stop", "valid string"),
        ({"model": "echo", "prompt": "a", "stream": "yes"}, "stream", "valid boolean"),
        # Over the model's cap: named as the other fields are (param was null).
        ({"model": "echo", "prompt": "a", "max_tokens": 100_000}, "max_tokens", "from 1 to 64"),
        # Named as its field (param was "body").
        (
            {"model": "echo", "prompt": "a", "stream_options": {"include_usage": True}},
            "stream_options",
            "only allowed when stream is true",
        ),
        # Fields that change nothing in the answer, of OpenAI's type still (user: 5 was taken).
        ({"model": "echo", "prompt": "a", "user": 5}, "user", "valid string"),
        (
            {
                "model": "echo",
                "prompt": "a",
                "stream": True,
                "stream_options": {"include_usage": 1},
            },
            "stream_options.include_usage",
            "boolean",
        ),
    ],
)
def test_a_body_that_is_not_valid_is_a_400_naming_the_field(
    local: TestClient, body: dict[str, Any], param: str, words: str
) -> None:
    headers = {"content-type": "application/json"}  # NaN as Python's json writes it
    response = local.post("/v1/completions", content=json.dumps(body), headers=headers)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == param
    assert words in error["message"]


@pytest.mark.parametrize(
    ("messages", "param"),
    [
        ([], "messages"),
        ([{"role": "tool", "content": "x"}], "messages.0.role"),
        # Not a string (not even hashable): a 500 before.
        ([{"role": ["user"], "content": "x"}], "messages.0.role"),
        ([{"role": {"a": 1}, "content": "x"}], "messages.0.role"),
        ([{"role": "user", "content": [{"type": "image_url"}]}], "messages.0.content"),
        ([{"role": "user"}], "messages.0.content"),
        (["hello"], "messages.0"),
    ],
)
def test_chat_messages_are_checked(
    local: TestClient, messages: list[dict[str, Any]], param: str
) -> None:
    response = local.post("/v1/chat/completions", json={"model": "chat", "messages": messages})
    assert response.status_code == 400
    assert response.json()["error"]["param"] == param


def test_a_limit_over_the_cap_is_named_as_the_client_sent_it(local: TestClient) -> None:
    """The chat route takes max_tokens' new name: its error named max_tokens, a field the
    client never sent."""
    for field in ("max_tokens", "max_completion_tokens"):
        body = {"model": "chat", "messages": [{"role": "user", "content": "x"}], field: 100_000}
        response = local.post("/v1/chat/completions", json=body)
        assert response.status_code == 400
        assert response.json()["error"]["param"] == field


def test_a_prompt_list_of_one_and_the_developer_role_are_taken(local: TestClient) -> None:
    one = local.post("/v1/completions", json={"model": "echo", "prompt": ["good"]})
    assert one.json()["choices"][0]["text"] == "good "
    messages = [{"role": "developer", "content": "good"}]
    chat = local.post("/v1/chat/completions", json={"model": "chat", "messages": messages})
    assert chat.json()["choices"][0]["message"]["content"] == "system: good "


def test_errors_before_any_route_are_openais_too(local: TestClient) -> None:
    missing = local.post("/v1/nowhere", json={})
    assert missing.status_code == 404
    assert set(missing.json()["error"]) == {"message", "type", "param", "code"}
    wrong = local.get("/v1/completions")
    assert (wrong.status_code, wrong.headers["allow"]) == (405, "POST")
    assert wrong.json()["error"]["type"] == "invalid_request_error"
    not_json = local.post("/v1/completions", content=b"{", headers={"X-Request-ID": "bad-1"})
    assert not_json.status_code == 400
    assert not_json.headers["x-request-id"] == "bad-1"
    timeout = local.post(
        "/v1/completions", json=_body("completions"), headers={"X-Request-Timeout": "soon"}
    )
    assert timeout.status_code == 400
    assert "X-Request-Timeout" in timeout.json()["error"]["message"]


def test_a_model_failure_is_a_500_without_details(local: TestClient) -> None:
    response = local.post("/v1/completions", json={"model": "fails", "prompt": "good"})
    assert response.status_code == 500
    error = response.json()["error"]
    assert error["type"] == "server_error"
    assert "/srv" not in error["message"]
    assert response.headers["x-request-id"] in error["message"]


def test_a_streamed_answer_is_openais_event_stream(local: TestClient) -> None:
    body = _body("chat/completions") | {"stream": True, "stream_options": {"include_usage": True}}
    with local.stream("POST", "/v1/chat/completions", json=body) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        events = [line[len("data: ") :] for line in response.iter_lines() if line]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(event) for event in events[:-1]]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert [c["choices"][0]["finish_reason"] for c in chunks[:-1]][-1] == "stop"
    assert all(c["usage"] is None for c in chunks[:-1])
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"]["completion_tokens"] == 2  # "user:" and "good"
    assert len({c["id"] for c in chunks}) == 1


@pytest.mark.parametrize("given", [[1, 2], [[1, 2], [3]], [], None, ["good", 3]])
def test_embeddings_take_text_only(local: TestClient, given: Any) -> None:
    response = local.post("/v1/embeddings", json={"model": "features", "input": given})
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "input"


@pytest.mark.parametrize(
    ("given", "param"), [("", "input"), (["good", ""], "input.1"), ([""], "input.0")]
)
def test_embeddings_of_an_empty_string_are_refused(
    local: TestClient, given: Any, param: str
) -> None:
    # OpenAI: input "cannot be an empty string"; "" was answered a vector.
    response = local.post("/v1/embeddings", json={"model": "features", "input": given})
    assert response.status_code == 400
    error = response.json()["error"]
    assert (error["param"], "cannot be an empty string" in error["message"]) == (param, True)


@pytest.mark.parametrize(
    ("route", "body", "param"),
    [
        # A model that does not generate: param was null.
        ("completions", {"model": "adder", "prompt": "good"}, "model"),
        (
            "chat/completions",
            {"model": "features", "messages": [{"role": "user", "content": "a"}]},
            "model",
        ),
        # A model that takes a prompt only, sent messages: the messages are at fault.
        (
            "chat/completions",
            {"model": "echo", "messages": [{"role": "user", "content": "a"}]},
            "messages",
        ),
        ("chat/completions", {**_CHAT, "store": "yes"}, "store"),
        ("embeddings", {"model": "features", "input": "good", "user": ["u"]}, "user"),
    ],
)
def test_a_refusal_names_the_field_at_fault(
    local: TestClient, route: str, body: dict[str, Any], param: str
) -> None:
    response = local.post(f"/v1/{route}", json=body)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param


def _message(**fields: Any) -> dict[str, Any]:
    return {**_CHAT, "messages": [{"role": "user", "content": "good", **fields}]}


_TOOL_CALL = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}


@pytest.mark.parametrize(
    ("route", "body", "param", "code"),
    [
        # The field's own checks: OpenAI's code for each kind of fault (code was null).
        ("completions", {"model": "echo"}, "prompt", "missing_required_parameter"),
        ("completions", {**_body("completions"), "max_tokens": 0}, "max_tokens",
         "integer_below_min_value"),
        ("completions", {**_body("completions"), "max_tokens": 100_000}, "max_tokens",
         "integer_above_max_value"),
        ("completions", {**_body("completions"), "temperature": 3}, "temperature",
         "decimal_above_max_value"),
        ("completions", {**_body("completions"), "top_p": -1}, "top_p",
         "decimal_below_min_value"),
        ("completions", {**_body("completions"), "temperature": "0.5"}, "temperature",
         "invalid_type"),
        ("completions", {**_body("completions"), "stop": list("abcde")}, "stop",
         "array_above_max_length"),
        ("completions", {**_body("completions"), "stop": ""}, "stop", "empty_string"),
        ("completions", {"model": "echo", "prompt": []}, "prompt", "empty_array"),
        ("completions", {"model": "echo", "prompt": {"a": 1}}, "prompt", "invalid_type"),
        ("completions", {**_body("completions"), "n": 2}, "n", "unsupported_value"),
        ("chat/completions", {**_CHAT, "messages": []}, "messages", "empty_array"),
        ("chat/completions", {**_CHAT, "messages": ["good"]}, "messages.0", "invalid_type"),
        ("embeddings", {"model": "features", "input": []}, "input", "empty_array"),
        ("embeddings", {"model": "features", "input": ""}, "input", "empty_string"),
        ("embeddings", {"model": "features", "input": 5}, "input", "invalid_type"),
        ("embeddings", {"model": "", "input": "good"}, "model", "empty_string"),
        ("embeddings", {"model": "features", "input": "a", "encoding_format": "hex"},
         "encoding_format", "invalid_value"),
        # More texts than the model takes in one request: the list is at fault, a 400 (was
        # a 413 without param, the client's APIStatusError, as for a body too large).
        ("embeddings", {"model": "features", "input": ["good"] * 1025}, "input",
         "array_above_max_length"),
        # What a message holds that loadonce would have dropped or taken as it is: a tool's
        # turn and an assistant's calls (answered as if the calls never were), an empty
        # list of parts (answered as an empty message), a name that is not a string.
        ("chat/completions", _message(role="tool", tool_call_id="c1"), "messages.0.role",
         "unsupported_value"),
        ("chat/completions", _message(role="function", name="f"), "messages.0.role",
         "unsupported_value"),
        ("chat/completions", _message(role="assistant", content=None, tool_calls=[_TOOL_CALL]),
         "messages.0.tool_calls", "unsupported_value"),
        ("chat/completions", _message(role="assistant", tool_calls=[_TOOL_CALL]),
         "messages.0.tool_calls", "unsupported_value"),
        ("chat/completions", _message(role="assistant", function_call={"name": "f"}),
         "messages.0.function_call", "unsupported_value"),
        ("chat/completions", _message(content=[]), "messages.0.content", "empty_array"),
        ("chat/completions", _message(name=5), "messages.0.name", "invalid_type"),
        # Fields that change nothing in the answer, of OpenAI's types and limits still.
        ("chat/completions", {**_CHAT, "parallel_tool_calls": "yes"}, "parallel_tool_calls",
         "invalid_type"),
        ("chat/completions", {**_CHAT, "metadata": "tag"}, "metadata", "invalid_type"),
        ("chat/completions", {**_CHAT, "metadata": {str(i): "v" for i in range(17)}},
         "metadata", "invalid_value"),
        ("chat/completions", {**_CHAT, "metadata": {"k": "v" * 513}}, "metadata.k",
         "string_above_max_length"),
    ],
)  # fmt: skip
def test_a_refusal_says_openais_code_for_its_fault(
    local: TestClient, route: str, body: dict[str, Any], param: str, code: str
) -> None:
    response = local.post(f"/v1/{route}", json=body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert (error["type"], error["param"], error["code"]) == ("invalid_request_error", param, code)


def test_what_a_message_may_hold_and_change_nothing_is_taken(local: TestClient) -> None:
    """The "off" values of the checks above, and a name (not passed on to the template)."""
    fields: dict[str, Any] = {"parallel_tool_calls": False, "metadata": {"k": "v"}}
    messages = [
        {"role": "user", "content": "bad", "name": "ann"},
        {"role": "assistant", "content": "good", "tool_calls": [], "function_call": None},
        {"role": "user", "content": [{"type": "text", "text": "good"}], "name": None},
    ]
    response = local.post("/v1/chat/completions", json={**_CHAT, "messages": messages, **fields})
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["message"]["content"] == "user: good "


def test_the_client_reads_each_refusals_param_and_code(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as limit:
        client.completions.create(model="echo", prompt="good", max_tokens=0)
    assert (limit.value.param, limit.value.code) == ("max_tokens", "integer_below_min_value")
    tool_turn: Any = [
        {"role": "user", "content": "good"},
        {"role": "assistant", "content": None, "tool_calls": [_TOOL_CALL]},
        {"role": "tool", "tool_call_id": "c1", "content": "bad"},
    ]
    with pytest.raises(openai.BadRequestError) as calls:
        client.chat.completions.create(model="chat", messages=tool_turn)
    assert (calls.value.param, calls.value.code) == ("messages.1.tool_calls", "unsupported_value")
    with pytest.raises(openai.BadRequestError) as many:
        client.embeddings.create(model="features", input=["good"] * 1025)
    assert (many.value.param, many.value.code) == ("input", "array_above_max_length")


@pytest.fixture(scope="module")
def writer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    """A tiny GPT-2 (random weights) whose tokenizer has no chat template."""
    directory = tmp_path_factory.mktemp("writer")
    torch.manual_seed(0)
    config = GPT2Config(**SMALL, n_embd=16, n_layer=1, n_head=2, n_positions=CONTEXT)
    GPT2LMHeadModel(config).save_pretrained(directory)
    _word_tokenizer().save_pretrained(directory)
    app = loadonce.create_app([loadonce.ModelSpec(name="writer", artifact=directory)])
    with TestClient(app) as test_client:
        yield test_client


@pytest.mark.parametrize(
    ("route", "body", "param"),
    [
        # The model's own refusals of the text or a setting: param was null.
        ("completions", {"prompt": ""}, "prompt"),
        ("completions", {"prompt": "good", "repetition_penalty": 200}, "repetition_penalty"),
        ("chat/completions", {"messages": [{"role": "user", "content": "a"}]}, "messages"),
    ],
)
def test_a_models_own_refusal_names_the_field(
    writer: TestClient, route: str, body: dict[str, Any], param: str
) -> None:
    response = writer.post(f"/v1/{route}", json={"model": "writer", "max_tokens": 2, **body})
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param


def test_a_completion_without_max_tokens_stops_at_openais_default_of_16(
    client: openai.OpenAI,
) -> None:
    """OpenAI's completions: max_tokens "Defaults to 16"; the model's own limit (64) applied.
    Chat has no such default."""
    words = " ".join(["good"] * 30)
    whole = client.completions.create(model="echo", prompt=words)
    assert whole.usage is not None
    assert (whole.usage.completion_tokens, whole.choices[0].finish_reason) == (16, "length")
    chat = client.chat.completions.create(
        model="chat", messages=[{"role": "user", "content": words}]
    )
    assert chat.usage is not None
    assert (chat.usage.completion_tokens, chat.choices[0].finish_reason) == (31, "stop")


def test_base64_vectors_are_little_endian_float32(local: TestClient) -> None:
    body = {"model": "features", "input": ["good"], "encoding_format": "base64"}
    packed = local.post("/v1/embeddings", json=body).json()["data"][0]["embedding"]
    floats = local.post("/v1/embeddings", json=body | {"encoding_format": "float"}).json()
    decoded = np.frombuffer(base64.b64decode(packed), dtype="<f4")
    np.testing.assert_array_equal(decoded, np.asarray(floats["data"][0]["embedding"], "<f4"))
    assert len(decoded) == 16


def test_openapi_documents_the_routes_bodies(local: TestClient) -> None:
    paths = local.get("/openapi.json").json()["paths"]
    chat = paths["/v1/chat/completions"]["post"]
    schema = chat["requestBody"]["content"]["application/json"]["schema"]
    assert {"model", "messages"} <= set(schema["required"])
    assert "$defs" not in json.dumps(schema)
    assert {"/v1/models", "/v1/models/{model_name}", "/v1/completions", "/v1/embeddings"} <= set(
        paths
    )


def test_requests_are_counted_under_their_model(local: TestClient) -> None:
    local.post("/v1/completions", json=_body("completions"))
    metrics = local.get("/metrics").text
    assert 'model="echo",route="/v1/completions",status="200"' in metrics


def test_a_text_past_the_models_context_says_so_in_openais_code(client: openai.OpenAI) -> None:
    """OpenAI's code for it, context_length_exceeded, is what clients look for to shorten a
    prompt and retry; it was null."""
    with pytest.raises(openai.BadRequestError) as refused:
        client.embeddings.create(model="features", input=" ".join(["good"] * 31))
    assert (refused.value.code, refused.value.param) == ("context_length_exceeded", "input")
    assert "tokens long" in refused.value.message
    # One longer in characters than the context could hold: refused untokenized, same code.
    with pytest.raises(openai.BadRequestError) as untokenized:
        client.embeddings.create(model="features", input=" ".join(["good"] * 400))
    assert untokenized.value.code == "context_length_exceeded"
    assert "characters long" in untokenized.value.message
    # Characters the tokenizer drops are no tokens: four words and 300 spaces fit a context
    # of 32 (they were refused untokenized, as "more tokens than this model's context").
    spaced = client.embeddings.create(model="features", input="good" + " " * 300 + "movie")
    assert spaced.usage.prompt_tokens == 4
    # But characters that are not whitespace count in full: refused untokenized.
    with pytest.raises(openai.BadRequestError) as dense:
        client.embeddings.create(model="features", input="good" * 200)
    assert "characters long" in dense.value.message


def test_a_stream_that_fails_midway_is_counted_as_failed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Its 200 left with the first token: the request was counted a success whatever came
    after. Counted once it ended: a 500 here, a 499 for a client that left; and its log
    line says so too (it said 200 while the metrics said otherwise)."""
    caplog.set_level(logging.INFO, logger="loadonce.access")
    app = loadonce.create_app(
        [
            loadonce.ModelSpec(name="fails", loader=FailsMidway),
            loadonce.ModelSpec(name="slow", loader=Slow),
        ]
    )
    with TestClient(app) as http:
        body = {"model": "fails", "prompt": "good", "stream": True}
        with http.stream("POST", "/v1/completions", json=body) as answer:
            events = b"".join(answer.iter_bytes())
        assert answer.status_code == 200
        assert b'"error"' in events
        whole = http.post("/v1/completions", json={"model": "slow", "prompt": "good bad"})
        assert whole.status_code == 200
        metrics = http.get("/metrics").text
    counted = {
        (line.split('model="')[1].split('"')[0], line.split('status="')[1].split('"')[0])
        for line in metrics.splitlines()
        if line.startswith("loadonce_requests_total{") and 'route="/v1/completions"' in line
    }
    assert ("fails", "500") in counted, counted
    assert ("fails", "200") not in counted
    assert ("slow", "200") in counted
    lines = [r.getMessage() for r in caplog.records if "/v1/completions" in r.getMessage()]
    assert any("POST /v1/completions 500" in line for line in lines), lines


# Library mode: a user's app including loadonce's routers where it likes.


def _users_app(mounted_at: str, prefix: str) -> FastAPI:
    """README's library mode: the routers under ``prefix``, in the user's app itself or in an
    app of theirs mounted at ``mounted_at``; API keys and a body limit, both answered before
    any route runs."""
    app = FastAPI(
        lifespan=loadonce.lifespan(
            [loadonce.ModelSpec(name="echo", loader=Echo)],
            access=loadonce.AccessKeys(inference=(KEY,)),
            limits=loadonce.Limits(max_body_bytes=1000),
        )
    )
    routes = FastAPI() if mounted_at else app
    for router in (loadonce.openai_router(), loadonce.v2_router(), loadonce.models_router()):
        routes.include_router(router, prefix=prefix)
    if mounted_at:
        app.mount(mounted_at, routes)
    loadonce.install_middleware(app)
    return app


def _error_body_kind(body: dict[str, Any]) -> str:
    if isinstance(body.get("error"), dict):
        assert set(body["error"]) == {"message", "type", "param", "code"}
        return "openai"
    return "v2" if set(body) == {"error"} else "json"


@pytest.fixture(scope="module", params=[("", ""), ("", "/llm"), ("", "/api/v1"), ("/sub", "/llm")])
def placed(request: pytest.FixtureRequest) -> Iterator[tuple[TestClient, str]]:
    """A user's app, and where its routers are (``_users_app``)."""
    mounted_at, prefix = request.param
    with TestClient(_users_app(mounted_at, prefix)) as http:
        yield http, mounted_at + prefix


@pytest.mark.parametrize(
    ("method", "path", "kind"),
    [
        ("POST", "/v1/completions", "openai"),
        ("POST", "/v1/chat/completions", "openai"),
        ("GET", "/v1/models", "openai"),
        ("POST", "/v1/nowhere", "openai"),
        ("POST", "/v2/models/echo/infer", "v2"),
        ("POST", "/models/echo/predict", "json"),
    ],
)
@pytest.mark.parametrize("refusal", ["no key", "body over the limit"])
def test_errors_before_any_route_are_in_the_protocols_body_wherever_it_is_mounted(
    placed: tuple[TestClient, str], method: str, path: str, kind: str, refusal: str
) -> None:
    """Told from the literal /v1 and /v2: under a prefix (``/llm/v1/completions``) a 401 or a
    413 came in loadonce's JSON body, which OpenAI's clients cannot read."""
    headers = {"Authorization": f"Bearer {KEY}"} if refusal != "no key" else {}
    content = b"x" * 2000 if refusal != "no key" else b"{}"
    http, base = placed
    answer = http.request(method, base + path, content=content, headers=headers)
    assert answer.status_code == (401 if refusal == "no key" else 413), answer.text
    assert _error_body_kind(answer.json()) == kind, answer.text


@pytest.mark.parametrize(
    ("path", "kind"),
    [
        ("/llm/v1/completions", "openai"),
        ("/llm/v2/models/echo/infer", "v2"),
        ("/llm/models/echo/predict", "json"),
    ],
)
def test_a_head_loadonce_serves_protocol_refuses_is_in_the_protocols_body_under_a_prefix(
    path: str, kind: str
) -> None:
    """The refusals ``loadonce serve``'s HTTP protocol writes itself (a head that is not valid
    HTTP/1.1, one too large, too slow; past max_connections) chose their body from the
    literal path too."""
    protocol = guarded_protocol(
        header_timeout_s=10, body_timeout_s=30, max_header_bytes=65536, max_header_fields=100
    )
    head = f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nX-A: a\x00b\r\n\r\n".encode()
    with (
        ThreadedServer(_users_app("", "/llm"), http=protocol) as running,
        socket.create_connection(("127.0.0.1", running.port), timeout=10) as sock,
    ):
        sock.sendall(head)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 400"), answer
    assert _error_body_kind(json.loads(answer.split(b"\r\n\r\n", 1)[1])) == kind


def test_the_client_reads_the_refusals_of_routes_under_a_prefix() -> None:
    """The ``openai`` client against ``/llm/v1``: its own exception classes, with OpenAI's
    code, for refusals made before a route ran and by the routes."""
    with ThreadedServer(_users_app("", "/llm")) as running:
        url = f"{running.url}/llm/v1"
        stranger = openai.OpenAI(base_url=url, api_key="not-the-key-0123456789", max_retries=0)
        with stranger, pytest.raises(openai.AuthenticationError) as refused:
            stranger.models.list()
        assert refused.value.code == "invalid_api_key"
        with openai.OpenAI(base_url=url, api_key=KEY, max_retries=0) as client:
            with pytest.raises(openai.APIStatusError) as too_large:
                client.completions.create(model="echo", prompt="good " * 400)
            assert too_large.value.status_code == 413
            assert "max_body_bytes" in too_large.value.message
            with pytest.raises(openai.NotFoundError) as missing:
                client.completions.create(model="nope", prompt="good")
            assert missing.value.code == "model_not_found"
            assert client.completions.create(model="echo", prompt="good").choices[0].text


def test_an_id_with_a_slash_is_model_not_found_wherever_the_router_is(
    placed: tuple[TestClient, str],
) -> None:
    http, base = placed
    headers = {"Authorization": f"Bearer {KEY}"}
    answer = http.get(f"{base}/v1/models/org%2Fecho", headers=headers)
    assert answer.status_code == 404
    assert answer.json()["error"]["code"] == "model_not_found"
    assert http.get(f"{base}/v1/models/echo", headers=headers).json()["id"] == "echo"
