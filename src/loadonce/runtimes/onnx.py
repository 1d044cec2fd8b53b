"""ONNX Runtime: one InferenceSession per instance; names, dtypes and shapes read from it."""

from __future__ import annotations

import itertools
import logging
from collections.abc import Sequence
from typing import Any

from loadonce.core.imports import import_optional
from loadonce.core.spec import ModelSpec
from loadonce.runtimes._base import Predictor, Runtime, TensorInfo, model_file, thread_count
from loadonce.runtimes._tensors import example_signature, split_batch_outputs, stack_named_inputs

logger = logging.getLogger("loadonce")

# ONNX Runtime's type strings, as NumPy dtypes (or "string").
_ONNX_TYPES = {
    "tensor(float)": "float32",
    "tensor(double)": "float64",
    "tensor(float16)": "float16",
    "tensor(int8)": "int8",
    "tensor(int16)": "int16",
    "tensor(int32)": "int32",
    "tensor(int64)": "int64",
    "tensor(uint8)": "uint8",
    "tensor(uint16)": "uint16",
    "tensor(uint32)": "uint32",
    "tensor(uint64)": "uint64",
    "tensor(bool)": "bool",
    "tensor(string)": "string",
}


def _tensor_info(node: Any, *, is_input: bool = False) -> TensorInfo:
    # A symbolic dimension ("batch") or an unknown one (None) is variable.
    shape = (
        None if node.shape is None else tuple(d if isinstance(d, int) else None for d in node.shape)
    )
    kind = str(node.type)
    optional = kind.startswith("optional(tensor(") and kind.endswith(")")
    if optional:
        # An optional tensor that the graph produced is that tensor: ONNX Runtime answers
        # it as one (None only where the graph gave no value, said per call). An optional
        # input is that tensor too, which a request may leave out: the graph runs without
        # it (it was required: a request that left it out was refused as missing it).
        kind = kind[len("optional(") : -1]
    dtype = _ONNX_TYPES.get(kind)
    if dtype is None and kind.startswith("seq(map("):
        # A sequence of maps (skl2onnx's ZipMap: a {label: probability} per example): each
        # example's value travels as a JSON document (BYTES under /v2). ONNX Runtime gives
        # a sequence no shape ([]): it holds one item per example. A sequence of tensors
        # has no such rule (its length is the graph's own, not the batch's): it stays
        # without a dtype, and is refused at load.
        dtype, shape = "object", None
    return TensorInfo(name=node.name, dtype=dtype, shape=shape, optional=optional and is_input)


