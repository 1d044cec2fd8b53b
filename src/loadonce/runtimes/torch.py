"""PyTorch: torch.export programs (.pt2), TorchScript files, or a safetensors state dict plus a
factory that builds the module."""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from loadonce.core.errors import InvalidInputError
from loadonce.core.imports import import_object, import_optional
from loadonce.core.inputs import as_typed_batch
from loadonce.core.spec import ModelSpec
from loadonce.runtimes._base import InputSignature, Predictor, Runtime
from loadonce.runtimes._tensors import batch_rows, split_batch_outputs

EXPORTED_SUFFIXES = (".pt2",)
TORCHSCRIPT_SUFFIXES = (".pt", ".pth", ".torchscript", ".ts")
SAFETENSORS_SUFFIXES = (".safetensors",)


class TorchPredictor(Predictor):
    """Runs ``module(batch)`` under ``torch.inference_mode`` on the configured device."""

    def __init__(
        self,
        module: Any,
        *,
        device: Any,
        input_dtype: str,
        input_shape: tuple[int | None, ...] | None,
    ) -> None:
        self.module = module
        self.device = device
        self.input_dtype = input_dtype
        # Only a recorded (.pt2) or declared (input_shape) shape is checked up front, with a
        # 400 that names it; TorchScript and nn.Module do not record theirs.
        self.signature = (
            None if input_shape is None else InputSignature(shape=input_shape, dtype=input_dtype)
        )

    def prepare(self, examples: list[Any]) -> Any:
        torch = import_optional("torch", extra="torch")
        shape = self.signature.shape if self.signature else _shape_of(examples)
        array = as_typed_batch(examples, InputSignature(shape=shape, dtype=self.input_dtype))
        return torch.from_numpy(np.ascontiguousarray(array))

    def combine(self, batches: list[Any]) -> Any:
        torch = import_optional("torch", extra="torch")
        return torch.cat(batches)

    def predict(self, batch: Any) -> Sequence[Any]:
        torch = import_optional("torch", extra="torch")
        with torch.inference_mode():
            result = self.module(batch.to(self.device))
        return _split(result, len(batch))


def _shape_of(examples: list[Any]) -> tuple[int | None, ...]:
    """Without a declared input_shape, any shape is accepted as long as the examples agree."""
    try:
        return tuple(None for _ in np.shape(examples[0]))
    except ValueError:
        raise InvalidInputError("each example must be a rectangular array of numbers") from None


def _split(result: Any, count: int) -> list[Any]:
    """A tensor gives one row per example; a dict of tensors an object per example; a tuple or
    list of tensors a list per example (the structure the module returned, row by row)."""
    torch = import_optional("torch", extra="torch")
    if isinstance(result, torch.Tensor):
        return split_batch_outputs([("output", result.cpu().numpy())], count)
    if isinstance(result, Mapping):
        named = [(str(key), value.cpu().numpy()) for key, value in result.items()]
        return [dict(zip(result, row, strict=True)) for row in batch_rows(named, count)]
    if isinstance(result, tuple | list):
        named = [(str(i), value.cpu().numpy()) for i, value in enumerate(result)]
        return [list(row) for row in batch_rows(named, count)]
    raise TypeError(f"the module returned {type(result).__name__}; expected tensors")


def torch_device(torch: Any, name: str) -> Any:
    """The device ``name`` names, or an error saying it is not there (also the transformers
    runtime's check)."""
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(
            f"device '{name}' was asked for, but CUDA is not available to this torch "
            f'({torch.__version__}): no GPU is visible or the build is CPU-only; use device = "cpu"'
        )
    device = torch.device(name)
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise ValueError(
            f"device '{name}' was asked for, but this machine shows "
            f"{torch.cuda.device_count()} CUDA device(s)"
        )
    return device


