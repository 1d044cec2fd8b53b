"""The predictors of Transformers models: each batch is one batch of the model's forward pass.

Every request's texts are tokenized alone first (in ``prepare``), so a text longer than the
model's context is that request's 400; the batch is then padded once and run together.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from loadonce.core.errors import ContextLengthError, InvalidInputError, TextInputError
from loadonce.core.generation import GenerationEngine
from loadonce.runtimes._base import InputSignature, Predictor, TensorInfo
from loadonce.runtimes.transformers.audio import CLIP, clip_samples, shortest_clip
from loadonce.runtimes.transformers.generation import CausalEngine, Seq2SeqEngine
from loadonce.runtimes.transformers.hypotheses import check_pairs, hypothesis_lengths, template_of
from loadonce.runtimes.transformers.images import decode_image, image_bytes
from loadonce.runtimes.transformers.parameters import (
    Rule,
    check_parameters,
    generation_rules,
    pipeline_rules,
)
from loadonce.runtimes.transformers.plain_text import (
    PLAIN_TEXT,
    control_ids,
    own_tokenizer,
    refuse_control_tokens,
)
from loadonce.runtimes.transformers.sampling import as_the_engine_samples
from loadonce.runtimes.transformers.tasks import ServedTask
from loadonce.runtimes.transformers.text_length import (
    exceeds,
    longest_token_characters,
    most_characters,
    refuse_if_longer,
)

# Where a model's config records the longest sequence its position embeddings cover.
_CONTEXT_ATTRIBUTES = ("max_position_embeddings", "n_positions", "max_sequence_length")
# A tokenizer's model_max_length when nobody set it (transformers' VERY_LARGE_INTEGER).
_UNSET_LENGTH = 10**12
# Question answering: the longest answer looked for, in tokens (the removed pipeline's default).
_LONGEST_ANSWER_TOKENS = 15
# The most examples in one forward pass unless the operator's options.call sets batch_size: a
# pass's memory grows with its examples times their padded length, and one request may hold
# a thousand texts (max_request_examples); larger batches run as several passes.
LARGEST_PASS = 64


def pass_size(examples: int) -> int:
    return max(1, min(examples, LARGEST_PASS))


def in_passes(count: int, size: int = LARGEST_PASS) -> list[range]:
    """Positions 0..count-1 cut into passes of at most ``size``."""
    return [range(start, min(start + size, count)) for start in range(0, count, size)]


@dataclass(frozen=True)
class Prompt:
    """One example's text, with its length in tokens (counted once, in ``prepare``)."""

    text: str
    tokens: int


def context_length(config: Any, tokenizer: Any) -> int | None:
    """The most tokens the model takes in one sequence, where the model or tokenizer says."""
    known = [
        value
        for value in (getattr(config, name, None) for name in _CONTEXT_ATTRIBUTES)
        if isinstance(value, int) and value > 0
    ]
    tokenizer_limit = getattr(tokenizer, "model_max_length", None)
    if isinstance(tokenizer_limit, int) and 0 < tokenizer_limit < _UNSET_LENGTH:
        known.append(tokenizer_limit)
    return min(known) if known else None


# New tokens when neither the request nor the model's generation config says: generate's own.
_GENERATE_DEFAULT_TOKENS = 20


def default_new_tokens(generation_config: Any, cap: int) -> int:
    """New tokens for a request that sets none: the model's generation config's
    (``max_new_tokens``, else ``max_length``), else generate's 20, never beyond the cap."""
    configured = getattr(generation_config, "max_new_tokens", None) or getattr(
        generation_config, "max_length", None
    )
    if not isinstance(configured, int) or configured < 1:
        configured = _GENERATE_DEFAULT_TOKENS
    return min(cap, configured)