class OnnxPredictor(Predictor):
    def __init__(self, session: Any, *, output_names: Sequence[str] | None) -> None:
        self.session = session
        input_nodes = session.get_inputs()
        inputs = [_tensor_info(node, is_input=True) for node in input_nodes]
        unfed = ", ".join(
            f"{t.name} ({node.type})"
            for node, t in zip(input_nodes, inputs, strict=True)
            if t.dtype in (None, "object")
        )
        if unfed:
            raise ValueError(
                f"inputs of a type loadonce cannot feed: {unfed} (it feeds tensors of numbers, "
                "booleans and strings)"
            )
        # Inputs the graph declares without any dimension (a scalar: a threshold, a
        # temperature) have no batch dimension to stack examples along: each example holds
        # its own value, and the graph runs one example per call. Fed a stack of them, ONNX
        # Runtime ran the graph on it anyway, and each example got every example's answer.
        self.scalar_inputs = frozenset(t.name for t in inputs if t.shape == ())
        # Described and read as any input: one value per example, the batch first.
        self.inputs = [
            TensorInfo(name=t.name, dtype=t.dtype, shape=(None,), optional=t.optional)
            if t.name in self.scalar_inputs
            else t
            for t in inputs
        ]
        output_nodes = session.get_outputs()
        all_outputs = [_tensor_info(node) for node in output_nodes]
        if output_names:
            known = {t.name for t in all_outputs}
            unknown = [n for n in output_names if n not in known]
            if unknown:
                raise ValueError(
                    f"options.outputs names {', '.join(unknown)}, but the model's outputs are "
                    f"{', '.join(sorted(known))}"
                )
            self.outputs = [t for t in all_outputs if t.name in output_names]
        else:
            self.outputs = all_outputs
        # An output with no per-example form (a sequence of tensors, a map, a type NumPy
        # lacks) was left out of /v2 metadata yet answered by /v2 infer, or failed every
        # request with a 500: the load says so, and how to leave it out.
        chosen = {t.name for t in self.outputs}
        unanswered = ", ".join(
            f"{t.name} ({node.type})"
            for node, t in zip(output_nodes, all_outputs, strict=True)
            if t.name in chosen and t.dtype is None
        )
        if unanswered:
            servable = [t.name for t in all_outputs if t.dtype is not None]
            raise ValueError(
                f"outputs loadonce cannot answer one per example: {unanswered}; leave them out "
                f"with options.outputs = {servable!r}"
            )
        self.fixed_batch = _fixed_batch([t for t in inputs if t.name not in self.scalar_inputs])
        # Outputs the graph declares without a batch dimension (a scalar, or a first
        # dimension of a fixed size that is not the inputs' batch: a constant such as a class
        # list): every example gets the whole value, described as one example's value. A
        # graph whose inputs are all scalars has no batch dimension anywhere: each call's
        # outputs are its one example's, whole.
        batchless = len(self.scalar_inputs) == len(inputs)
        self.whole = frozenset(t.name for t in self.outputs if batchless or not self._batched(t))
        self.outputs = [
            TensorInfo(name=t.name, dtype=t.dtype, shape=(None, *(t.shape or ())))
            if t.name in self.whole
            else t
            for t in self.outputs
        ]
        # One input: an example is that input's value. Several: an object keyed by name.
        self.signature = example_signature(self.inputs[0]) if len(self.inputs) == 1 else None
        # Batched only where every input's first dimension is variable (a batch dimension);
        # a graph is assumed to compute its rows independently, as exported inference graphs
        # do (its matrix kernels may round the last bits differently with the batch's size).
        # An output without a batch dimension may be computed across the rows (a sum over
        # the batch): one request's answer would then depend on the others batched with it.
        # A graph of scalar inputs runs each example alone: batched, each gets its own answer.
        self.batches_exactly = bool(self.scalar_inputs) or (
            not self.whole
            and all(
                t.shape is not None and len(t.shape) > 0 and t.shape[0] is None for t in self.inputs
            )
        )

    def _batched(self, tensor: TensorInfo) -> bool:
        """Whether an output's first dimension is the batch: what the graph declares, unless
        it is only an exporter's trace (a first dimension of 1: a graph traced on one
        example often says so of outputs it computes per row)."""
        shape = tensor.shape
        if shape is None:
            return True  # nothing declared: batch-first, as most graphs are
        return len(shape) > 0 and shape[0] in (None, 1, self.fixed_batch)

    def prepare(self, examples: list[Any]) -> Any:
        if self.signature is not None:
            return {self.inputs[0].name: super().prepare(examples)}
        return stack_named_inputs(examples, self.inputs)

    def combine(self, batches: list[Any]) -> Any:
        # Requests that left out different optional inputs are not one batch: each is run
        # on its own (the default merge took the first request's inputs for all of them).
        if len({frozenset(batch) for batch in batches}) > 1:
            raise ValueError("the requests give different optional inputs")
        return super().combine(batches)

    def predict(self, batch: Any) -> Sequence[Any]:
        names = [t.name for t in self.outputs]
        count = len(next(iter(batch.values())))
        size = 1 if self.scalar_inputs else self.fixed_batch
        if size is None:
            results = self.session.run(names, batch)
            whole = self.whole
        else:
            # Per call: an output without a batch dimension belongs to that call's examples.
            results = self._run_in_fixed_batches(names, batch, count, size)
            whole = frozenset()
        named = list(zip(names, results, strict=True))
        return split_batch_outputs(named, count, whole=whole)

    def _run_in_fixed_batches(
        self, names: list[str], batch: dict[str, Any], count: int, size: int
    ) -> list[Any]:
        """A graph exported for exactly ``size`` examples (``torch.onnx.export`` without
        ``dynamic_axes`` makes one) refuses any other count: run it ``size`` at a time, the
        last call filled up with copies of its last example (a valid input, where zeros may
        not be), whose outputs are dropped. A graph of scalar inputs runs one example at a
        time (``size`` 1), each scalar input given as its example's value alone."""
        import numpy as np

        parts: list[list[Any]] = [[] for _ in names]
        for start in range(0, count, size):
            scalars = self.scalar_inputs
            chunk = {
                name: values[start, ...] if name in scalars else values[start : start + size]
                for name, values in batch.items()
            }
            taken = min(size, count - start)
            if taken < size:
                chunk = {
                    name: np.concatenate([values, np.repeat(values[-1:], size - taken, axis=0)])
                    for name, values in chunk.items()
                }
            results = self.session.run(names, chunk)
            for name, part, result in zip(names, parts, results, strict=True):
                # The call's one value (undeclared, a scalar too), for each of its examples.
                if name in self.whole or np.ndim(result) == 0:
                    part.append([result] * taken)
                else:
                    part.append(result[:taken])
        return [
            np.concatenate(part)
            if all(isinstance(p, np.ndarray) for p in part)
            else list(itertools.chain.from_iterable(part))  # ZipMap's lists of dicts
            for part in parts
        ]


