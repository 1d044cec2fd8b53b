"""Token-by-token generation of Transformers models (the engine behind the generate and OpenAI
routes), from tiny local models: every sequence's text equals what ``model.generate`` gives it
alone, whatever batch it shared; sequences share forward passes and join a running batch;
a sequence let go leaves the batch; limits and sampling settings are checked before a request
waits."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSeq2SeqLM,
    BartConfig,
    BartForConditionalGeneration,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
)

import loadonce
from loadonce import Delta, Finished, GenerationRequest
from tests.test_transformers_tasks import CONTEXT, WORDS, _word_tokenizer

PROMPTS = ["good movie", "bad", "good good bad movie it was", "movie"]
# Messages rendered by the test tokenizer's template: each "role: content", then "assistant:".
CHAT_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] }} {{ m['content'] }} {% endfor %}"
    "{% if add_generation_prompt %}a{% endif %}"
)
SMALL: dict[str, Any] = {"vocab_size": len(WORDS), "bos_token_id": 5, "eos_token_id": 6}


def _models() -> dict[str, Any]:
    # A wide weight spread keeps every step's best token clearly ahead of the next, so that
    # greedy choices do not flip on the last bits of a padded batch's arithmetic.
    return {
        "gpt2": GPT2LMHeadModel(
            GPT2Config(
                **SMALL, n_embd=16, n_layer=2, n_head=2, n_positions=CONTEXT, pad_token_id=0,
                initializer_range=1.0,
            )
        ),
        "llama": LlamaForCausalLM(
            LlamaConfig(
                **SMALL, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                num_key_value_heads=1, intermediate_size=32, max_position_embeddings=CONTEXT,
                pad_token_id=0, initializer_range=1.0,
            )
        ),
        "bart": BartForConditionalGeneration(
            BartConfig(
                **SMALL, d_model=16, encoder_layers=1, decoder_layers=1,
                encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=32,
                decoder_ffn_dim=32, max_position_embeddings=CONTEXT, pad_token_id=0,
                decoder_start_token_id=6, init_std=1.0,
            )
        ),
    }  # fmt: skip


@pytest.fixture(scope="module")
def directories(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("generators")
    torch.manual_seed(0)
    built = {}
    for name, model in _models().items():
        directory = root / name
        model.save_pretrained(directory)
        tokenizer = _word_tokenizer()
        tokenizer.chat_template = CHAT_TEMPLATE
        tokenizer.save_pretrained(directory)
        built[name] = directory
    return built


def _reference(directory: Path, prompt: str, new_tokens: int) -> str:
    """What transformers' own greedy ``generate`` writes for the prompt alone."""
    seq2seq = directory.name == "bart"
    auto = AutoModelForSeq2SeqLM if seq2seq else AutoModelForCausalLM
    model = auto.from_pretrained(directory).eval()
    tokenizer = _word_tokenizer()
    ids = torch.tensor([tokenizer(prompt)["input_ids"]])
    with torch.inference_mode():
        out = model.generate(
            ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens,
            do_sample=False, pad_token_id=0,
        )  # fmt: skip
    new = out[0, 1:] if seq2seq else out[0, ids.shape[1] :]
    return str(tokenizer.decode(new, skip_special_tokens=True))


class Passes:
    """The batch size of every forward pass of the named model classes."""

    def __init__(self, *classes: str) -> None:
        self.classes, self.sizes = set(classes), list[int]()
        self._lock = threading.Lock()

    def __enter__(self) -> Passes:
        self._handle = torch.nn.modules.module.register_module_forward_hook(
            self._seen, with_kwargs=True
        )
        return self

    def __exit__(self, *exc: object) -> None:
        self._handle.remove()

    def _seen(self, module: Any, args: Any, kwargs: Any, output: Any) -> None:
        if type(module).__name__ in self.classes:
            ids = kwargs.get("decoder_input_ids")
            ids = kwargs.get("input_ids") if ids is None else ids
            with self._lock:
                self.sizes.append(int(ids.shape[0]))


@contextlib.asynccontextmanager
async def _loaded(directory: Path, **spec: Any) -> AsyncIterator[loadonce.Model]:
    model = loadonce.Model(loadonce.ModelSpec(name="writer", artifact=directory, **spec))
    await model.load()
    try:
        yield model
    finally:
        await model.unload()


async def _text(model: loadonce.Model, **request: Any) -> tuple[str, Finished]:
    events: list[Delta | Finished] = []
    async with contextlib.aclosing(model.generate(GenerationRequest(**request))) as stream:
        async for event in stream:
            events.append(event)
    finished = events[-1]
    assert isinstance(finished, Finished)
    return "".join(e.text for e in events if isinstance(e, Delta)), finished