class TextPredictor(Predictor):
    """Examples are strings. Checks each request's texts against the model's context, and
    request parameters against their rules; subclasses run a batch."""

    signature: InputSignature | None = InputSignature(shape=(), dtype="string")
    inputs: Sequence[TensorInfo] = (TensorInfo(name="text", dtype="string", shape=(None,)),)

    def __init__(
        self,
        *,
        task: ServedTask,
        tokenizer: Any,
        model_config: Any,
        request_parameters: frozenset[str],
        truncation: bool,
        new_tokens_cap: int,
        default_new_tokens: int,
    ) -> None:
        self.task = task
        self.tokenizer = tokenizer
        self.request_parameters = request_parameters
        self.context = context_length(model_config, tokenizer)
        self._truncation = truncation
        self._most_characters = most_characters(self.context, longest_token_characters(tokenizer))
        cut_at = getattr(tokenizer, "model_max_length", _UNSET_LENGTH)
        if truncation and self.context is not None and cut_at > self.context:
            # Truncation cuts at the tokenizer's model_max_length: left unset (a tokenizer
            # built without it) or past the model's positions, it cut too little, and a long
            # text failed inside the model.
            tokenizer.model_max_length = self.context
        self._new_tokens_cap = new_tokens_cap
        self._default_new_tokens = default_new_tokens
        # A generating or embedding model reads its client's text as text (plain_text.py);
        # fill-mask needs its [MASK], and the classifiers are left as their pipelines read.
        self.reads_plain_text = task.generates or task.name == "feature-extraction"
        self._controls = control_ids(tokenizer) if self.reads_plain_text else frozenset()
        vocabulary = getattr(model_config, "vocab_size", None)
        self._rules: dict[str, Rule] = (
            generation_rules(new_tokens_cap)
            if task.generates
            else pipeline_rules(vocabulary if isinstance(vocabulary, int) else 1000)
        )

    def check_parameters(self, parameters: Mapping[str, Any]) -> None:
        check_parameters(parameters, self._rules)

    def prepare(self, examples: list[Any]) -> list[Any]:
        return self.prompts(examples)

    def prompts(self, examples: list[Any]) -> list[Prompt]:
        """Each text with its token count, checked: strings, within the model's context."""
        bad = [i for i, e in enumerate(examples) if not isinstance(e, str)]
        if bad:
            raise TextInputError(
                f"this model takes text: each example must be a string (example {bad[0]} is not)"
            )
        examples = [self._within_reach(index, text) for index, text in enumerate(examples)]
        plain = PLAIN_TEXT if self.reads_plain_text else {}
        encoded = self.tokenizer(
            examples,
            truncation=self._truncation,
            return_special_tokens_mask=self.reads_plain_text,
            **plain,
        )
        counted = encoded["input_ids"]
        if self.reads_plain_text:
            for index, ids in enumerate(counted):
                added = encoded["special_tokens_mask"][index]
                refuse_control_tokens(
                    ids, added, self._controls, self.tokenizer, f"example {index}"
                )
        prompts = [Prompt(text, len(ids)) for text, ids in zip(examples, counted, strict=True)]
        # A model given no token at all fails inside (a reshape of nothing): an empty text,
        # or one of spaces, with a tokenizer that adds no special token.
        empty = [i for i, prompt in enumerate(prompts) if prompt.tokens == 0]
        if empty:
            raise TextInputError(f"example {empty[0]} holds no token: send some text")
        if self.task.name == "fill-mask":
            mask = self.tokenizer.mask_token_id
            for index, ids in enumerate(counted):
                if mask not in ids:
                    raise InvalidInputError(
                        f"example {index} has no {self.tokenizer.mask_token} token: this model "
                        "fills masks, so each text must hold at least one"
                    )
        if self.context is not None and not self._truncation:
            # A generating model needs room for at least one new token.
            room = self.context - (1 if self.task.generates and not self._decoder_apart else 0)
            for index, prompt in enumerate(prompts):
                if prompt.tokens > room:
                    raise ContextLengthError(
                        f"example {index} is {prompt.tokens} tokens long; this model takes at "
                        f"most {room}"
                        + (
                            ""
                            if self.task.generates
                            else " (truncation = true in options.call cuts longer texts instead)"
                        )
                    )
        return prompts

    def _within_reach(self, index: int, text: str) -> str:
        """``text``, refused without tokenizing it when it cannot fit the context
        (text_length.py); with truncation, cut well past what the kept tokens span, so the
        tokenizer does not read megabytes it would drop."""
        most = self._most_characters
        if most is None or not exceeds(text, most):
            return text
        if self._truncation and getattr(self.tokenizer, "truncation_side", "right") == "right":
            return text[: 2 * most]
        refuse_if_longer(text, most, self.context, f"example {index}")
        return text

    def _engine_limits(self) -> dict[str, Any]:
        return {
            "context": self.context,
            "max_new_tokens": self._new_tokens_cap,
            "default_new_tokens": self._default_new_tokens,
        }

    @property
    def _decoder_apart(self) -> bool:
        # A seq2seq model's encoder and decoder each have their own positions.
        return not self.task.pipeline

    def new_tokens(self, parameters: Mapping[str, Any], batch: Sequence[Prompt]) -> int:
        """The new tokens each example of the batch generates, checked against the context."""
        asked = parameters.get("max_new_tokens")
        least = parameters.get("min_new_tokens")
        least = least if isinstance(least, int) and not isinstance(least, bool) else 0
        longest = 0 if self._decoder_apart else max(prompt.tokens for prompt in batch)
        if not isinstance(asked, int) or isinstance(asked, bool):
            # Not asked for: the default (or the minimum asked for, if more), within what the
            # context leaves (at least one token is left: see prepare).
            wanted = min(max(self._default_new_tokens, least), self._new_tokens_cap)
            room = wanted if self.context is None else self.context - longest
            if least > room:
                raise ContextLengthError(
                    f"a prompt of {longest} tokens and at least {least} new tokens exceed the "
                    f"model's context of {self.context} tokens: ask for fewer (min_new_tokens)"
                )
            return min(wanted, room)
        wanted = min(asked, self._new_tokens_cap)
        if self.context is not None and longest + wanted > self.context:
            raise ContextLengthError(
                f"a prompt of {longest} tokens and {wanted} new tokens exceed the model's "
                f"context of {self.context} tokens: ask for fewer (max_new_tokens)"
            )
        return wanted


