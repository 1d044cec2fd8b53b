"""A Transformers causal LM served for real: the `openai` client (plain, streamed, chat with the
model's template), the generate route and the v2 generate extension all get the text
transformers' own greedy `generate` writes, concurrent streams share the model's batch, and
the generation metrics count them."""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx2 as httpx
import openai
import pytest
import torch
from fastapi.testclient import TestClient
from transformers import GPT2Config, GPT2LMHeadModel

import loadonce
from tests.servers import ThreadedServer
from tests.test_generation_engine import CHAT_TEMPLATE, SMALL, _reference
from tests.test_transformers_tasks import CONTEXT, _word_tokenizer

PROMPTS = ["good movie", "bad", "good good bad movie it was", "movie", "it was", "a", "the", "?"]


@pytest.fixture(scope="module")
def writer(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("served") / "gpt2"
    torch.manual_seed(1)
    GPT2LMHeadModel(
        GPT2Config(
            **SMALL, n_embd=16, n_layer=2, n_head=2, n_positions=CONTEXT, pad_token_id=0,
            initializer_range=1.0,
        )
    ).save_pretrained(directory)  # fmt: skip
    tokenizer = _word_tokenizer()
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def server(writer: Path) -> Iterator[ThreadedServer]:
    spec = loadonce.ModelSpec(name="writer", artifact=writer, batching={"max_batch_size": 8})
    with ThreadedServer(loadonce.create_app([spec])) as running:
        yield running


@pytest.fixture(scope="module")
def client(server: ThreadedServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="none", max_retries=0)


def test_openai_completions_plain_and_streamed_equal_generate(
    client: openai.OpenAI, writer: Path
) -> None:
    expected = _reference(writer, "good movie", 12)
    answer = client.completions.create(model="writer", prompt="good movie", max_tokens=12)
    assert answer.choices[0].text == expected
    assert answer.usage is not None
    assert answer.usage.prompt_tokens == 2
    assert answer.usage.completion_tokens <= 12
    chunks = client.completions.create(
        model="writer", prompt="good movie", max_tokens=12, stream=True
    )
    assert "".join(chunk.choices[0].text for chunk in chunks if chunk.choices) == expected


def test_openai_chat_goes_through_the_chat_template(client: openai.OpenAI, writer: Path) -> None:
    stream = client.chat.completions.create(
        model="writer",
        messages=[{"role": "user", "content": "movie"}],
        max_completion_tokens=6,
        stream=True,
    )
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert text == _reference(writer, "user movie a", 6)


def test_concurrent_streams_each_get_their_own_text_and_are_counted(
    client: openai.OpenAI, server: ThreadedServer, writer: Path
) -> None:
    def stream(prompt: str) -> str:
        chunks = client.completions.create(
            model="writer", prompt=prompt, max_tokens=10, stream=True
        )
        return "".join(chunk.choices[0].text for chunk in chunks if chunk.choices)

    with ThreadPoolExecutor(len(PROMPTS)) as pool:
        texts = list(pool.map(stream, PROMPTS))
    assert texts == [_reference(writer, prompt, 10) for prompt in PROMPTS]
    metrics = httpx.get(f"{server.url}/metrics").text
    first = re.search(
        r'^loadonce_time_to_first_token_seconds_count\{model="writer"\} (\S+)$', metrics, re.M
    )
    generated = re.search(
        r'^loadonce_generated_tokens_total\{model="writer"\} (\S+)$', metrics, re.M
    )
    assert first is not None
    assert generated is not None
    assert float(first.group(1)) >= len(PROMPTS)
    assert float(generated.group(1)) >= len(PROMPTS)
    assert "loadonce_time_per_output_token_seconds_bucket" in metrics


def test_the_generate_route_and_the_v2_extension_stream_the_same_text(
    server: ThreadedServer, writer: Path
) -> None:
    expected = _reference(writer, "bad movie", 8)
    body = {"prompt": "bad movie", "parameters": {"max_new_tokens": 8}, "stream": True}
    events = []
    with httpx.stream("POST", f"{server.url}/models/writer/generate", json=body) as answer:
        assert answer.headers["content-type"].startswith("text/event-stream")
        for line in answer.iter_lines():
            if line.startswith("data: "):
                events.append(json.loads(line[6:]))
    assert "".join(e.get("text", "") for e in events) == expected
    assert events[-1]["usage"]["prompt_tokens"] == 2
    v2 = httpx.post(
        f"{server.url}/v2/models/writer/generate",
        json={"text_input": "bad movie", "parameters": {"max_tokens": 8}},
    ).json()
    assert v2["text_output"] == expected
    listed = httpx.get(f"{server.url}/models/writer").json()
    assert listed["generates"] is True


def test_a_prompt_over_the_context_is_the_clients_400(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError, match="takes at most 31"):
        # 32 words: past the context in tokens, within what it could hold in characters.
        client.completions.create(model="writer", prompt=" ".join(["good"] * 32), max_tokens=1)


def test_a_broken_chat_template_is_the_servers_fault_not_the_clients(
    writer: Path, tmp_path: Path
) -> None:
    """A template that does not even parse refuses every message: a 500, where a template's
    own raise_exception (roles that must alternate) is the client's 400."""
    broken = tmp_path / "broken"
    shutil.copytree(writer, broken)
    config = json.loads((broken / "tokenizer_config.json").read_text())
    config["chat_template"] = "{% for m in messages %}{{ m.content }"  # never closed
    (broken / "tokenizer_config.json").write_text(json.dumps(config))
    (broken / "chat_template.jinja").unlink(missing_ok=True)
    spec = loadonce.ModelSpec(name="broken", artifact=broken)
    with TestClient(loadonce.create_app([spec]), raise_server_exceptions=False) as http:
        messages = [{"role": "user", "content": "good"}]
        answer = http.post("/v1/chat/completions", json={"model": "broken", "messages": messages})
    assert answer.status_code == 500, answer.text