def _run(coroutine: Any) -> Any:
    return asyncio.run(coroutine)


@pytest.mark.parametrize(
    ("name", "forward"),
    [("gpt2", "GPT2LMHeadModel"), ("llama", "LlamaForCausalLM"), ("bart", "BartModel")],
)
def test_each_sequence_of_a_shared_batch_gets_what_it_gets_alone(
    directories: dict[str, Path], name: str, forward: str
) -> None:
    """Greedy texts equal transformers' generate for each prompt alone, while the four
    concurrent requests share forward passes (most passes carry several sequences)."""
    directory = directories[name]
    expected = [_reference(directory, prompt, 8) for prompt in PROMPTS]

    async def concurrently() -> list[tuple[str, Finished]]:
        async with _loaded(directory, batching={"max_batch_size": 8}) as model:
            return await asyncio.gather(
                *(_text(model, prompt=p, max_new_tokens=8) for p in PROMPTS)
            )

    with Passes(forward) as passes:
        answers = _run(concurrently())
    assert [text for text, _ in answers] == expected
    for (_, finished), prompt in zip(answers, PROMPTS, strict=True):
        assert finished.prompt_tokens == len(prompt.split())
        assert finished.completion_tokens <= 8
        assert finished.reason in ("stop", "length")
    tokens = sum(finished.completion_tokens for _, finished in answers)
    assert len(passes.sizes) < tokens / 2, passes.sizes
    assert max(passes.sizes) == len(PROMPTS)


def test_a_request_joins_a_running_batch_and_a_finished_one_leaves_it(
    directories: dict[str, Path],
) -> None:
    """Continuous batching: a request that arrives while another generates joins its batch
    between two steps (its first token comes before the first request ends), and passes
    shrink back to one sequence when it is done. Its text is still its text alone."""
    directory = directories["gpt2"]
    order: list[str] = []

    async def scenario() -> tuple[str, str]:
        async with _loaded(directory, batching={"max_batch_size": 4}) as model:
            started = asyncio.Event()

            async def long() -> str:
                text = ""
                stream = model.generate(GenerationRequest(prompt="good", max_new_tokens=20))
                async with contextlib.aclosing(stream) as events:
                    async for event in events:
                        if isinstance(event, Delta):
                            text += event.text
                            started.set()
                order.append("long done")
                return text

            async def late() -> str:
                await started.wait()
                order.append("late asks")
                text, _ = await _text(model, prompt="bad movie", max_new_tokens=3)
                order.append("late done")
                return text

            return await asyncio.gather(long(), late())

    with Passes("GPT2LMHeadModel") as passes:
        long_text, late_text = _run(scenario())
    assert order == ["late asks", "late done", "long done"]
    assert late_text == _reference(directory, "bad movie", 3)
    assert long_text == _reference(directory, "good", 20)
    assert 2 in passes.sizes
    assert passes.sizes[-1] == 1


def test_static_batching_joins_only_an_empty_batch(directories: dict[str, Path]) -> None:
    directory = directories["gpt2"]
    order: list[str] = []

    async def scenario() -> None:
        spec = {"max_batch_size": 4, "generation": "static"}
        async with _loaded(directory, batching=spec) as model:
            started = asyncio.Event()

            async def first() -> None:
                stream = model.generate(GenerationRequest(prompt="good", max_new_tokens=20))
                async with contextlib.aclosing(stream) as events:
                    async for _ in events:
                        started.set()
                order.append("first done")

            async def second() -> None:
                await started.wait()
                assert (await _text(model, prompt="bad", max_new_tokens=2))[0] == _reference(
                    directory, "bad", 2
                )
                order.append("second done")

            await asyncio.gather(first(), second())

    _run(scenario())
    assert order == ["first done", "second done"]


def test_a_sequence_let_go_leaves_the_batch_at_the_next_step(
    directories: dict[str, Path],
) -> None:
    """Closing a stream (a client gone) stops its generation: the model makes at most one
    more pass for it, not the hundred tokens it asked for."""

    async def scenario(passes: Passes) -> tuple[int, int]:
        async with _loaded(directories["gpt2"]) as model:
            stream = model.generate(GenerationRequest(prompt="good", max_new_tokens=25))
            seen = 0
            async for _ in stream:
                seen += 1
                if seen == 3:
                    break
            await stream.aclose()
            at_close = len(passes.sizes)
            await asyncio.sleep(0.2)
            queue = model.generation
            assert queue is not None
            assert queue.generating == 0
            return at_close, len(passes.sizes)

    with Passes("GPT2LMHeadModel") as passes:
        at_close, in_all = _run(scenario(passes))
    assert in_all <= at_close + 1, passes.sizes