class PipelinePredictor(TextPredictor):
    """Calls the task's pipeline on the whole batch at once: the batch is the pipeline's
    ``batch_size``, so the texts are padded into one forward pass (of the model's ``generate``
    loop, for text generation) rather than one pass per text."""

    def __init__(self, pipeline: Any, *, call_options: Mapping[str, Any], **checks: Any) -> None:
        super().__init__(tokenizer=pipeline.tokenizer, model_config=pipeline.model.config, **checks)
        self.pipeline = pipeline
        self.call_options = dict(call_options)
        self.embeds_text = self.task.name == "feature-extraction"
        self.max_new_tokens = self._new_tokens_cap

    def generation_engine(self) -> GenerationEngine | None:
        if not self.task.generates:
            return None
        import torch

        tokenizer = own_tokenizer(self.tokenizer)  # plain_text.py: not shared across threads
        return CausalEngine(self.pipeline.model, tokenizer, torch, **self._engine_limits())

    def predict(self, batch: Any) -> Sequence[Any]:
        return self.predict_with(batch, {})

    def predict_with(self, batch: Any, parameters: Mapping[str, Any]) -> Sequence[Any]:
        prompts: list[Prompt] = list(batch)
        options = {**self.call_options, **parameters}
        # The operator's batch_size (options.call) cuts a batch into smaller passes.
        options.setdefault("batch_size", pass_size(len(prompts)))
        if self.reads_plain_text:
            # The pipeline tokenizes the texts again: as ``prompts`` counted them, as text.
            name = "tokenize_kwargs" if self.embeds_text else "tokenizer_encode_kwargs"
            options[name] = {**PLAIN_TEXT, **(options.get(name) or {})}
        if self.task.generates:
            options["max_new_tokens"] = self.new_tokens(options, prompts)
            options = as_the_engine_samples(options)
        outputs: list[Any] = self.pipeline([p.text for p in prompts], **options)
        if self.task.name == "fill-mask" and len(prompts) == 1:
            # The fill-mask pipeline unwraps a list of one text; every other keeps the list.
            outputs = [outputs]
        if self.task.name == "feature-extraction":
            return [
                self._unpadded(output, p.tokens) for output, p in zip(outputs, prompts, strict=True)
            ]
        if self.task.generates:
            # One sequence per prompt (num_return_sequences is not a request parameter).
            return [output[0] if isinstance(output, list) else output for output in outputs]
        return outputs

    def _unpadded(self, output: Any, tokens: int) -> Any:
        """One text's token vectors without the padding its batch added: the same answer as
        the text alone (the pipeline returns every padded position)."""
        if isinstance(output, list) and len(output) == 1 and isinstance(output[0], list):
            rows = output[0]
            kept = rows[-tokens:] if self.tokenizer.padding_side == "left" else rows[:tokens]
            return [kept]
        return output


