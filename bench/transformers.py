"""`make bench-transformers`: a Transformers text-classification model served by loadonce
without and with batching, and by a plain FastAPI endpoint calling the same pipeline, in one
run.

The model is built here, nothing downloaded: a 2-layer BERT (hidden size 128) with random
weights and a WordPiece tokenizer over a small vocabulary, saved with save_pretrained into a
temporary directory that all three servers read. Each server runs pinned to core 0, wrk to
core 1; one short sentence per request; 16 connections then 1, each a warm-up and then two
measured runs (the spread is the noise). Also the pipeline in-process on core 0 (1 text and 16
texts per call), which says what batching can gain. Writes bench/results/transformers.json
and .md, and bench/results/bench-transformers.png (not with --quick).

    python -m bench.transformers [--quick] [--seconds 15] [--fill-wait-ms 2] [--max-wait-ms 0]
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import json
import math
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx2 as httpx

from bench import wrk
from bench.compare import cpu_name
from bench.peers import envs
from bench.report import num, run_cells
from bench.servers import (
    LOAD_CORE,
    RESULTS,
    ROOT,
    SERVER_CORE,
    Launch,
    free_port,
    serving,
    tree_cpu_seconds,
    tree_memory_mib,
)

# One short sentence (11 words, 13 tokens with [CLS] and [SEP]), the same in every request.
SENTENCE = "the movie was good but the ending felt a little slow"
CONNECTIONS = (16, 1)
MAX_BATCH_SIZE = 16  # as many as the connections: a batch can hold every waiting request
MODEL_NAME = "m"  # the directory's name, hence the model's name under `loadonce serve DIR`
# (key, label): keys as in bench/compare.py (charts.py colours loadonce's "a" and "b").
VARIANTS = [
    ("b", "loadonce, no batching"),
    ("a", "loadonce, batching"),
    ("c", "FastAPI, pipeline loaded once + def handler"),
]
BERT: dict[str, Any] = {
    "hidden_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 256,
    "max_position_embeddings": 128,
    "num_labels": 2,
}
_WORDS = [
    "the", "a", "movie", "was", "good", "bad", "but", "ending", "felt", "little", "slow", "great",
    "plot", "it",
]  # fmt: skip


def _progress(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def build_model(directory: Path) -> dict[str, Any]:
    """Save the model and its tokenizer into ``directory``; return its size."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizer

    letters = [chr(code) for code in range(ord("a"), ord("z") + 1)]
    # Special tokens, whole words, then letters and word-piece letters: any lower-case text
    # tokenizes (into pieces where a word is not in the vocabulary), none is [UNK].
    vocabulary = list(
        dict.fromkeys(
            ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *_WORDS, *letters]
            + [f"##{letter}" for letter in letters]
        )
    )
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(vocabulary),
        id2label={0: "NEGATIVE", 1: "POSITIVE"},
        label2id={"NEGATIVE": 0, "POSITIVE": 1},
        **BERT,
    )
    model = BertForSequenceClassification(config)
    model.save_pretrained(directory)
    tokenizer = BertTokenizer(vocab={word: index for index, word in enumerate(vocabulary)})
    tokenizer.save_pretrained(directory)
    tokens = len(tokenizer(SENTENCE)["input_ids"])
    return {
        **BERT,
        "vocab_size": len(vocabulary),
        "parameters": sum(p.numel() for p in model.parameters()),
        "directory_bytes": sum(f.stat().st_size for f in directory.iterdir()),
        "sentence": SENTENCE,
        "sentence_tokens": tokens,
    }


def inprocess(directory: Path, seconds: float) -> dict[str, Any]:
    """The pipeline called in this process (pinned by the caller) on 1 and on MAX_BATCH_SIZE
    copies of the sentence, as loadonce calls it (``batch_size`` = the texts)."""
    import torch
    from transformers import pipeline

    classify = pipeline("text-classification", model=str(directory), tokenizer=str(directory))
    ms_per_call: dict[str, float] = {}
    for size in (1, MAX_BATCH_SIZE):
        texts = [SENTENCE] * size
        classify(texts, batch_size=size)  # the first call allocates
        calls, started = 0, time.perf_counter()
        while time.perf_counter() - started < seconds:
            classify(texts, batch_size=size)
            calls += 1
        ms_per_call[str(size)] = 1000 * (time.perf_counter() - started) / calls
    return {"torch_threads": torch.get_num_threads(), "ms_per_call": ms_per_call}


