"""Token-by-token generation of Transformers models, many sequences per forward pass.

A causal LM (GPT-2, Llama...) batches continuously: each ``advance`` runs one decoding pass
for every sequence held, then one padded prefill pass for the sequences joining, whose key and
value cache is merged into the batch's (left-padded to the batch's length, the padding masked
out); a sequence that ends or is let go leaves the cache at once. Models whose cache is not
the plain one (a sliding window) and encoder-decoder models batch statically: sequences join
an empty batch only (``joins_mid_flight``), and leave it as they end.

Each answer equals what the sequence alone would get: greedy decoding of a sequence in a batch
picks the tokens ``model.generate`` picks for it alone (tested); text is decoded incrementally
(a token that completes no character yet adds no text until one that does).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from loadonce.core.errors import ContextLengthError, InvalidInputError, TextInputError
from loadonce.core.generation import (
    FinishReason,
    GenerationEngine,
    GenerationRequest,
    Step,
    check_new_tokens,
    unasked_limit,
)
from loadonce.runtimes.transformers.plain_text import chat_ids, control_ids, text_ids
from loadonce.runtimes.transformers.sampling import RowSampler, check_sampling, sampling_of
from loadonce.runtimes.transformers.text_length import (
    TEXT_ROOM,
    longest_token_characters,
    most_characters,
    refuse_if_longer,
    whitespace,
)

__all__ = ["CausalEngine", "Seq2SeqEngine"]


@dataclass(eq=False)
class _Row:
    """One sequence in the batch."""

    sequence: int
    prompt: list[int]
    limit: int
    sampler: RowSampler
    generated: list[int] = field(default_factory=list)
    # Incremental decoding (as text-generation-inference does): the text of
    # generated[prefix:read] is what was emitted last; decoding from ``prefix`` again with
    # the new tokens shows what they add.
    prefix: int = 0
    read: int = 0


class _TokenEngine(GenerationEngine):
    """What both engines share: reading prompts, limits, choosing and decoding tokens."""

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        torch: Any,
        *,
        context: int | None,
        max_new_tokens: int,
        default_new_tokens: int,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self._torch = torch
        self._context = context
        self._cap = max_new_tokens
        self._default = default_new_tokens
        config = getattr(model, "generation_config", None)
        self._generation_config = config
        self._ends = _end_tokens(config, tokenizer)
        self._forced_first = getattr(config, "forced_bos_token_id", None)
        self._forced_last = getattr(config, "forced_eos_token_id", None)
        self._most_characters = most_characters(context, longest_token_characters(tokenizer))
        self._controls: frozenset[int] | None = None  # the tokenizer's special ids, once read
        self._rows: list[_Row] = []

    def check(self, request: GenerationRequest) -> None:
        check_new_tokens(request, self._cap)
        check_sampling(request)
        if request.messages is not None and getattr(self.tokenizer, "chat_template", None) is None:
            raise TextInputError(
                "this model has no chat template (its tokenizer_config.json has no "
                "chat_template): send a prompt instead of chat messages"
            )
        if request.messages is None and request.prompt is None:
            raise TextInputError("send a prompt or chat messages")
        if request.messages is not None:
            self._check_chat_size(request.messages)

    def _check_chat_size(self, messages: Sequence[Mapping[str, Any]]) -> None:
        """A chat that cannot fit the context, refused before its template runs on the
        model's thread (every stream of the model waits for it): each message is at least
        one token, and its contents, at most what ``refuse_if_longer`` lets a text have
        (1.8 million empty messages took 7 s, all to be refused at the end)."""
        context = self._context
        if context is not None and len(messages) > context:
            raise ContextLengthError(
                f"the chat holds {len(messages)} messages: more than this model reads (its "
                f"context of {context} tokens holds at most that many)"
            )
        most = self._most_characters
        if most is not None:
            contents = [str(_plain_message(message).get("content") or "") for message in messages]
            characters = sum(len(content) for content in contents)
            # The template is rendered and tokenized in one call (plain_text.py), so the
            # contents are what is bounded before it, whitespace aside as for a prompt.
            if characters > most * TEXT_ROOM or characters - whitespace(contents) > most:
                raise ContextLengthError(
                    f"the chat's messages hold {characters} characters: more than this model "
                    f"reads (its context of {context} tokens)"
                )

    def reset(self) -> None:
        self._rows = []

    def _prompt_ids(self, request: GenerationRequest) -> list[int]:
        if request.messages is not None:
            try:
                # Client text read as text: the template's control tokens only (plain_text.py).
                ids = chat_ids(self.tokenizer, [_plain_message(m) for m in request.messages])
            except InvalidInputError:
                raise
            except Exception as exc:  # the template's own raise_exception, a bad message
                if type(exc).__name__ == "TemplateSyntaxError":
                    # The template itself is broken (the operator's file): no message could
                    # pass, and it is no fault of the request's (a 500, logged).
                    raise
                raise TextInputError(
                    f"the model's chat template refused the messages: {exc}"[:400]
                ) from None
        else:
            prompt = request.prompt or ""
            refuse_if_longer(prompt, self._most_characters, self._context, "the prompt")
            if self._controls is None:
                self._controls = control_ids(self.tokenizer)
            ids = text_ids(self.tokenizer, prompt, self._controls, "the prompt")
        if not ids:
            # The model fails on a sequence of no token at all (a reshape of nothing).
            raise TextInputError("the prompt holds no token: send some text")
        return list(ids)

    def _limit(self, request: GenerationRequest, prompt: int, room: int | None) -> int:
        """The new tokens a sequence may generate, its prompt being ``prompt`` tokens and
        ``room`` tokens left in the model's context (None: no limit known)."""
        if room is not None and room < 1:
            raise ContextLengthError(
                f"the prompt is {prompt} tokens long; this model takes at most "
                f"{prompt + room - 1} (its context is {self._context} tokens)"
            )
        asked = request.max_new_tokens
        if asked is None:
            wanted = unasked_limit(request, self._default)
            return wanted if room is None else min(wanted, room)
        if room is not None and asked > room:
            raise ContextLengthError(
                f"a prompt of {prompt} tokens and {asked} new tokens exceed the model's "
                f"context of {self._context} tokens: ask for fewer (max_tokens)"
            )
        return asked

    def _new_row(self, sequence: int, request: GenerationRequest, prompt: list[int]) -> _Row:
        room = None if self._context is None else self._context - self._prompt_room(prompt)
        return _Row(
            sequence=sequence,
            prompt=prompt,
            limit=self._limit(request, len(prompt), room),
            sampler=RowSampler(
                sampling_of(request, self._generation_config), self._torch, self.model.device
            ),
        )

    def _admit(
        self, joining: Mapping[int, GenerationRequest], outcomes: dict[int, Step | Exception]
    ) -> list[_Row]:
        """The joining sequences' rows; a request the model cannot take (its prompt) gets its
        error among ``outcomes`` instead."""
        rows: list[_Row] = []
        for sequence, request in joining.items():
            try:
                rows.append(self._new_row(sequence, request, self._prompt_ids(request)))
            except InvalidInputError as exc:
                outcomes[sequence] = exc
        return rows

    def _prompt_room(self, prompt: list[int]) -> int:
        """Of the context, what the prompt takes (a decoder-only model's prompt shares it)."""
        return len(prompt)

    def _choose(self, rows: Sequence[_Row], scores: Any) -> dict[int, Step | Exception]:
        """Each row's next token from its row of ``scores``, as a Step; a row whose choice
        failed gets the exception, and leaves: its neighbours in the batch go on (one
        request's sampling failure ended every sequence of the step)."""
        steps: dict[int, Step | Exception] = {}
        for index, row in enumerate(rows):
            try:
                token = self._forced(row)
                if token is None:
                    token = row.sampler.choose(scores[index], row.prompt + row.generated)
                steps[row.sequence] = self._append(row, token)
            except Exception as exc:
                steps[row.sequence] = exc
        return steps

    def _forced(self, row: _Row) -> int | None:
        """The token the model's generation config forces here, as ``generate`` does: its
        ``forced_bos_token_id`` first, its ``forced_eos_token_id`` last (BART's config)."""
        if not row.generated and isinstance(self._forced_first, int):
            return self._forced_first
        if len(row.generated) == row.limit - 1 and isinstance(self._forced_last, int):
            return self._forced_last
        return None

    def _append(self, row: _Row, token: int) -> Step:
        first = not row.generated
        row.generated.append(token)
        finish: FinishReason | None = None
        if token in self._ends:
            finish = "stop"
        elif len(row.generated) >= row.limit:
            finish = "length"
        text = self._decoded(row, final=finish is not None)
        return Step(text=text, prompt_tokens=len(row.prompt) if first else None, finish=finish)

    def _decoded(self, row: _Row, *, final: bool) -> str:
        decode = self.tokenizer.decode
        before = decode(row.generated[row.prefix : row.read], skip_special_tokens=True)
        after = decode(row.generated[row.prefix :], skip_special_tokens=True)
        # A character split over tokens decodes as U+FFFD until its last token arrives.
        if len(after) <= len(before) or (after.endswith("\ufffd") and not final):
            return ""
        row.prefix, row.read = row.read, len(row.generated)
        return str(after[len(before) :])

    def _inference(self) -> Any:
        return self._torch.inference_mode()


