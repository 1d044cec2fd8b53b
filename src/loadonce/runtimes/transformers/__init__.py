"""Hugging Face Transformers: a local model directory, offline, one batched forward pass per
batch. The task is read from transformers' own mappings (``tasks``); texts are checked against
the model's context and request parameters against their rules before they wait
(``predictors``, ``parameters``)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from loadonce.core.imports import import_optional
from loadonce.core.spec import ModelSpec
from loadonce.runtimes._base import Predictor, Runtime
from loadonce.runtimes.torch import torch_device
from loadonce.runtimes.transformers.audio import DEFAULT_MAX_SECONDS
from loadonce.runtimes.transformers.directory import (
    check_model_directory,
    has_tokenizer,
    weights_are_pickled,
)
from loadonce.runtimes.transformers.images import DEFAULT_MAX_PIXELS
from loadonce.runtimes.transformers.outputs import task_outputs
from loadonce.runtimes.transformers.parameters import DEFAULT_MAX_NEW_TOKENS, generation_rules
from loadonce.runtimes.transformers.predictors import (
    AudioPredictor,
    ImagePredictor,
    PipelinePredictor,
    QuestionAnsweringPredictor,
    Seq2SeqPredictor,
    ZeroShotPredictor,
    default_new_tokens,
)
from loadonce.runtimes.transformers.tasks import (
    ServedTask,
    architectures_of,
    auto_class_of,
    infer_task,
    served_task,
)

__all__ = ["TransformersRuntime"]


class TransformersRuntime(Runtime):
    name = "transformers"
    reads_input_shape = False
    options = frozenset(
        {
            "task",
            "device",
            "call",
            "request_parameters",
            "max_new_tokens",
            "max_pixels",
            "max_seconds",
        }
    )
    libraries = ("torch", "transformers")
    # Fast tokenizers hold mutable state ("Already borrowed" under concurrent calls) and a
    # pipeline is not documented as thread-safe: one call at a time, or pool:N for parallelism.
    default_concurrency = "serialized"

    def claims(self, spec: ModelSpec) -> bool:
        return spec.artifact is not None and (spec.artifact / "config.json").is_file()

    def runs_code(self, spec: ModelSpec) -> bool:
        return spec.artifact is not None and weights_are_pickled(spec.artifact)

    def load(self, spec: ModelSpec) -> Predictor:
        if spec.artifact is None:
            raise ValueError("the transformers runtime needs an artifact: a local model directory")
        directory: Path = spec.artifact
        if not (directory / "config.json").is_file():
            check_model_directory(directory, trust=spec.trust, needs_tokenizer=False)
        # Never reach for the network: set before transformers (and huggingface_hub) read it,
        # and also pass local_files_only for an app that imported them earlier.
        os.environ["HF_HUB_OFFLINE"] = "1"
        os.environ["TRANSFORMERS_OFFLINE"] = "1"
        transformers = import_optional("transformers", extra="transformers")
        # Progress bars are for notebooks: in a server log they are noise on every load.
        transformers.utils.logging.disable_progress_bar()
        task = (
            served_task(str(spec.options["task"]), transformers)
            if spec.options.get("task")
            else infer_task(directory, transformers, has_tokenizer=has_tokenizer(directory))
        )
        check_model_directory(
            directory,
            trust=spec.trust,
            needs_tokenizer=task.needs_tokenizer,
            needs_preprocessor=not task.reads_text,
        )
        predictor = self._load_task(spec, directory, task, transformers)
        # Every task's, declared in one place: the protocol's metadata from startup.
        call_arguments = dict(spec.options.get("call", {}))
        predictor.outputs = task_outputs(task, {*call_arguments, *predictor.request_parameters})
        return predictor

    def _load_task(
        self, spec: ModelSpec, directory: Path, task: ServedTask, transformers: Any
    ) -> Predictor:
        torch = import_optional("torch", extra="torch")
        device = str(spec.options.get("device", "cpu"))
        # The torch runtime's check: a device that is not there stops the load in one line.
        torch_device(torch, device)
        cap = int(spec.options.get("max_new_tokens", DEFAULT_MAX_NEW_TOKENS))
        if cap < 1:
            raise ValueError(f"options.max_new_tokens must be 1 or more; got {cap}")
        try:
            auto_class = auto_class_of(task, transformers, architectures_of(directory))
            model = getattr(transformers, auto_class).from_pretrained(
                directory, local_files_only=True, trust_remote_code=False
            )
            if task.examples == "audio":
                model.eval()
                return AudioPredictor(
                    transformers.pipeline(
                        task=task.name,
                        model=model,
                        feature_extractor=transformers.AutoFeatureExtractor.from_pretrained(
                            directory, local_files_only=True, trust_remote_code=False
                        ),
                        tokenizer=transformers.AutoTokenizer.from_pretrained(
                            directory, local_files_only=True, trust_remote_code=False
                        )
                        if task.needs_tokenizer
                        else None,
                        device=device,
                    ),
                    call_options=dict(spec.options.get("call", {})),
                    request_parameters=frozenset(spec.options.get("request_parameters", [])),
                    vocabulary=_labels(model.config),
                    max_seconds=float(spec.options.get("max_seconds", DEFAULT_MAX_SECONDS)),
                )
            if not task.reads_text:
                model.eval()
                return ImagePredictor(
                    transformers.pipeline(
                        task=task.name,
                        model=model,
                        image_processor=transformers.AutoImageProcessor.from_pretrained(
                            directory, local_files_only=True, trust_remote_code=False
                        ),
                        device=device,
                    ),
                    call_options=dict(spec.options.get("call", {})),
                    request_parameters=frozenset(spec.options.get("request_parameters", [])),
                    max_pixels=int(spec.options.get("max_pixels", DEFAULT_MAX_PIXELS)),
                    vocabulary=_labels(model.config),
                )
            tokenizer = transformers.AutoTokenizer.from_pretrained(
                directory, local_files_only=True, trust_remote_code=False
            )
        except OSError as exc:
            raise FileNotFoundError(
                f"cannot load {task.name!r} from {directory}: " + " ".join(str(exc).split())[:300]
            ) from None
        model.eval()
        call = dict(spec.options.get("call", {}))
        checks: dict[str, Any] = {
            "task": task,
            "tokenizer": tokenizer,
            "request_parameters": _request_parameters(spec, task),
            "truncation": call.get("truncation") is True,
            "new_tokens_cap": cap,
            "default_new_tokens": default_new_tokens(
                getattr(model, "generation_config", None), cap
            ),
        }
        if task.name == "question-answering":
            return QuestionAnsweringPredictor(model.to(device), tokenizer, torch)
        if not task.pipeline:
            return Seq2SeqPredictor(model.to(device), torch, **checks)
        if task.generates and tokenizer.pad_token is None:
            # Batched generation pads; a causal LM without a padding token pads with its end.
            tokenizer.pad_token = tokenizer.eos_token
        pipeline = transformers.pipeline(
            task=task.name, model=model, tokenizer=tokenizer, device=device
        )
        del checks["tokenizer"]
        if task.examples == "zero-shot":
            return ZeroShotPredictor(pipeline, call_options=call, **checks)
        return PipelinePredictor(pipeline, call_options=call, **checks)


def _labels(config: Any) -> int:
    """How many labels an image or audio classifier has: the most a top_k may ask for."""
    labels = getattr(config, "id2label", None)
    return max(1, len(labels)) if isinstance(labels, dict) else 1


def _request_parameters(spec: ModelSpec, task: ServedTask) -> frozenset[str]:
    """What a request may set: the operator's list when given; otherwise the generation
    parameters for a generating task, and nothing for another (some pipeline arguments decide
    how long a call takes)."""
    listed = spec.options.get("request_parameters")
    if listed is not None:
        return frozenset(str(name) for name in listed)
    if task.generates:
        return frozenset(generation_rules(1))
    return frozenset()