class Seq2SeqPredictor(TextPredictor):
    """Text-to-text generation (summaries, translations...) with an encoder-decoder model,
    whose pipeline transformers 5 removed: the batch is padded into one ``generate`` call."""

    def __init__(self, model: Any, torch: Any, **checks: Any) -> None:
        super().__init__(model_config=model.config, **checks)
        self.model = model
        self._torch = torch
        self.max_new_tokens = self._new_tokens_cap

    def generation_engine(self) -> GenerationEngine | None:
        tokenizer = own_tokenizer(self.tokenizer)  # plain_text.py: not shared across threads
        return Seq2SeqEngine(self.model, tokenizer, self._torch, **self._engine_limits())

    def predict(self, batch: Any) -> Sequence[Any]:
        return self.predict_with(batch, {})

    def predict_with(self, batch: Any, parameters: Mapping[str, Any]) -> Sequence[Any]:
        prompts: list[Prompt] = list(batch)
        generation = as_the_engine_samples(
            {**parameters, "max_new_tokens": self.new_tokens(parameters, prompts)}
        )
        texts: list[str] = []
        for positions in in_passes(len(prompts)):
            encoded = self.tokenizer(
                [prompts[i].text for i in positions],
                padding=True,
                truncation=self._truncation,
                return_tensors="pt",
                **PLAIN_TEXT,
            ).to(self.model.device)
            with self._torch.inference_mode():
                generated = self.model.generate(**encoded, **generation)
            texts += self.tokenizer.batch_decode(generated, skip_special_tokens=True)
        return [{"generated_text": text} for text in texts]


class QuestionAnsweringPredictor(Predictor):
    """Extractive question answering (the pipeline transformers 5 removed): each example is
    ``{"question": ..., "context": ...}``; the answer is the context's most likely span."""

    inputs = (
        TensorInfo(name="question", dtype="string", shape=(None,)),
        TensorInfo(name="context", dtype="string", shape=(None,)),
    )
    # Its outputs (answer, score, start, end): transformers/outputs.py, as every task's.

    def __init__(self, model: Any, tokenizer: Any, torch: Any) -> None:
        if not getattr(tokenizer, "is_fast", False):
            raise ValueError(
                "question answering needs a fast tokenizer (tokenizer.json), which maps tokens "
                "back to characters"
            )
        self.model = model
        self.tokenizer = tokenizer
        self.context = context_length(model.config, tokenizer)
        self._torch = torch

    def prepare(self, examples: list[Any]) -> list[tuple[str, str]]:
        pairs = []
        for index, example in enumerate(examples):
            if (
                not isinstance(example, Mapping)
                or set(example) != {"question", "context"}
                or not all(isinstance(example[k], str) for k in ("question", "context"))
            ):
                raise InvalidInputError(
                    f"example {index}: each example must be an object of two strings, "
                    '{"question": ..., "context": ...}'
                )
            pairs.append((example["question"], example["context"]))
        if self.context is not None:
            lengths = self.tokenizer(
                [q for q, _ in pairs], [c for _, c in pairs], truncation=False
            )["input_ids"]
            for index, ids in enumerate(lengths):
                if len(ids) > self.context:
                    raise ContextLengthError(
                        f"example {index}: the question and context are {len(ids)} tokens "
                        f"long; this model takes at most {self.context}"
                    )
        return pairs

    def predict(self, batch: Any) -> Sequence[Any]:
        pairs: list[tuple[str, str]] = list(batch)
        answers: list[dict[str, Any]] = []
        for positions in in_passes(len(pairs)):
            answers += self._answer([pairs[i] for i in positions])
        return answers

    def _answer(self, pairs: list[tuple[str, str]]) -> list[dict[str, Any]]:
        encoded = self.tokenizer(
            [q for q, _ in pairs],
            [c for _, c in pairs],
            padding=True,
            return_tensors="pt",
            return_offsets_mapping=True,
        )
        offsets = encoded.pop("offset_mapping").tolist()
        sequences = [encoded.sequence_ids(i) for i in range(len(pairs))]
        torch = self._torch
        with torch.inference_mode():
            result = self.model(**encoded.to(self.model.device))
        starts = result.start_logits.float().cpu()
        ends = result.end_logits.float().cpu()
        return [
            self._best_span(starts[i], ends[i], sequences[i], offsets[i], pairs[i][1])
            for i in range(len(pairs))
        ]

    def _best_span(
        self, start: Any, end: Any, sequence: list[int | None], offsets: list[Any], context: str
    ) -> dict[str, Any]:
        torch = self._torch
        in_context = torch.tensor([s == 1 for s in sequence])
        if not bool(in_context.any()):
            return {"answer": "", "score": 0.0, "start": 0, "end": 0}
        # Probabilities over the context's tokens only (padding and the question excluded).
        start_p = torch.softmax(start.masked_fill(~in_context, -torch.inf), dim=0)
        end_p = torch.softmax(end.masked_fill(~in_context, -torch.inf), dim=0)
        # Every span (s, e) with s <= e < s + the longest answer; the most likely one wins.
        joint = torch.triu(torch.outer(start_p, end_p))
        joint = torch.tril(joint, diagonal=_LONGEST_ANSWER_TOKENS - 1)
        best = int(torch.argmax(joint))
        first, last = divmod(best, joint.shape[1])
        begin, finish = int(offsets[first][0]), int(offsets[last][1])
        return {
            "answer": context[begin:finish],
            "score": float(joint[first, last]),
            "start": begin,
            "end": finish,
        }


