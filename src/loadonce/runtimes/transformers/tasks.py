"""Which task a Transformers model directory serves, read from transformers' own mappings."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

# What one example of a task is: a text, a question with the context that answers it, a text
# with the labels to choose from, an image file's bytes, or a clip of audio samples.
ExampleKind = Literal["text", "question", "zero-shot", "image", "audio"]


@dataclass(frozen=True)
class ServedTask:
    """A task loadonce serves: how its examples look, and whether it generates text."""

    name: str
    examples: ExampleKind
    generates: bool = False
    # Served through ``transformers.pipeline``; otherwise by loadonce's own predictor, for
    # tasks whose pipeline transformers 5 removed (the model classes remain).
    pipeline: bool = True
    # For loadonce's own predictors: the auto class that loads the model.
    auto_class: str | None = None

    @property
    def reads_text(self) -> bool:
        """Whether its examples are tokenized (else a preprocessor reads them)."""
        return self.examples not in ("image", "audio")

    @property
    def needs_tokenizer(self) -> bool:
        """Whether it reads or writes text (speech recognition writes it)."""
        return self.reads_text or self.name == "automatic-speech-recognition"


SERVED_TASKS = {
    task.name: task
    for task in (
        ServedTask("text-classification", "text"),
        ServedTask("token-classification", "text"),
        ServedTask("fill-mask", "text"),
        ServedTask("feature-extraction", "text"),
        ServedTask("text-generation", "text", generates=True),
        ServedTask(
            "text2text-generation",
            "text",
            generates=True,
            pipeline=False,
            auto_class="AutoModelForSeq2SeqLM",
        ),
        ServedTask(
            "question-answering",
            "question",
            pipeline=False,
            auto_class="AutoModelForQuestionAnswering",
        ),
        ServedTask("zero-shot-classification", "zero-shot"),
        ServedTask("image-classification", "image"),
        ServedTask("image-feature-extraction", "image"),
        ServedTask("audio-classification", "audio"),
        ServedTask("automatic-speech-recognition", "audio"),
    )
}


def served_task(name: str, transformers: Any) -> ServedTask:
    """The task named by ``options.task`` (transformers' aliases too), or a clear refusal."""
    name = transformers.pipelines.TASK_ALIASES.get(name, name)
    task = SERVED_TASKS.get(name)
    if task is not None:
        return task
    known = name in transformers.pipelines.SUPPORTED_TASKS
    raise ValueError(
        f"the task {name!r} is "
        + ("not served by loadonce yet" if known else "not a transformers task")
        + f"; served tasks: {', '.join(SERVED_TASKS)}"
    )


def infer_task(path: Path, transformers: Any, *, has_tokenizer: bool) -> ServedTask:
    """The task of config.json's architectures, as transformers' auto classes map them (a
    ``GPT2LMHeadModel`` is a causal LM: text-generation), or a clear request to name it."""
    config = _config(path)
    architectures = _architectures(config)
    candidates = [
        (task, kind)
        for architecture in architectures
        for task, kind in _tasks_of(architecture, transformers)
    ]
    # An architecture can serve several tasks (AutoModel holds text and image encoders; BART's
    # model class fills masks and generates): a directory with a tokenizer is read as text,
    # one without as anything else, and an encoder-decoder model as one that generates text.
    seq2seq = config.get("is_encoder_decoder") is True
    candidates.sort(
        key=lambda found: (
            (found[1] == "text") != has_tokenizer,
            seq2seq and found[0] != "text2text-generation",
        )
    )
    for task, _ in candidates:
        if task in SERVED_TASKS:
            return SERVED_TASKS[task]
    found = ", ".join(architectures) or "none"
    if candidates:
        raise ValueError(
            f"config.json's architectures ({found}) serve the task {candidates[0][0]!r}, "
            f"which loadonce does not serve yet; served tasks: {', '.join(SERVED_TASKS)}"
        )
    raise ValueError(
        f"cannot tell the pipeline task from config.json (architectures: {found}); "
        "set options.task, for example 'text-classification'"
    )


def _tasks_of(architecture: str, transformers: Any) -> Iterator[tuple[str, str]]:
    """Each (task, input type) whose model classes include ``architecture``: transformers'
    pipeline tasks in their own order, then the tasks loadonce serves itself."""
    for task, entry in transformers.pipelines.SUPPORTED_TASKS.items():
        if any(_maps(auto, architecture) for auto in entry.get("pt", ())):
            yield task, str(entry.get("type", ""))
    for task in SERVED_TASKS.values():
        if task.auto_class and _maps(getattr(transformers, task.auto_class), architecture):
            yield task.name, "text"


def _maps(auto_class: Any, architecture: str) -> bool:
    # The auto class's table of class names by model type. Read by name: listing the mapping's
    # values would import every model class transformers has.
    names = getattr(getattr(auto_class, "_model_mapping", None), "_model_mapping", {})
    for value in names.values():
        if architecture == value or (isinstance(value, tuple | list) and architecture in value):
            return True
    return False


def auto_class_of(task: ServedTask, transformers: Any, architectures: list[str]) -> str:
    """The auto class that loads the task's model: for a pipeline task, the one of
    transformers' classes for it that maps the model's architecture (speech recognition has
    CTC and sequence-to-sequence models), else its first."""
    if task.auto_class is not None:
        return task.auto_class
    classes = transformers.pipelines.SUPPORTED_TASKS[task.name]["pt"]
    for auto in classes:
        if any(_maps(auto, architecture) for architecture in architectures):
            return str(auto.__name__)
    return str(classes[0].__name__)


def architectures_of(path: Path) -> list[str]:
    """The model classes config.json names (none when it names none or cannot be read)."""
    return _architectures(_config(path))


def _config(path: Path) -> dict[str, Any]:
    try:
        config = json.loads((path / "config.json").read_text())
    except (OSError, ValueError):
        return {}
    return config if isinstance(config, dict) else {}


def _architectures(config: dict[str, Any]) -> list[str]:
    found = config.get("architectures")
    return [str(a) for a in found] if isinstance(found, list) else []