def _inprocess_on_server_core(directory: Path, seconds: float) -> dict[str, Any]:
    command = ["taskset", "-c", SERVER_CORE, sys.executable, "-m", "bench.transformers"]
    output = subprocess.run(
        [*command, "--inprocess", str(directory), "--seconds", str(seconds)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    found: dict[str, Any] = json.loads(output.splitlines()[-1])
    return found


def _batching_config(directory: Path, args: argparse.Namespace) -> Path:
    lines = [
        '[server]\nlog_level = "warning"\n',
        "[[models]]",
        f'name = "{MODEL_NAME}"',
        f'artifact = "{directory}"',
        'concurrency = "serialized"',  # the runtime's default, said for the reader
        "[models.batching]",
        f"max_batch_size = {MAX_BATCH_SIZE}",
        f"max_wait_ms = {args.max_wait_ms:g}",
        f"fill_wait_ms = {args.fill_wait_ms:g}",
    ]
    path = RESULTS / "transformers-batching.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def _launch(key: str, directory: Path, port: int, args: argparse.Namespace) -> Launch:
    url = f"http://127.0.0.1:{port}/models/{MODEL_NAME}/predict"
    body = json.dumps({"inputs": [SENTENCE]})
    serve = [sys.executable, "-m", "loadonce", "serve"]
    if key == "b":  # the directory alone: the transformers runtime's defaults, no batching
        target = str(directory)
        command = [*serve, target, "--port", str(port), "--log-level", "warning"]
    elif key == "a":
        command = [*serve, str(_batching_config(directory, args)), "--port", str(port)]
    else:
        command = [
            sys.executable, "-m", "uvicorn", "bench.plain_apps:transformers_app",
            "--port", str(port), "--log-level", "warning", "--no-access-log",
        ]  # fmt: skip
    return Launch(command, url, body)


def _mean_batch(metrics_url: str) -> tuple[float, float]:
    """(sum, count) of loadonce_batch_size_examples, over all its series."""
    text = httpx.get(metrics_url).text
    total = count = 0.0
    for suffix, value in re.findall(
        r"^loadonce_batch_size_examples_(sum|count)\{[^}]*\} (\S+)$", text, re.MULTILINE
    ):
        if suffix == "sum":
            total += float(value)
        else:
            count += float(value)
    return total, count


def _measure(key: str, directory: Path, args: argparse.Namespace, step: str) -> dict[str, Any]:
    measured: dict[str, Any] = {}
    how = _launch(key, directory, free_port(), args)
    # This checkout's src/ first: the environment's editable install may point at another.
    env = {"PYTHONPATH": str(ROOT / "src")}
    with serving(f"transformers-{key}", how, directory, env=env) as server:
        measured["answer"] = httpx.post(
            server.url, content=server.body, headers={"content-type": "application/json"}
        ).json()
        metrics_url = server.url.split("/models/")[0] + "/metrics"
        for connections in CONNECTIONS:
            _progress(f"{step} c{connections}: warm-up {args.warmup:g} s")
            wrk.run(
                server.url, server.body, connections=connections, seconds=args.warmup,
                core=LOAD_CORE,
            )  # fmt: skip
            before = _mean_batch(metrics_url) if key != "c" else (0.0, 0.0)
            cpu_before = tree_cpu_seconds(server.process.pid)
            runs = []
            for attempt in range(args.runs):
                result = wrk.run(
                    server.url, server.body, connections=connections, seconds=args.seconds,
                    core=LOAD_CORE,
                )  # fmt: skip
                _progress(
                    f"{step} c{connections} run {attempt + 1}/{args.runs}: "
                    f"{result.req_per_s:,.0f} req/s, p50 {result.p50_ms} ms, "
                    f"p99 {result.p99_ms} ms, {result.errors} errors"
                )
                runs.append(result.as_dict())
            measured[f"c{connections}"] = runs
            served = sum(run["req_per_s"] for run in runs) * args.seconds
            cpu = tree_cpu_seconds(server.process.pid) - cpu_before
            measured[f"c{connections}_cpu_ms_per_request"] = 1000 * cpu / served if served else None
            if key != "c":
                # Examples per predict call over the measured runs: what batching achieved.
                after = _mean_batch(metrics_url)
                calls = after[1] - before[1]
                measured[f"c{connections}_mean_batch"] = (
                    (after[0] - before[0]) / calls if calls else None
                )
        measured["memory"] = tree_memory_mib(server.process.pid)
    return measured


def _same_answers(variants: dict[str, dict[str, Any]]) -> None:
    """All three serve the same model: the same label and score for the sentence."""
    answers = {key: measured["answer"]["outputs"][0] for key, measured in variants.items()}
    first = next(iter(answers.values()))
    for key, answer in answers.items():
        if answer["label"] != first["label"] or not math.isclose(
            answer["score"], first["score"], rel_tol=1e-5
        ):
            sys.exit(f"the servers answer differently: {answers} (differs: {key})")


def _best(runs: list[dict[str, Any]]) -> dict[str, Any]:
    best: dict[str, Any] = max(runs, key=lambda run: run["req_per_s"])
    return best


def ratios(results: dict[str, Any]) -> dict[str, float]:
    """The comparisons the issue asks for, on the better run of each."""
    variants = results["models"]["transformers"]["variants"]
    many = f"c{results['many_connections']}"
    rate = {key: _best(variants[key][many])["req_per_s"] for key in variants}
    p50 = {key: _best(variants[key]["c1"])["p50_ms"] for key in variants}
    return {
        f"{many} batching / no batching": rate["a"] / rate["b"],
        f"{many} loadonce batching / plain FastAPI": rate["a"] / rate["c"],
        f"{many} loadonce no batching / plain FastAPI": rate["b"] / rate["c"],
        "c1 p50 batching / no batching": p50["a"] / p50["b"],
        "c1 p50 loadonce no batching / plain FastAPI": p50["b"] / p50["c"],
    }


def render(results: dict[str, Any]) -> str:
    entry = results["models"]["transformers"]
    many = results["many_connections"]
    model = results["model"]
    inproc = entry["inprocess"]
    calls = inproc["ms_per_call"]
    versions = ", ".join(f"{name} {version}" for name, version in results["versions"].items())
    lines = [
        f"Run of {results['date']} on {results['cpu']}; servers on core {SERVER_CORE}, wrk on "
        f"core {LOAD_CORE}; per connection count a {results['warmup']:g} s warm-up, then "
        f"{results['runs']} measured run(s) of {results['seconds']:g} s. Versions: {versions}.",
        "",
        f"Model: BERT, {model['num_hidden_layers']} layers, hidden size {model['hidden_size']}, "
        f"{model['num_attention_heads']} heads, intermediate size "
        f"{model['intermediate_size']}, vocabulary {model['vocab_size']}: "
        f"{model['parameters']:,} parameters, {model['directory_bytes'] / 2**20:.1f} MiB on "
        f"disk; random weights. Body: one sentence of {model['sentence_tokens']} tokens. "
        f"Batching: max_batch_size {results['batching']['max_batch_size']}, max_wait_ms "
        f"{results['batching']['max_wait_ms']:g}, fill_wait_ms "
        f"{results['batching']['fill_wait_ms']:g}.",
        f"In-process on core {SERVER_CORE} ({inproc['torch_threads']} torch thread): "
        f"{calls['1']:.2f} ms per call of 1 text, {calls[str(MAX_BATCH_SIZE)]:.2f} ms per "
        f"call of {MAX_BATCH_SIZE} ({entry['inprocess_rows_per_s']:,.0f} texts/s).",
        "",
        f"| server | c{many} req/s (run 1 / 2) | c{many} p50 ms | c{many} p99 ms | c{many} errors "
        "| c1 req/s (run 1 / 2) | c1 p50 ms | c1 p99 ms | c1 errors "
        f"| c{many} examples per call | c{many} server CPU ms per request | RSS MiB |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for key, measured in entry["variants"].items():
        cells = [results["labels"][key]]
        for connections in (f"c{many}", "c1"):
            cells += run_cells(measured[connections])
        mean_batch = measured.get(f"c{many}_mean_batch")
        cpu = measured.get(f"c{many}_cpu_ms_per_request")
        cells += [num(mean_batch, 1), num(cpu, 2), num(measured["memory"]["rss_mib"], 0)]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", *(f"- {name}: {value:.2f}" for name, value in results["ratios"].items())]
    return "\n".join(lines) + "\n"


def _charts(results_file: Path) -> None:
    python = envs.python_of("charts")
    script = ROOT / "bench" / "charts.py"
    subprocess.run([str(python), str(script), str(results_file), str(RESULTS)], check=True)


def parse_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=15, help="each measured wrk run")
    parser.add_argument("--warmup", type=float, default=3, help="the warm-up before each")
    parser.add_argument("--runs", type=int, default=2, help="measured runs per connection count")
    parser.add_argument("--max-wait-ms", type=float, default=0, help="batching.max_wait_ms")
    parser.add_argument("--fill-wait-ms", type=float, default=2, help="batching.fill_wait_ms")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a smoke run: 2 s runs, 1 s warm-up, one run each, no chart",
    )
    parser.add_argument("--inprocess", type=Path, help=argparse.SUPPRESS)  # _inprocess_on_...
    args = parser.parse_args(argv)
    if args.quick:
        args.seconds, args.warmup, args.runs = 2, 1, 1
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_arguments(argv)
    if args.inprocess:
        print(json.dumps(inprocess(args.inprocess, min(args.seconds, 5))))
        return {}
    if shutil.which("wrk") is None or shutil.which("taskset") is None:
        sys.exit("bench needs wrk and taskset: apt-get install wrk util-linux")
    RESULTS.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as folder:
        directory = Path(folder) / MODEL_NAME
        model = build_model(directory)
        _progress(f"model: {model['parameters']:,} parameters in {directory}")
        inproc = _inprocess_on_server_core(directory, args.seconds)
        texts_per_s = 1000 * MAX_BATCH_SIZE / inproc["ms_per_call"][str(MAX_BATCH_SIZE)]
        variants: dict[str, Any] = {}
        for step, (key, label) in enumerate(VARIANTS, start=1):
            name = f"[{step}/{len(VARIANTS)}] {label}"
            variants[key] = _measure(key, directory, args, name)
    _same_answers(variants)
    versions = [
        "loadonce",
        "fastapi",
        "starlette",
        "uvicorn",
        "transformers",
        "torch",
        "tokenizers",
    ]
    results: dict[str, Any] = {
        "date": datetime.date.today().isoformat(),
        "cpu": cpu_name(),
        "seconds": args.seconds,
        "warmup": args.warmup,
        "runs": args.runs,
        "many_connections": CONNECTIONS[0],
        "versions": {name: importlib.metadata.version(name) for name in versions},
        "model": model,
        "batching": {
            "max_batch_size": MAX_BATCH_SIZE,
            "max_wait_ms": args.max_wait_ms,
            "fill_wait_ms": args.fill_wait_ms,
        },
        "labels": dict(VARIANTS),
        # The shape bench/charts.py reads; "transformers" names the chart's file.
        "models": {
            "transformers": {
                "inprocess": inproc,
                "inprocess_rows_per_s": texts_per_s,
                "inprocess_label": f"pipeline in-process, {MAX_BATCH_SIZE} texts per call",
                "variants": variants,
            }
        },
    }
    results["ratios"] = ratios(results)
    results_file = RESULTS / "transformers.json"
    results_file.write_text(json.dumps(results, indent=2))
    (RESULTS / "transformers.md").write_text(render(results))
    if not args.quick:
        _charts(results_file)
    print(render(results))
    return results


if __name__ == "__main__":
    main()