class ImagePredictor(Predictor):
    """A vision pipeline (image classification, image feature extraction) on the whole batch
    of images at once; each example is an image file's bytes (``images.py``)."""

    inputs = (TensorInfo(name="image", dtype="bytes", shape=(None,)),)

    def __init__(
        self,
        pipeline: Any,
        *,
        call_options: Mapping[str, Any],
        request_parameters: frozenset[str],
        max_pixels: int,
        vocabulary: int,
    ) -> None:
        self.pipeline = pipeline
        self.call_options = dict(call_options)
        self.request_parameters = request_parameters
        self._max_pixels = max_pixels
        self._rules = pipeline_rules(vocabulary)

    def check_parameters(self, parameters: Mapping[str, Any]) -> None:
        check_parameters(parameters, self._rules)

    def prepare(self, examples: list[Any]) -> list[Any]:
        return [
            decode_image(image_bytes(example, index), index, self._max_pixels)
            for index, example in enumerate(examples)
        ]

    def predict(self, batch: Any) -> Sequence[Any]:
        return self.predict_with(batch, {})

    def predict_with(self, batch: Any, parameters: Mapping[str, Any]) -> Sequence[Any]:
        images = list(batch)
        options = {**self.call_options, **parameters}
        options.setdefault("batch_size", pass_size(len(images)))
        outputs: list[Any] = self.pipeline(images, **options)
        return outputs


class ZeroShotPredictor(TextPredictor):
    """Zero-shot classification: each example is ``{"text": ..., "candidate_labels": [...]}``
    (and ``multi_label``); the examples of a batch that share their labels run as one batch
    of the pipeline (one text-and-hypothesis pair per label)."""

    signature = None
    inputs = ()

    def __init__(self, pipeline: Any, *, call_options: Mapping[str, Any], **checks: Any) -> None:
        super().__init__(tokenizer=pipeline.tokenizer, model_config=pipeline.model.config, **checks)
        self.pipeline = pipeline
        self.call_options = dict(call_options)
        try:
            self._template = template_of(self.call_options)
        except InvalidInputError as exc:
            raise ValueError(f"options.call: {exc}") from None

    def check_parameters(self, parameters: Mapping[str, Any]) -> None:
        super().check_parameters(parameters)
        if "hypothesis_template" in parameters:
            template_of(parameters)  # one the pipeline would fail on (a 500) is a 400

    def prepare(self, examples: list[Any]) -> list[Any]:
        texts, labelled = [], []
        for index, example in enumerate(examples):
            labels = example.get("candidate_labels") if isinstance(example, Mapping) else None
            multi = example.get("multi_label", False) if isinstance(example, Mapping) else None
            if (
                not isinstance(example, Mapping)
                or not set(example) <= {"text", "candidate_labels", "multi_label"}
                or not isinstance(example.get("text"), str)
                or not isinstance(labels, list)
                or not labels
                or not all(isinstance(label, str) and label for label in labels)
                or len(set(labels)) != len(labels)
                or not isinstance(multi, bool)
            ):
                raise InvalidInputError(
                    f"example {index}: each example must be an object "
                    '{"text": "...", "candidate_labels": ["...", ...]} (different, non-empty '
                    'labels; optional "multi_label": true or false)'
                )
            if not example["text"]:
                # The pipeline refuses an empty text (a ValueError from inside it: a 500).
                raise TextInputError(f'example {index}: "text" is empty: send some text')
            texts.append(example["text"])
            labelled.append((tuple(labels), multi))
        prompts = self.prompts(texts)
        if self.context is not None:
            lengths = hypothesis_lengths(
                self.tokenizer,
                self._template,
                (label for labels, _ in labelled for label in labels),
                self._most_characters,
            )
            check_pairs(
                self.tokenizer,
                [prompt.tokens for prompt in prompts],
                [labels for labels, _ in labelled],
                lengths,
                context=self.context,
                truncation=self._truncation,
            )
        return [(p, labels, multi) for p, (labels, multi) in zip(prompts, labelled, strict=True)]

    def predict(self, batch: Any) -> Sequence[Any]:
        return self.predict_with(batch, {})

    def predict_with(self, batch: Any, parameters: Mapping[str, Any]) -> Sequence[Any]:
        examples: list[tuple[Prompt, tuple[str, ...], bool]] = list(batch)
        groups: dict[tuple[tuple[str, ...], bool], list[int]] = {}
        for position, (_, labels, multi) in enumerate(examples):
            groups.setdefault((labels, multi), []).append(position)
        outputs: list[Any] = [None] * len(examples)
        for (labels, multi), positions in groups.items():
            texts = [examples[i][0].text for i in positions]
            answered = self.pipeline(
                texts,
                candidate_labels=list(labels),
                multi_label=multi,
                **{
                    "batch_size": pass_size(len(texts) * len(labels)),
                    **self.call_options,
                    **parameters,
                },
            )
            for position, answer in zip(positions, answered, strict=True):
                outputs[position] = answer
        return outputs


