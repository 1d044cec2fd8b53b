"""One inference request, end to end: decode, predict through the model's queue, encode."""

from __future__ import annotations

import gzip
import json
import math
import zlib
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import anyio.to_thread
import numpy.typing as npt
from pydantic import ValidationError

from loadonce.core.errors import InvalidRequestError
from loadonce.core.model import Answer, Model
from loadonce.http.json_pieces import ON_THE_LOOP_ELEMENTS, json_in_pieces
from loadonce.http.large_bodies import off_the_loop
from loadonce.protocols.v2.body import HEADER_LENGTH, SplitBody
from loadonce.protocols.v2.classification import check_declared, class_counts, classified
from loadonce.protocols.v2.datatypes import BYTES
from loadonce.protocols.v2.errors import RequestOptionError
from loadonce.protocols.v2.examples import check_before_decoding, examples_from_tensors
from loadonce.protocols.v2.outputs import OutputTensor, output_tensors
from loadonce.protocols.v2.schemas import InferenceRequest, RequestOutput
from loadonce.protocols.v2.shared_memory import refuse_shared_memory
from loadonce.protocols.v2.tensors import BINARY_SIZE, declared_elements, decode_inputs
from loadonce.runtimes import SELECTED_OUTPUTS
from loadonce.tracing import phase

_R = TypeVar("_R")

BINARY_OUTPUT = "binary_data_output"
# Request parameters the protocol (and tritonclient) define; the others are the model's.
_RESERVED = {"sequence_id", "sequence_start", "sequence_end", "priority", "timeout", "headers"}
_RESERVED_PREFIX = "triton_"
# Compressing a small answer costs more than it saves.
_COMPRESS_FROM_BYTES = 1024


@dataclass(frozen=True)
class EncodedResponse:
    body: bytes
    headers: dict[str, str]


def parse_request(raw_json: bytes) -> InferenceRequest:
    try:
        return InferenceRequest.model_validate_json(raw_json)
    except ValidationError as exc:
        raise InvalidRequestError.from_validation(exc) from None


@dataclass(frozen=True)
class _Options:
    binary_by_default: bool
    timeout_s: float | None
    model_parameters: dict[str, Any]


def _options(parameters: Mapping[str, Any] | None) -> _Options:
    parameters = parameters or {}
    binary = parameters.get(BINARY_OUTPUT, False)
    if not isinstance(binary, bool):
        raise RequestOptionError(f"parameters.{BINARY_OUTPUT} must be true or false")
    sequence = parameters.get("sequence_id", 0)
    if (
        sequence not in (0, "")
        or parameters.get("sequence_start")
        or parameters.get("sequence_end")
    ):
        raise RequestOptionError(
            "sequence batching (parameters.sequence_id) is not supported: each request is "
            "answered on its own"
        )
    timeout_us = parameters.get("timeout", 0)
    if (
        isinstance(timeout_us, bool)
        or not isinstance(timeout_us, int | float)
        or not 0 <= timeout_us < math.inf
    ):
        raise RequestOptionError(
            "parameters.timeout must be a finite number of microseconds (0: the model's own "
            "timeout)"
        )
    return _Options(
        binary_by_default=binary,
        # Triton's unit: microseconds; 0 means none given.
        # Past a year it is no limit at all (an integer of 400 digits overflowed the float).
        # A positive number too small for seconds (5e-324 us) is the least one, not 0.
        timeout_s=(timeout_us / 1_000_000 or math.ulp(0.0))
        if 0 < timeout_us < _NO_LIMIT_US
        else None,
        model_parameters={
            key: value for key, value in parameters.items() if not _is_protocol_parameter(key)
        },
    )


_NO_LIMIT_US = 365 * 24 * 3600 * 1_000_000
_NOT_THE_MODELS = frozenset({BINARY_OUTPUT, SELECTED_OUTPUTS, *_RESERVED})


def _is_protocol_parameter(key: str) -> bool:
    # SELECTED_OUTPUTS is loadonce's own name for the outputs a request asked for (its
    # ``outputs`` member), never a client's: as a parameter it reached a classifier's
    # predictor as a list of names (5: a 500; "label": the outputs 'l', 'a'...).
    return key in _NOT_THE_MODELS or key.startswith(_RESERVED_PREFIX)