def test_seeded_sampling_repeats_and_settings_are_checked(directories: dict[str, Path]) -> None:
    async def scenario() -> None:
        async with _loaded(directories["gpt2"], batching={"max_batch_size": 4}) as model:
            sampled: dict[str, Any] = {
                "prompt": "good",
                "max_new_tokens": 10,
                "temperature": 1.5,
                "top_p": 0.9,
            }
            # Two seeded requests in one batch beside one sampling without a seed.
            a, b, _ = await asyncio.gather(
                _text(model, **sampled, seed=7),
                _text(model, **sampled, seed=7),
                _text(model, prompt="bad movie", max_new_tokens=10, temperature=0.7, top_k=3),
            )
            assert a == b
            # Settings at the edge of their ranges sample without failing the batch: a
            # temperature that would overflow is greedy, an extreme penalty still samples.
            greedy = (await _text(model, prompt="good", max_new_tokens=10))[0]
            assert (await _text(model, prompt="good", max_new_tokens=10, temperature=1e-30))[
                0
            ] == greedy
            extreme = {"temperature": 1.0, "repetition_penalty": 1e-300, "seed": 1}
            await _text(model, prompt="good bad", max_new_tokens=10, **extreme)
            texts = {(await _text(model, **sampled, seed=s))[0] for s in range(8)}
            assert len(texts) > 1, "different seeds sample different texts"
            # OpenAI's seeds are any int64; a negative one repeats like any other.
            negative = [(await _text(model, **sampled, seed=-1))[0] for _ in range(2)]
            assert negative[0] == negative[1]
            refused: list[tuple[dict[str, Any], str]] = [
                ({"temperature": -1.0}, "temperature must be 0 to 100"),
                ({"top_p": -0.1}, "top_p must be 0 to 1"),
                ({"max_new_tokens": 10_000}, "max_new_tokens. must be from 1 to 256"),
                ({"seed": 2**63}, "seed must be a 64-bit integer"),
                ({"stop": tuple("abcdefghi")}, "at most 8 are taken"),
                ({"stop": ("",)}, "1 to 128 characters"),
            ]
            for bad, words in refused:
                with pytest.raises(loadonce.InvalidInputError, match=words):
                    await _text(model, prompt="good", **bad)

    _run(scenario())


def test_prompts_over_the_context_are_refused_before_the_first_token(
    directories: dict[str, Path],
) -> None:
    long_prompt = " ".join(["good"] * (CONTEXT + 1))

    async def scenario() -> None:
        async with _loaded(directories["gpt2"], batching={"max_batch_size": 4}) as model:
            with pytest.raises(loadonce.InvalidInputError, match="takes at most 31"):
                await _text(model, prompt=long_prompt)
            with pytest.raises(loadonce.InvalidInputError, match="exceed the model's context"):
                await _text(model, prompt="good movie", max_new_tokens=31)
            # Neither took room from the next request.
            text, finished = await _text(model, prompt="good movie", max_new_tokens=30)
            assert finished.completion_tokens <= 30
            assert text == _reference(directories["gpt2"], "good movie", 30)

    _run(scenario())


def test_chat_messages_go_through_the_models_chat_template(directories: dict[str, Path]) -> None:
    async def scenario() -> str:
        async with _loaded(directories["llama"]) as model:
            messages = ({"role": "user", "content": [{"type": "text", "text": "movie"}]},)
            return (await _text(model, messages=messages, max_new_tokens=5))[0]

    # The template writes "user movie a": the same text as that prompt.
    assert _run(scenario()) == _reference(directories["llama"], "user movie a", 5)


def test_a_chat_that_cannot_fit_is_refused_before_its_template_runs(
    directories: dict[str, Path],
) -> None:
    """More messages than the context has tokens, or more characters than it can read: the
    template rendered the whole chat on the model's thread first (1.8 million empty
    messages: 7 s, every other stream of the model waiting), only to refuse it."""

    async def scenario() -> None:
        async with _loaded(directories["llama"]) as model:
            many = tuple({"role": "user", "content": ""} for _ in range(CONTEXT + 1))
            with pytest.raises(loadonce.InvalidInputError, match=f"holds {CONTEXT + 1} messages"):
                await _text(model, messages=many)
            long = ({"role": "user", "content": "good" * 100_000},)
            with pytest.raises(loadonce.InvalidInputError, match="messages hold 400000 characters"):
                await _text(model, messages=long)
            fits = ({"role": "user", "content": "movie"},)
            assert (await _text(model, messages=fits, max_new_tokens=2))[1].completion_tokens

    _run(scenario())