class AudioPredictor(Predictor):
    """A speech pipeline (audio classification, speech recognition) on a batch of clips.

    Clips of different lengths are padded into one batch only where the model is told which
    samples are padding (its feature extractor returns an attention mask); otherwise padding
    would change the answers, so only clips of equal length share a pass."""

    signature: InputSignature | None = CLIP
    inputs: Sequence[TensorInfo] = (TensorInfo(name="audio", dtype="float32", shape=(None, None)),)

    def __init__(
        self,
        pipeline: Any,
        *,
        call_options: Mapping[str, Any],
        request_parameters: frozenset[str],
        vocabulary: int,
        max_seconds: float,
    ) -> None:
        self.pipeline = pipeline
        self.call_options = dict(call_options)
        self.request_parameters = request_parameters
        self._rules = pipeline_rules(vocabulary)
        self._max_seconds = max_seconds
        extractor = pipeline.feature_extractor
        self.sampling_rate = int(extractor.sampling_rate)
        self._masks_padding = bool(getattr(extractor, "return_attention_mask", False))
        self.shortest = shortest_clip(lambda clip: pipeline(clip), self.sampling_rate)

    def check_parameters(self, parameters: Mapping[str, Any]) -> None:
        check_parameters(parameters, self._rules)

    def prepare(self, examples: list[Any]) -> list[Any]:
        clips = [clip_samples(e, i) for i, e in enumerate(examples)]
        longest = int(self._max_seconds * self.sampling_rate)
        for index, clip in enumerate(clips):
            if len(clip) > longest:
                # A pass's memory grows with the clip (a convolution's 512 channels per frame).
                raise ContextLengthError(
                    f"example {index} is {len(clip) / self.sampling_rate:.1f} s long; this model "
                    f"takes at most {self._max_seconds:g} s (options.max_seconds)"
                )
            if self.shortest is not None and len(clip) < self.shortest:
                raise InvalidInputError(
                    f"example {index} is {len(clip)} samples long; this model needs at least "
                    f"{self.shortest} ({self.shortest / self.sampling_rate * 1000:.1f} ms at "
                    f"{self.sampling_rate} Hz)"
                )
        return clips

    def predict(self, batch: Any) -> Sequence[Any]:
        return self.predict_with(batch, {})

    def predict_with(self, batch: Any, parameters: Mapping[str, Any]) -> Sequence[Any]:
        clips: list[Any] = list(batch)
        groups: dict[int, list[int]] = {}
        for position, clip in enumerate(clips):
            groups.setdefault(0 if self._masks_padding else len(clip), []).append(position)
        outputs: list[Any] = [None] * len(clips)
        for positions in groups.values():
            options = {"batch_size": pass_size(len(positions)), **self.call_options, **parameters}
            answered = self.pipeline([clips[i] for i in positions], **options)
            for position, answer in zip(positions, answered, strict=True):
                outputs[position] = answer
        return outputs