@dataclass(frozen=True)
class Prediction:
    """A request's output tensors, in the order to answer them; ``binary``: by name, whether
    the client asked for the output in binary (REST's binary tensor extension)."""

    tensors: list[OutputTensor]
    binary: dict[str, bool]
    # The model version that computed them (a reload may have followed).
    version: str

    def values(self) -> int:
        """How many values the answer holds (what writing it costs)."""
        return sum(int(tensor.array.size) for tensor in self.tensors)


async def predict(
    model: Model,
    arrays: Mapping[str, npt.NDArray[Any]],
    datatypes: Mapping[str, str],
    request_parameters: Mapping[str, Any] | None,
    requested: Sequence[RequestOutput] | None,
    respond: Callable[[Prediction], Awaitable[_R]],
    *,
    timeout_s: float | None,
    arrived: float | None = None,
) -> _R:
    """The protocol's inference, whatever carried it (REST or gRPC): decoded input arrays to
    output tensors, through the model's queue, and ``respond``'s answer built from them (the
    transport's; a request counts as a success once that is built). ``timeout_s``: the
    transport's deadline; the request's ``timeout`` parameter (microseconds, Triton's) may
    shorten it."""
    options = _options(request_parameters)
    examples = examples_from_tensors(model, arrays, datatypes)
    if requested:
        _check_requested(requested, [t.name for t in model.outputs])
    limits = [t for t in (timeout_s, options.timeout_s) if t is not None]
    parameters = options.model_parameters
    if requested:
        # A model whose outputs are computed on request (a classifier's methods) computes
        # only these; any other model computes all, and the answer keeps these.
        parameters = {**parameters, SELECTED_OUTPUTS: tuple(r.name for r in requested)}

    # Checked before the model computes anything: a client's mistake is no call of the model.
    wanted = {r.name: _wants_binary(r, options.binary_by_default) for r in requested or ()}
    classes = class_counts(requested or ())
    check_declared(classes, model.outputs)

    async def encode(answer: Answer) -> _R:
        tensors = output_tensors(model.outputs, answer.outputs)
        if requested:
            tensors = _select(tensors, requested)
            if classes:
                tensors = [_classes(t, classes) for t in tensors]
            binary = wanted
        else:
            binary = {t.name: options.binary_by_default for t in tensors}
        return await respond(Prediction(tensors, binary, answer.version))

    return await model.answer_encoded(
        examples,
        encode,
        timeout=min(limits) if limits else None,
        parameters=parameters,
        arrived=arrived,
    )


async def infer(
    model: Model,
    request: InferenceRequest,
    body: SplitBody,
    *,
    timeout_s: float | None,
    accept_encoding: str,
    max_element_bytes: int | None = None,
    arrived: float | None = None,
) -> EncodedResponse:
    with phase("decode tensors"):
        check_before_decoding(model, request.inputs)

        def decode() -> dict[str, npt.NDArray[Any]]:
            return decode_inputs(request.inputs, body, max_element_bytes=max_element_bytes)

        # Many elements (13 million BYTES elements held the loop 17 s): off the loop.
        if declared_elements(request.inputs) <= ON_THE_LOOP_ELEMENTS:
            arrays = decode()
        else:
            arrays = await off_the_loop(decode)
    datatypes = {tensor.name: tensor.datatype for tensor in request.inputs}

    async def respond(prediction: Prediction) -> EncodedResponse:
        header: dict[str, Any] = {"model_name": model.name, "model_version": prediction.version}
        if request.id is not None:
            header["id"] = request.id
        with phase("encode"):
            if prediction.values() <= ON_THE_LOOP_ELEMENTS:
                header["outputs"], buffers = _encode(prediction.tensors, prediction.binary)
                return _respond(header, buffers, accept_encoding)
            return await anyio.to_thread.run_sync(
                _respond_large, header, prediction, accept_encoding
            )

    return await predict(
        model,
        arrays,
        datatypes,
        request.parameters,
        request.outputs,
        respond,
        timeout_s=timeout_s,
        arrived=arrived,
    )


def _check_requested(requested: Sequence[RequestOutput], declared: list[str]) -> None:
    names = [r.name for r in requested]
    if len(set(names)) != len(names):
        raise RequestOptionError("an output is requested twice")
    for output in requested:
        parameters = output.parameters or {}
        refuse_shared_memory("output", output.name, parameters)
        if declared and output.name not in declared:
            raise RequestOptionError(
                f"unknown output '{output.name}'; the model's outputs are {', '.join(declared)}"
            )


