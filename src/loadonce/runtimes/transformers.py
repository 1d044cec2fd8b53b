"""Hugging Face Transformers: a local model directory, offline, served as a pipeline."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from loadonce.core.errors import InvalidInputError
from loadonce.core.imports import import_optional
from loadonce.core.spec import ModelSpec
from loadonce.runtimes._base import InputSignature, Predictor, Runtime, TensorInfo
from loadonce.runtimes.torch import torch_device

_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json")
_PICKLED_WEIGHT_FILES = ("pytorch_model.bin", "pytorch_model.bin.index.json")
# Any one of these holds a tokenizer's vocabulary. Without one, transformers builds an empty
# tokenizer without a word of warning, and every text becomes [UNK].
_TOKENIZER_FILES = (
    "tokenizer.json",
    "vocab.txt",
    "vocab.json",
    "spiece.model",
    "sentencepiece.bpe.model",
    "tokenizer.model",
)


class PipelinePredictor(Predictor):
    """Calls the pipeline on the whole list of texts (or other inputs) of a batch."""

    def __init__(
        self,
        pipeline: Any,
        *,
        call_options: dict[str, Any],
        text: bool,
        request_parameters: frozenset[str] = frozenset(),
    ) -> None:
        self.pipeline = pipeline
        self.call_options = call_options
        # Which pipeline arguments a client may set per request (Open Inference Protocol
        # parameters): none unless the operator lists them, since some (max_new_tokens...)
        # decide how long a call takes.
        self.request_parameters = request_parameters
        self._text = text
        self.signature = InputSignature(shape=(), dtype="string") if text else None
        self.inputs = [TensorInfo(name="text", dtype="string", shape=(None,))] if text else []

    def prepare(self, examples: list[Any]) -> Any:
        if self._text:
            bad = [i for i, e in enumerate(examples) if not isinstance(e, str)]
            if bad:
                raise InvalidInputError(
                    f"this model takes text: each example must be a string (example {bad[0]} "
                    "is not)"
                )
        return examples

    def predict(self, batch: Any) -> Sequence[Any]:
        result: Sequence[Any] = self.pipeline(list(batch), **self.call_options)
        return result

    def predict_with(self, batch: Any, parameters: Mapping[str, Any]) -> Sequence[Any]:
        result: Sequence[Any] = self.pipeline(list(batch), **{**self.call_options, **parameters})
        return result


# Pipelines whose examples are plain strings; others take what the pipeline takes (objects).
_TEXT_TASKS = {
    "text-classification",
    "sentiment-analysis",
    "token-classification",
    "ner",
    "fill-mask",
    "feature-extraction",
    "text-generation",
    "text2text-generation",
    "summarization",
    "translation",
    "zero-shot-classification",
}


def check_model_directory(path: Path, *, trust: bool, needs_tokenizer: bool) -> None:
    """Name the missing file before transformers would look elsewhere or improvise."""
    if not path.is_dir():
        raise FileNotFoundError(f"no such model directory: {path}")
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"missing file: {path / 'config.json'}")
    if needs_tokenizer and not any((path / name).is_file() for name in _TOKENIZER_FILES):
        raise FileNotFoundError(
            f"missing file: {path / 'tokenizer.json'} (or another vocabulary file: "
            f"{', '.join(_TOKENIZER_FILES[1:])}); without it every text would become [UNK]"
        )
    if any((path / name).is_file() for name in _WEIGHT_FILES):
        return
    pickled = [name for name in _PICKLED_WEIGHT_FILES if (path / name).is_file()]
    if pickled and not trust:
        raise PermissionError(
            f"{path / pickled[0]} is a pickle, which runs code when loaded; convert the "
            "weights to model.safetensors, or set trust = true if you trust its origin"
        )
    if not pickled:
        raise FileNotFoundError(f"missing file: {path / 'model.safetensors'} (the weights)")


# The pipeline task that a model class's name implies (its config.json "architectures").
_TASK_BY_ARCHITECTURE_SUFFIX = (
    ("ForSequenceClassification", "text-classification"),
    ("ForTokenClassification", "token-classification"),
    ("ForMaskedLM", "fill-mask"),
    ("ForCausalLM", "text-generation"),
    ("ForQuestionAnswering", "question-answering"),
    ("ForConditionalGeneration", "text2text-generation"),
)


def infer_task(path: Path) -> str:
    """The pipeline task from config.json's architectures, or a clear request to name it."""
    try:
        config = json.loads((path / "config.json").read_text())
    except (OSError, ValueError):
        config = {}
    architectures = config.get("architectures") or []
    for architecture in architectures:
        for suffix, task in _TASK_BY_ARCHITECTURE_SUFFIX:
            if str(architecture).endswith(suffix):
                return task
    found = ", ".join(map(str, architectures)) or "none"
    raise ValueError(
        f"cannot tell the pipeline task from config.json (architectures: {found}); "
        "set options.task, for example 'text-classification'"
    )


class TransformersRuntime(Runtime):
    name = "transformers"
    options = frozenset({"task", "device", "call", "request_parameters"})
    libraries = ("torch", "transformers")
    # Fast tokenizers hold mutable state ("Already borrowed" under concurrent calls) and a
    # pipeline is not documented as thread-safe: one call at a time, or pool:N for parallelism.
    default_concurrency = "serialized"

    def claims(self, spec: ModelSpec) -> bool:
        return spec.artifact is not None and (spec.artifact / "config.json").is_file()

    def runs_code(self, spec: ModelSpec) -> bool:
        # Pickled weights are read only when no safetensors weights are there (see load).
        path = spec.artifact
        if path is None or any((path / name).is_file() for name in _WEIGHT_FILES):
            return False
        return any((path / name).is_file() for name in _PICKLED_WEIGHT_FILES)

    def load(self, spec: ModelSpec) -> Predictor:
        if spec.artifact is None:
            raise ValueError("the transformers runtime needs an artifact: a local model directory")
        task = spec.options.get("task") or infer_task(spec.artifact)
        text = task in _TEXT_TASKS
        check_model_directory(spec.artifact, trust=spec.trust, needs_tokenizer=text)
        # Never reach for the network: set before transformers (and huggingface_hub) read it,
        # and also pass local_files_only for an app that imported them earlier.
        os.environ["HF_HUB_OFFLINE"] = "1"
        os.environ["TRANSFORMERS_OFFLINE"] = "1"
        transformers = import_optional("transformers", extra="transformers")
        directory = str(spec.artifact)
        device = str(spec.options.get("device", "cpu"))
        # The torch runtime's check: a device that is not there stops the load in one line.
        torch_device(import_optional("torch", extra="torch"), device)
        try:
            pipeline = transformers.pipeline(
                task=task,
                model=directory,
                tokenizer=directory,
                device=device,
                local_files_only=True,
                trust_remote_code=False,
            )
        except OSError as exc:
            raise FileNotFoundError(
                f"cannot load {task!r} from {directory}: " + " ".join(str(exc).split())[:300]
            ) from None
        return PipelinePredictor(
            pipeline,
            call_options=dict(spec.options.get("call", {})),
            request_parameters=frozenset(spec.options.get("request_parameters", [])),
            text=text,
        )