class CausalEngine(_TokenEngine):
    """A decoder-only model: continuous batching over one key/value cache."""

    def __init__(self, model: Any, tokenizer: Any, torch: Any, **limits: Any) -> None:
        super().__init__(model, tokenizer, torch, **limits)
        from transformers import DynamicCache
        from transformers.cache_utils import DynamicLayer

        self._new_cache: Callable[[], Any] = lambda: DynamicCache(config=model.config)
        # Merging caches of different lengths pads plain layers; a sliding window's is not.
        self.joins_mid_flight = all(
            type(layer) is DynamicLayer for layer in self._new_cache().layers
        )
        self._cache: Any = None
        self._mask: Any = None  # (rows, cached positions): 0 where a row is padded
        pad = tokenizer.pad_token_id
        self._pad = pad if isinstance(pad, int) else 0
        self._bos = getattr(tokenizer, "bos_token_id", None)

    def reset(self) -> None:
        super().reset()
        self._cache = self._mask = None

    def _prompt_ids(self, request: GenerationRequest) -> list[int]:
        ids = super()._prompt_ids(request)
        if not ids:
            if not isinstance(self._bos, int):
                raise TextInputError("the prompt holds no token: send some text")
            ids = [self._bos]  # an empty prompt starts from the start of a text
        return ids

    def advance(
        self, joining: Mapping[int, GenerationRequest], leaving: Collection[int]
    ) -> dict[int, Step | Exception]:
        with self._inference():
            self._let_go(set(leaving))
            outcomes: dict[int, Step | Exception] = {}
            if self._rows:
                outcomes.update(self._decode())
            new_rows = self._admit(joining, outcomes)
            if new_rows:
                outcomes.update(self._prefill(new_rows))
            self._let_go(_ended(outcomes))
        return outcomes

    def _decode(self) -> dict[int, Step | Exception]:
        torch, rows = self._torch, self._rows
        device = self.model.device
        self._mask = torch.cat([self._mask, self._mask.new_ones((len(rows), 1))], dim=1)
        output = self.model(
            input_ids=torch.tensor([[row.generated[-1]] for row in rows], device=device),
            attention_mask=self._mask,
            position_ids=torch.tensor(
                [[len(row.prompt) + len(row.generated) - 1] for row in rows], device=device
            ),
            past_key_values=self._cache,
            use_cache=True,
        )
        return self._choose(rows, output.logits[:, -1, :])

    def _prefill(self, rows: list[_Row]) -> dict[int, Step | Exception]:
        """One pass over the joining prompts, left-padded to the longest."""
        torch, device = self._torch, self.model.device
        longest = max(len(row.prompt) for row in rows)
        ids = [[self._pad] * (longest - len(row.prompt)) + row.prompt for row in rows]
        mask = torch.tensor(
            [[0] * (longest - len(row.prompt)) + [1] * len(row.prompt) for row in rows],
            device=device,
        )
        cache = self._new_cache()
        output = self.model(
            input_ids=torch.tensor(ids, device=device),
            attention_mask=mask,
            position_ids=(mask.cumsum(-1) - 1).clamp(min=0),
            past_key_values=cache,
            use_cache=True,
        )
        steps = self._choose(rows, output.logits[:, -1, :])
        self._join(cache, mask, rows)
        return steps

    def _join(self, cache: Any, mask: Any, rows: list[_Row]) -> None:
        if self._cache is None:
            self._cache, self._mask, self._rows = cache, mask, rows
            return
        torch = self._torch
        length = max(self._mask.shape[1], mask.shape[1])
        for held, joined in zip(self._cache.layers, cache.layers, strict=True):
            held.keys = torch.cat([_left_pad(held.keys, length), _left_pad(joined.keys, length)])
            held.values = torch.cat(
                [_left_pad(held.values, length), _left_pad(joined.values, length)]
            )
        self._mask = torch.cat([_left_pad(self._mask, length), _left_pad(mask, length)])
        self._rows = self._rows + rows

    def _let_go(self, sequences: set[int]) -> None:
        if not sequences or not any(row.sequence in sequences for row in self._rows):
            return
        keep = [i for i, row in enumerate(self._rows) if row.sequence not in sequences]
        self._rows = [self._rows[i] for i in keep]
        if not keep:
            self._cache = self._mask = None
            return
        self._cache.batch_select_indices(self._torch.tensor(keep, device=self._mask.device))
        self._mask = self._mask[keep]
        # Positions every remaining row pads were only there for the rows that left.
        padded = int((self._mask.sum(0) == 0).long().cumprod(0).sum())
        if padded and self.joins_mid_flight:
            for layer in self._cache.layers:
                layer.keys = layer.keys[:, :, padded:]
                layer.values = layer.values[:, :, padded:]
            self._mask = self._mask[:, padded:]