def test_stop_strings_end_the_text_before_them(directories: dict[str, Path]) -> None:
    full = _reference(directories["gpt2"], "good", 12)
    stop = full.split()[2]

    async def scenario() -> tuple[str, Finished]:
        async with _loaded(directories["gpt2"]) as model:
            return await _text(model, prompt="good", max_new_tokens=12, stop=(stop,))

    text, finished = _run(scenario())
    assert text == full[: full.index(stop)]
    assert finished.reason == "stop"


def test_a_top_p_below_float32s_least_keeps_the_best_token(directories: dict[str, Path]) -> None:
    # 1e-300 reads 0 in float32: every token was masked and sampling raised (a 500 for it
    # and for every sequence of its step).
    async def scenario() -> None:
        async with _loaded(directories["gpt2"], batching={"max_batch_size": 4}) as model:
            greedy = (await _text(model, prompt="good", max_new_tokens=8))[0]
            tiny = {"temperature": 1.0, "top_p": 1e-300, "seed": 3}
            assert (await _text(model, prompt="good", max_new_tokens=8, **tiny))[0] == greedy
            # 0 too, as OpenAI's range allows (clients send it to mean "the most likely"): it
            # was refused.
            none = {"temperature": 1.0, "top_p": 0.0, "seed": 3}
            assert (await _text(model, prompt="good", max_new_tokens=8, **none))[0] == greedy

    _run(scenario())


def test_a_sequence_whose_choice_fails_leaves_its_neighbours_going_on(
    directories: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A fault in one row's sampling (here injected for seed 13) fails that request alone:
    the others sharing its steps finish with the text they get alone."""
    from loadonce.runtimes.transformers import sampling

    choose = sampling.RowSampler.choose

    def failing_for_13(self: sampling.RowSampler, scores: Any, seen: Any) -> int:
        if self.sampling.seed == 13:
            raise RuntimeError("this row's sampling broke")
        return choose(self, scores, seen)

    monkeypatch.setattr(sampling.RowSampler, "choose", failing_for_13)
    expected = _reference(directories["gpt2"], "good movie", 10)

    async def scenario() -> Any:
        async with _loaded(directories["gpt2"], batching={"max_batch_size": 4}) as model:
            return await asyncio.gather(
                _text(model, prompt="good movie", max_new_tokens=10),
                _text(model, prompt="bad", max_new_tokens=10, temperature=1.0, seed=13),
                _text(model, prompt="good movie", max_new_tokens=10),
                return_exceptions=True,
            )

    first, failed, third = _run(scenario())
    assert isinstance(failed, loadonce.ModelRaisedError)
    assert first[0] == expected
    assert third[0] == expected


@pytest.mark.parametrize("name", ["gpt2", "bart"])
def test_a_prompt_of_no_token_or_of_megabytes_is_refused_at_once(
    directories: dict[str, Path], name: str
) -> None:
    async def scenario() -> None:
        async with _loaded(directories[name], batching={"max_batch_size": 4}) as model:
            for empty in ("", "   "):  # the test tokenizer adds no special token
                with pytest.raises(loadonce.InvalidInputError, match="holds no token"):
                    await _text(model, prompt=empty)
            # Refused by its length in characters, before the tokenizer reads it: tokenizing
            # it held every other stream of the model for seconds.
            with pytest.raises(loadonce.InvalidInputError, match="characters long"):
                await _text(model, prompt="good " * 400_000)
            assert (await _text(model, prompt="good", max_new_tokens=2))[1].completion_tokens

    _run(scenario())


def test_a_protocols_default_limit_applies_within_the_context(
    directories: dict[str, Path],
) -> None:
    """``default_new_tokens`` (OpenAI's 16 for completions) limits a request that names no
    limit as that limit would, and never refuses a prompt the context has less room for."""

    async def scenario() -> None:
        async with _loaded(directories["gpt2"]) as model:
            text, finished = await _text(model, prompt="good movie", default_new_tokens=3)
            assert finished.completion_tokens <= 3
            assert text == (await _text(model, prompt="good movie", max_new_tokens=3))[0]
            near_the_end = " ".join(["good"] * (CONTEXT - 2))
            _, finished = await _text(model, prompt=near_the_end, default_new_tokens=16)
            assert 1 <= finished.completion_tokens <= 2

    _run(scenario())
