"""`make bench-generate`: token streaming from a causal LM, served by loadonce without batching,
with static and with continuous batching, and by a plain FastAPI endpoint that runs the
model's own `generate` with a `TextIteratorStreamer` per request, in one run.

The model is built here, nothing downloaded: a GPT-2 (4 layers, hidden size 256) with random
weights and a word-level tokenizer over 1,000 made-up words, with no end-of-text token, so
every request generates exactly its `max_new_tokens` and every server does the same work.
Each server runs pinned to core 0, the client to core 1: N concurrent streams (1, then 8),
each sending its next request as soon as its last stream ended; a warm-up, then a measured
run. Reported: tokens per second over all streams, time to first token (from sending the
request to its first token's event), and each stream's own rate after its first token.
Writes bench/results/generate.json and .md.

    python -m bench.generate [--quick] [--seconds 15] [--new-tokens 64]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import importlib.metadata
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx2 as httpx

from bench.compare import cpu_name
from bench.servers import LOAD_CORE, RESULTS, ROOT, SERVER_CORE, Launch, free_port, serving

STREAMS = (1, 8)
MAX_BATCH_SIZE = 8  # as many as the streams: every waiting request fits in one batch
MODEL_NAME = "m"
VOCABULARY = 1000
PROMPT_WORDS = 16
GPT2: dict[str, Any] = {"n_embd": 256, "n_layer": 4, "n_head": 4, "n_positions": 512}
VARIANTS = [
    ("b", "loadonce, no batching"),
    ("s", "loadonce, static batching"),
    ("a", "loadonce, continuous batching"),
    ("c", "FastAPI, generate + TextIteratorStreamer per request"),
]


def _progress(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def build_model(directory: Path) -> dict[str, Any]:
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    words = ["[PAD]", "[UNK]", *(f"w{i}" for i in range(VOCABULARY - 2))]
    backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    backend.decoder = decoders.WordPiece()  # words joined by spaces
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="[UNK]", pad_token="[PAD]"
    )  # type: ignore[no-untyped-call]
    torch.manual_seed(0)
    # No end-of-text token: generation always runs to max_new_tokens.
    config = GPT2Config(
        vocab_size=len(words), bos_token_id=None, eos_token_id=None, pad_token_id=0, **GPT2
    )
    model = GPT2LMHeadModel(config)
    model.generation_config.eos_token_id = None
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return {
        **GPT2,
        "vocab_size": len(words),
        "parameters": sum(p.numel() for p in model.parameters()),
    }


def prompt(index: int) -> str:
    """A prompt of PROMPT_WORDS words, different per request (nothing cached helps)."""
    return " ".join(f"w{(index * 7 + k * 13) % (VOCABULARY - 2)}" for k in range(PROMPT_WORDS))


async def _stream(
    client: httpx.AsyncClient, url: str, index: int, new_tokens: int
) -> dict[str, Any]:
    body = {"prompt": prompt(index), "parameters": {"max_new_tokens": new_tokens}, "stream": True}
    sent = time.perf_counter()
    first = last = None
    texts: list[str] = []
    usage = None
    async with client.stream("POST", url, json=body) as answer:
        if answer.status_code != 200:
            raise RuntimeError(f"{answer.status_code}: {(await answer.aread())[:300]!r}")
        async for line in answer.aiter_lines():
            if not line.startswith("data: "):
                continue
            event = json.loads(line[6:])
            if event.get("text"):
                last = time.perf_counter()
                first = first or last
                texts.append(event["text"])
            usage = event.get("usage", usage)
    if first is None or last is None:
        raise RuntimeError(f"a stream of {url} held no text")
    return {"sent": sent, "first": first, "last": last, "text": "".join(texts), "usage": usage}


async def _load(url: str, streams: int, seconds: float, new_tokens: int) -> dict[str, Any]:
    """``streams`` clients, each sending its next request when its stream ends, for
    ``seconds``; only requests that started and ended inside the window count."""
    done: list[dict[str, Any]] = []
    counter = iter(range(10**9))
    async with httpx.AsyncClient(timeout=120) as client:
        started = time.perf_counter()
        end = started + seconds

        async def one_stream() -> None:
            while time.perf_counter() < end:
                result = await _stream(client, url, next(counter), new_tokens)
                if result["last"] <= end:
                    done.append(result)

        await asyncio.gather(*(one_stream() for _ in range(streams)))
        elapsed = min(time.perf_counter(), end) - started
    if not done:  # no request ended inside the window (a warm-up shorter than one request)
        return {"requests": 0, "tokens_per_s": 0.0, "ttft_p50_ms": None, "ttft_p99_ms": None,
                "stream_tokens_per_s_p50": None, "usage": None, "sample_text": ""}  # fmt: skip
    first = sorted(1000 * (r["first"] - r["sent"]) for r in done)
    rates = sorted(
        (new_tokens - 1) / (r["last"] - r["first"]) for r in done if r["last"] > r["first"]
    )
    return {
        "requests": len(done),
        "tokens_per_s": len(done) * new_tokens / elapsed,
        "ttft_p50_ms": statistics.median(first),
        "ttft_p99_ms": first[min(len(first) - 1, int(0.99 * len(first)))],
        "stream_tokens_per_s_p50": statistics.median(rates) if rates else None,
        "usage": done[0]["usage"],
        "sample_text": done[0]["text"],
    }


def _client_on_load_core(url: str, streams: int, seconds: float, new_tokens: int) -> dict[str, Any]:
    command = ["taskset", "-c", LOAD_CORE, sys.executable, "-m", "bench.generate", "--client", url]
    command += ["--streams", str(streams), "--seconds", str(seconds)]
    output = subprocess.run(
        [*command, "--new-tokens", str(new_tokens)],
        cwd=ROOT, capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    found: dict[str, Any] = json.loads(output.splitlines()[-1])
    return found


def _config(directory: Path, key: str) -> Path:
    lines = ['[server]\nlog_level = "warning"\n', "[[models]]", f'name = "{MODEL_NAME}"']
    lines += [f'artifact = "{directory}"']
    if key in ("a", "s"):
        generation = "continuous" if key == "a" else "static"
        lines += ["[models.batching]", f"max_batch_size = {MAX_BATCH_SIZE}"]
        lines += [f'generation = "{generation}"']
    path = RESULTS / f"generate-{key}.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def _launch(key: str, directory: Path, port: int, new_tokens: int) -> Launch:
    url = f"http://127.0.0.1:{port}/models/{MODEL_NAME}/generate"
    body = json.dumps({"prompt": prompt(0), "parameters": {"max_new_tokens": 4}, "stream": True})
    if key == "c":
        command = [
            sys.executable, "-m", "uvicorn", "bench.plain_apps:generate_app",
            "--port", str(port), "--log-level", "warning", "--no-access-log",
        ]  # fmt: skip
    else:
        config = _config(directory, key)
        command = [sys.executable, "-m", "loadonce", "serve", str(config), "--port", str(port)]
    return Launch(command, url, body)


def _measure(key: str, directory: Path, args: argparse.Namespace, step: str) -> dict[str, Any]:
    measured: dict[str, Any] = {}
    how = _launch(key, directory, free_port(), args.new_tokens)
    env = {"PYTHONPATH": str(ROOT / "src")}
    with serving(f"generate-{key}", how, directory, env=env) as server:
        for streams in STREAMS:
            _progress(f"{step} {streams} stream(s): warm-up {args.warmup:g} s")
            _client_on_load_core(server.url, streams, args.warmup, args.new_tokens)
            result = _client_on_load_core(server.url, streams, args.seconds, args.new_tokens)
            _progress(
                f"{step} {streams} stream(s): {result['tokens_per_s']:,.0f} tokens/s, "
                f"TTFT p50 {result['ttft_p50_ms']:.1f} ms, p99 {result['ttft_p99_ms']:.1f} ms"
            )
            measured[f"s{streams}"] = result
    return measured


def render(results: dict[str, Any]) -> str:
    model = results["model"]
    versions = ", ".join(f"{name} {version}" for name, version in results["versions"].items())
    lines = [
        f"Run of {results['date']} on {results['cpu']}; servers on core {SERVER_CORE}, the "
        f"client on core {LOAD_CORE}; per stream count a {results['warmup']:g} s warm-up, then "
        f"one measured run of {results['seconds']:g} s. Versions: {versions}.",
        "",
        f"Model: GPT-2, {model['n_layer']} layers, hidden size {model['n_embd']}, "
        f"{model['n_head']} heads, vocabulary {model['vocab_size']}: {model['parameters']:,} "
        f"parameters, random weights. Each request: a {PROMPT_WORDS}-token prompt, "
        f"{results['new_tokens']} new tokens (greedy). Batching: max_batch_size "
        f"{MAX_BATCH_SIZE}.",
        "",
        "| server | streams | tokens/s | TTFT p50 ms | TTFT p99 ms | one stream's tokens/s (p50) "
        "| requests |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for key, measured in results["variants"].items():
        for streams in STREAMS:
            r = measured[f"s{streams}"]
            rate = r["stream_tokens_per_s_p50"]
            lines.append(
                f"| {results['labels'][key]} | {streams} | {r['tokens_per_s']:,.0f} | "
                f"{r['ttft_p50_ms']:.1f} | {r['ttft_p99_ms']:.1f} | "
                f"{'-' if rate is None else f'{rate:,.0f}'} | {r['requests']} |"
            )
    lines += ["", *(f"- {name}: {value:.2f}" for name, value in results["ratios"].items())]
    return "\n".join(lines) + "\n"


def ratios(variants: dict[str, Any]) -> dict[str, float]:
    many = f"s{STREAMS[-1]}"
    rate = {key: variants[key][many]["tokens_per_s"] for key in variants}
    first = {key: variants[key]["s1"]["ttft_p50_ms"] for key in variants}
    return {
        f"{many} tokens/s, continuous batching / no batching": rate["a"] / rate["b"],
        f"{many} tokens/s, continuous / static batching": rate["a"] / rate["s"],
        f"{many} tokens/s, continuous batching / plain FastAPI": rate["a"] / rate["c"],
        f"{many} TTFT p50, continuous / static batching": variants["a"][many]["ttft_p50_ms"]
        / variants["s"][many]["ttft_p50_ms"],
        "s1 TTFT p50, loadonce continuous / plain FastAPI": first["a"] / first["c"],
    }


def _same_texts(variants: dict[str, Any]) -> None:
    """Every server generates the same text for the same prompt (greedy, one model)."""
    texts = {key: measured["s1"]["sample_text"].strip() for key, measured in variants.items()}
    if len(set(texts.values())) != 1:
        sys.exit(f"the servers generate different texts: {texts}")


def parse_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=15, help="each measured run")
    parser.add_argument("--warmup", type=float, default=3, help="the warm-up before each")
    parser.add_argument("--new-tokens", type=int, default=64, help="tokens per request")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 2 s runs, 1 s warm-up")
    parser.add_argument("--client", help=argparse.SUPPRESS)  # _client_on_load_core
    parser.add_argument("--streams", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.seconds, args.warmup = 2, 1
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_arguments(argv)
    if args.client:
        result = asyncio.run(_load(args.client, args.streams, args.seconds, args.new_tokens))
        print(json.dumps(result))
        return result
    if shutil.which("taskset") is None:
        sys.exit("bench needs taskset (util-linux)")
    RESULTS.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as folder:
        directory = Path(folder) / MODEL_NAME
        model = build_model(directory)
        _progress(f"model: {model['parameters']:,} parameters in {directory}")
        variants: dict[str, Any] = {}
        for step, (key, label) in enumerate(VARIANTS, start=1):
            variants[key] = _measure(key, directory, args, f"[{step}/{len(VARIANTS)}] {label}")
    _same_texts(variants)
    versions = ["loadonce", "fastapi", "uvicorn", "transformers", "torch"]
    results: dict[str, Any] = {
        "date": datetime.date.today().isoformat(),
        "cpu": cpu_name(),
        "seconds": args.seconds,
        "warmup": args.warmup,
        "new_tokens": args.new_tokens,
        "versions": {name: importlib.metadata.version(name) for name in versions},
        "model": model,
        "labels": dict(VARIANTS),
        "variants": variants,
        "ratios": ratios(variants),
    }
    (RESULTS / "generate.json").write_text(json.dumps(results, indent=2))
    (RESULTS / "generate.md").write_text(render(results))
    print(render(results))
    return results


if __name__ == "__main__":
    main()