class Seq2SeqEngine(_TokenEngine):
    """An encoder-decoder model: static batching (the decoders of one batch stay in step)."""

    joins_mid_flight = False

    def __init__(self, model: Any, tokenizer: Any, torch: Any, **limits: Any) -> None:
        super().__init__(model, tokenizer, torch, **limits)
        from transformers import DynamicCache, EncoderDecoderCache
        from transformers.modeling_outputs import BaseModelOutput

        self._new_cache: Callable[[], Any] = lambda: EncoderDecoderCache(
            DynamicCache(), DynamicCache()
        )
        self._encoded = BaseModelOutput
        config = model.generation_config
        start = getattr(config, "decoder_start_token_id", None)
        if start is None:
            start = model.config.decoder_start_token_id
        self._start = start
        self._cache: Any = None
        self._encoder_states: Any = None
        self._encoder_mask: Any = None

    def _prompt_room(self, prompt: list[int]) -> int:
        if self._context is not None and len(prompt) > self._context:
            raise ContextLengthError(
                f"the prompt is {len(prompt)} tokens long; this model takes at most {self._context}"
            )
        return 0  # the decoder has its own positions

    def reset(self) -> None:
        super().reset()
        self._cache = self._encoder_states = self._encoder_mask = None

    def advance(
        self, joining: Mapping[int, GenerationRequest], leaving: Collection[int]
    ) -> dict[int, Step | Exception]:
        with self._inference():
            self._let_go(set(leaving))
            outcomes: dict[int, Step | Exception] = {}
            if self._rows:
                outcomes.update(self._decode(self._rows))
            new_rows = self._admit(joining, outcomes)
            if new_rows:
                if self._rows:
                    raise RuntimeError("an encoder-decoder batch takes sequences only when empty")
                self._encode(new_rows)
                outcomes.update(self._decode(new_rows))
            self._let_go(_ended(outcomes))
        return outcomes

    def _encode(self, rows: list[_Row]) -> None:
        torch, device = self._torch, self.model.device
        longest = max(len(row.prompt) for row in rows)
        pad = self.tokenizer.pad_token_id or 0
        ids = torch.tensor([row.prompt + [pad] * (longest - len(row.prompt)) for row in rows])
        mask = torch.tensor([[1] * len(r.prompt) + [0] * (longest - len(r.prompt)) for r in rows])
        ids, mask = ids.to(device), mask.to(device)
        encoder = self.model.get_encoder()
        self._encoder_states = encoder(input_ids=ids, attention_mask=mask).last_hidden_state
        self._encoder_mask = mask
        self._cache = self._new_cache()
        self._rows = rows

    def _decode(self, rows: list[_Row]) -> dict[int, Step | Exception]:
        torch = self._torch
        last = [[row.generated[-1] if row.generated else self._start] for row in rows]
        output = self.model(
            encoder_outputs=self._encoded(last_hidden_state=self._encoder_states),
            attention_mask=self._encoder_mask,
            decoder_input_ids=torch.tensor(last, device=self.model.device),
            past_key_values=self._cache,
            use_cache=True,
        )
        return self._choose(rows, output.logits[:, -1, :])

    def _let_go(self, sequences: set[int]) -> None:
        if not sequences or not any(row.sequence in sequences for row in self._rows):
            return
        keep = [i for i, row in enumerate(self._rows) if row.sequence not in sequences]
        self._rows = [self._rows[i] for i in keep]
        if not keep:
            self.reset()
            return
        index = self._torch.tensor(keep, device=self._encoder_mask.device)
        self._cache.batch_select_indices(index)
        self._encoder_states = self._encoder_states[index]
        self._encoder_mask = self._encoder_mask[index]