class TorchRuntime(Runtime):
    name = "torch"
    options = frozenset({"threads", "device", "input_dtype", "factory"})
    libraries = ("torch", "safetensors.torch")
    suffixes = EXPORTED_SUFFIXES + TORCHSCRIPT_SUFFIXES + SAFETENSORS_SUFFIXES
    # An eval-mode module under inference_mode only reads its weights, so concurrent forward
    # calls on one instance are safe; PyTorch parallelises inside each call as well.
    default_concurrency = "shared"

    def load(self, spec: ModelSpec) -> Predictor:
        if spec.artifact is None:
            raise ValueError(
                "the torch runtime needs an artifact (.pt2, TorchScript, .safetensors)"
            )
        if not spec.artifact.is_file():
            raise FileNotFoundError(f"no such file: {spec.artifact}")
        torch = import_optional("torch", extra="torch")
        if "threads" in spec.options:
            # Process-wide in PyTorch: the last model loaded with this option sets it.
            torch.set_num_threads(int(spec.options["threads"]))
        device = torch_device(torch, str(spec.options.get("device", "cpu")))
        suffix = spec.artifact.suffix.lower()
        shared = False  # only a safetensors state dict is mapped
        input_shape, input_dtype = spec.input_shape, spec.options.get("input_dtype")
        if suffix in EXPORTED_SUFFIXES:
            with _quiet("torch.export"):
                program = torch.export.load(str(spec.artifact))
            # An exported program records its input's shape and dtype: use them to check inputs.
            recorded_shape, recorded_dtype = _exported_input(program)
            input_shape = input_shape or recorded_shape
            input_dtype = input_dtype or recorded_dtype
            # Exported programs fix train/eval mode at export time; .eval() is not supported.
            module = program.module().to(device)
        elif suffix in SAFETENSORS_SUFFIXES:
            module, shared = _load_state_dict_module(torch, spec, device)
            module.eval()
        else:
            module = _load_torchscript(torch, spec, device).eval()
        predictor = TorchPredictor(
            module,
            device=device,
            input_dtype=str(input_dtype or "float32"),
            input_shape=input_shape,
        )
        predictor.shares_weights = shared
        return predictor


def _exported_input(program: Any) -> tuple[tuple[int | None, ...] | None, str | None]:
    """Shape of one example and dtype of a single-tensor exported program, from its graph."""
    names = list(program.graph_signature.user_inputs)
    if len(names) != 1:
        return None, None
    for node in program.graph.nodes:
        if node.op == "placeholder" and node.name == names[0]:
            value = node.meta.get("val")
            if value is None or not hasattr(value, "shape"):
                return None, None
            shape = tuple(d if isinstance(d, int) else None for d in value.shape)
            return shape[1:], str(value.dtype).removeprefix("torch.")
    return None, None


def _load_torchscript(torch: Any, spec: ModelSpec, device: Any) -> Any:
    # PyTorch deprecates TorchScript in favour of torch.export, but users still have these
    # files: load them, without turning PyTorch's deprecation notice into a warning per load.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", r".*torch\.jit\.load.*", DeprecationWarning)
        try:
            return torch.jit.load(str(spec.artifact), map_location=device)
        except RuntimeError as exc:
            raise ValueError(
                "not a TorchScript file (save one with torch.jit.save, or better a torch.export "
                "program with torch.export.save as .pt2); for a state dict, save it as "
                ".safetensors and name options.factory: " + " ".join(str(exc).split())[:200]
            ) from None


def _load_state_dict_module(torch: Any, spec: ModelSpec, device: Any) -> tuple[Any, bool]:
    """The factory's module with the file's weights, and whether they stay mapped (shared)."""
    factory_name = spec.options.get("factory")
    if not isinstance(factory_name, str):
        raise ValueError(
            "a .safetensors state dict needs options.factory = 'package.module:function' "
            "returning the torch.nn.Module to load it into"
        )
    safetensors_torch = import_optional("safetensors.torch", extra="torch")
    factory = import_object(factory_name)
    # safetensors maps the file; on the CPU, assigning its tensors to the module (instead of
    # copying into the module's own) keeps them mapped: every worker shares the page cache.
    share = spec.share == "mmap" and str(device) == "cpu"
    module = _build_module(torch, factory, factory_name, on_meta=share)
    state = safetensors_torch.load_file(str(spec.artifact), device=str(device))
    missing, unexpected = module.load_state_dict(state, strict=False, assign=share)
    if missing or unexpected:
        raise ValueError(
            "the state dict does not fit the module built by "
            f"{factory_name}: missing {sorted(missing) or 'none'}, "
            f"unexpected {sorted(unexpected) or 'none'}"
        )
    if share and _has_meta_tensors(module):
        # A tensor the file does not hold (a non-persistent buffer) stayed on the meta
        # device: build the module for real and let only the weights stay mapped.
        module = _build_module(torch, factory, factory_name, on_meta=False)
        module.load_state_dict(state, strict=False, assign=True)
    return module.to(device), share


def _build_module(torch: Any, factory: Any, name: str, *, on_meta: bool) -> Any:
    """The factory's module; on the meta device its parameters take no memory until the
    mapped weights are assigned to them."""
    if on_meta:
        with torch.device("meta"):
            module = factory()
    else:
        module = factory()
    if not isinstance(module, torch.nn.Module):
        raise TypeError(f"{name} returned {type(module).__name__}, not a torch.nn.Module")
    return module


def _has_meta_tensors(module: Any) -> bool:
    tensors = [*module.parameters(), *module.buffers()]
    return any(tensor.is_meta for tensor in tensors)


@contextlib.contextmanager
def _quiet(logger_name: str) -> Iterator[None]:
    """torch.export logs a whole traceback (15 lines) as a warning before it raises on a
    corrupt file; the load's one-line error says the same, so only errors get through."""
    logger = logging.getLogger(logger_name)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)