def _fixed_batch(inputs: Sequence[TensorInfo]) -> int | None:
    """The one fixed size every input's first (batch) dimension has, if so."""
    sizes = {t.shape[0] if t.shape else None for t in inputs}
    if len(sizes) != 1:
        return None
    [size] = sizes
    return size if size is not None and size > 0 else None


class OnnxRuntime(Runtime):
    name = "onnx"
    reads_input_shape = False
    options = frozenset({"intra_op_threads", "inter_op_threads", "providers", "outputs"})
    libraries = ("onnxruntime",)
    suffixes = (".onnx",)
    # InferenceSession.run is thread-safe, and ONNX Runtime parallelises inside a call too.
    default_concurrency = "shared"

    def load(self, spec: ModelSpec) -> Predictor:
        if spec.artifact is None:
            raise ValueError("the onnx runtime needs an artifact (.onnx file)")
        model_file(spec.artifact)
        ort = import_optional("onnxruntime", extra="onnx")
        options = ort.SessionOptions()
        # 0: ONNX Runtime's own number of threads.
        intra = thread_count(spec, "intra_op_threads", least=0)
        if intra is not None:
            options.intra_op_num_threads = intra
        inter = thread_count(spec, "inter_op_threads", least=0)
        if inter is not None:
            options.inter_op_num_threads = inter
        providers = list(spec.options.get("providers", ["CPUExecutionProvider"]))
        _refuse_missing(providers, list(ort.get_available_providers()), ort.__version__)
        session = ort.InferenceSession(str(spec.artifact), options, providers=providers)
        # ONNX Runtime falls back to the CPU, with only a Python warning, when a provider's
        # libraries (CUDA, TensorRT...) cannot be loaded: a model asked to run on a device
        # must not silently run elsewhere.
        _refuse_missing(providers, list(session.get_providers()), ort.__version__)
        outputs = spec.options.get("outputs")
        predictor = OnnxPredictor(session, output_names=None if outputs is None else list(outputs))
        if predictor.fixed_batch is not None:
            logger.info(
                "model '%s': exported with a fixed batch of %s (not a dynamic dimension): its "
                "calls run %s examples at a time; export with dynamic_axes={'<input>': {0: "
                "'batch'}} to take any batch",
                spec.name,
                predictor.fixed_batch,
                predictor.fixed_batch,
            )
        return predictor


def _refuse_missing(asked: list[str], offered: list[str], version: str) -> None:
    missing = [provider for provider in asked if provider not in offered]
    if missing:
        raise ValueError(
            f"execution provider {', '.join(repr(p) for p in missing)} was asked for, but this "
            f"onnxruntime ({version}) can use only {', '.join(offered)} here: no such device, "
            "or its libraries are not installed; remove it from options.providers"
        )