def _ended(outcomes: Mapping[int, Step | Exception]) -> set[int]:
    return {s for s, o in outcomes.items() if not isinstance(o, Step) or o.finish is not None}


def _left_pad(tensor: Any, length: int) -> Any:
    """Zeros before the sequence dimension's start (the second-last for keys and values, the
    last for a mask) up to ``length``."""
    import torch.nn.functional as functional

    missing = length - (tensor.shape[-2] if tensor.dim() == 4 else tensor.shape[-1])
    if missing <= 0:
        return tensor
    return functional.pad(tensor, (0, 0, missing, 0) if tensor.dim() == 4 else (missing, 0))


def _end_tokens(generation_config: Any, tokenizer: Any) -> frozenset[int]:
    ends: set[int] = set()
    for value in (getattr(generation_config, "eos_token_id", None), tokenizer.eos_token_id):
        if isinstance(value, int):
            ends.add(value)
        elif isinstance(value, list | tuple):
            ends.update(v for v in value if isinstance(v, int))
    return frozenset(ends)


def _plain_message(message: Mapping[str, Any]) -> dict[str, Any]:
    """A chat message as templates expect it: ``content`` a string (text parts joined)."""
    content = message.get("content")
    if isinstance(content, list):
        content = "".join(
            str(part.get("text", "")) for part in content if isinstance(part, Mapping)
        )
    return {**message, "content": content}