def _select(tensors: list[OutputTensor], requested: Sequence[RequestOutput]) -> list[OutputTensor]:
    by_name = {t.name: t for t in tensors}
    unknown = [r.name for r in requested if r.name not in by_name]
    if unknown:
        raise RequestOptionError(
            f"unknown output '{unknown[0]}'; the model's outputs are {', '.join(by_name)}"
        )
    return [by_name[r.name] for r in requested]


def _classes(tensor: OutputTensor, counts: Mapping[str, int]) -> OutputTensor:
    count = counts.get(tensor.name)
    return tensor if count is None else classified(tensor, count)


def _wants_binary(output: RequestOutput, default: bool) -> bool:
    value = (output.parameters or {}).get("binary_data", default)
    if not isinstance(value, bool):
        raise RequestOptionError(
            f"output '{output.name}': parameters.binary_data must be true or false"
        )
    return value


def _encode(
    tensors: list[OutputTensor], binary: Mapping[str, bool], *, flat_arrays: bool = False
) -> tuple[list[dict[str, Any]], list[bytes]]:
    """Each tensor's entry and its binary data, if asked for in binary. ``flat_arrays``: the
    JSON data of numbers as the flat array (written in pieces, ``_respond_large``)."""
    described: list[dict[str, Any]] = []
    buffers: list[bytes] = []
    for tensor in tensors:
        entry: dict[str, Any] = {
            "name": tensor.name,
            "datatype": tensor.datatype,
            "shape": tensor.shape,
        }
        if binary[tensor.name]:
            data = tensor.binary_data()
            entry["parameters"] = {BINARY_SIZE: len(data)}
            buffers.append(data)
        elif flat_arrays and tensor.datatype != BYTES:
            entry["data"] = tensor.array.reshape(-1)
        else:
            entry["data"] = tensor.json_data()
        described.append(entry)
    return described, buffers


# Made once: json.dumps with an option builds a new encoder per call (http/json_answer.py).
_HEADER_ENCODER = json.JSONEncoder(separators=(",", ":"))


def _respond(header: dict[str, Any], buffers: list[bytes], accept_encoding: str) -> EncodedResponse:
    # NaN and infinities are written as JSON's common extension (NaN, Infinity), which
    # tritonclient reads; binary outputs carry them exactly.
    return _respond_with(_HEADER_ENCODER.encode(header).encode("utf-8"), buffers, accept_encoding)


def _respond_large(
    header: dict[str, Any], prediction: Prediction, accept_encoding: str
) -> EncodedResponse:
    """``_respond`` for an answer of many values, in a thread: its JSON written in pieces
    (``http/json_pieces.py``), compressed there too. On the loop, a tensor of millions of
    numbers held every other request of the worker for seconds."""
    header["outputs"], buffers = _encode(prediction.tensors, prediction.binary, flat_arrays=True)
    text = json_in_pieces(header, _PIECES_ENCODER.encode)
    return _respond_with(text.encode("utf-8"), buffers, accept_encoding)


# The header's encoder, writing a flat array wherever a piece holds one (an output small
# enough to be written whole beside a large one) as its list.
_PIECES_ENCODER = json.JSONEncoder(separators=(",", ":"), default=lambda array: array.tolist())


def _respond_with(text: bytes, buffers: list[bytes], accept_encoding: str) -> EncodedResponse:
    headers: dict[str, str] = {}
    if buffers:
        body = b"".join([text, *buffers])
        headers[HEADER_LENGTH] = str(len(text))
        headers["Content-Type"] = "application/octet-stream"
    else:
        body = text
        headers["Content-Type"] = "application/json"
    if len(body) >= _COMPRESS_FROM_BYTES:
        encoding = _chosen_encoding(accept_encoding)
        if encoding == "gzip":
            body = gzip.compress(body, compresslevel=6)
        elif encoding == "deflate":
            body = zlib.compress(body)
        if encoding is not None:
            headers["Content-Encoding"] = encoding
            headers["Vary"] = "Accept-Encoding"
    return EncodedResponse(body=body, headers=headers)


def _chosen_encoding(accept_encoding: str) -> str | None:
    """gzip, else deflate, where Accept-Encoding lists it without ``q=0``."""
    offered: set[str] = set()
    for part in accept_encoding.split(","):
        coding, _, rest = part.partition(";")
        quality = rest.strip().lower().removeprefix("q=")
        if quality and quality.strip("0.") == "" and rest.strip().lower().startswith("q="):
            continue  # q=0: explicitly refused
        offered.add(coding.strip().lower())
    for coding in ("gzip", "deflate"):
        if coding in offered:
            return coding
    return None
