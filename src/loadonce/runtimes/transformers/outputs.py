"""What each served task answers per example, declared at load: the protocol's metadata lists
it from startup, and every answer is sent as it says.

A task whose answer is a list of objects or nested lists (entities, filled masks, ranked
labels, a text's token vectors) is one JSON document per example: BYTES, shape [-1]. Its
length varies with the text (a sentence without entities has none; a shorter text has
fewer token vectors), so no one numeric shape holds every answer, nor every batch of
texts of different lengths. A task whose answer is an object of single values is one
tensor per value (text classification's label and score, generated text)."""

from __future__ import annotations

from collections.abc import Iterable

from loadonce.core.signature import DEFAULT_OUTPUT, TensorInfo
from loadonce.runtimes.transformers.tasks import ServedTask

_TEXT = "string"
_DOCUMENT = TensorInfo(name=DEFAULT_OUTPUT, dtype=_TEXT, shape=(None,))

# The tasks whose answer is an object of single values, and those values.
_FIELDS: dict[str, tuple[TensorInfo, ...]] = {
    "text-classification": (
        TensorInfo(name="label", dtype=_TEXT, shape=(None,)),
        TensorInfo(name="score", dtype="float64", shape=(None,)),
    ),
    "text-generation": (TensorInfo(name="generated_text", dtype=_TEXT, shape=(None,)),),
    "text2text-generation": (TensorInfo(name="generated_text", dtype=_TEXT, shape=(None,)),),
    "automatic-speech-recognition": (TensorInfo(name="text", dtype=_TEXT, shape=(None,)),),
    "question-answering": (
        TensorInfo(name="answer", dtype=_TEXT, shape=(None,)),
        TensorInfo(name="score", dtype="float32", shape=(None,)),
        TensorInfo(name="start", dtype="int64", shape=(None,)),
        TensorInfo(name="end", dtype="int64", shape=(None,)),
    ),
}

# Pipeline arguments that change an answer's form: with one of them set by the operator
# (options.call) or allowed per request (options.request_parameters), the task answers a
# list (top_k's ranked labels) or more fields (timestamps' chunks, token ids): one JSON
# document per example then, whatever the request.
_FORM_ARGUMENTS: dict[str, frozenset[str]] = {
    "text-classification": frozenset({"top_k", "return_all_scores"}),
    "text-generation": frozenset({"return_tensors", "return_text", "return_type"}),
    "automatic-speech-recognition": frozenset({"return_timestamps", "return_language"}),
}


def task_outputs(task: ServedTask, arguments: Iterable[str] = ()) -> tuple[TensorInfo, ...]:
    """The outputs of ``task``'s answers, given the pipeline arguments its calls may carry
    (the operator's and those a request may set)."""
    fields = _FIELDS.get(task.name)
    if fields is None or _FORM_ARGUMENTS.get(task.name, frozenset()) & set(arguments):
        return (_DOCUMENT,)
    return fields
