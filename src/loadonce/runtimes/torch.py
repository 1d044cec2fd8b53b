"""PyTorch: TorchScript files, or a safetensors state dict plus a factory that builds the module."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from loadonce._errors import InvalidInputError
from loadonce._imports import import_object, import_optional
from loadonce._inputs import as_typed_batch
from loadonce._spec import ModelSpec
from loadonce.runtimes._base import InputSignature, Predictor, Runtime
from loadonce.runtimes._tensors import batch_rows, split_batch_outputs

TORCHSCRIPT_SUFFIXES = (".pt", ".pth", ".torchscript", ".ts")
SAFETENSORS_SUFFIXES = (".safetensors",)


class TorchPredictor(Predictor):
    """Runs ``module(batch)`` under ``torch.inference_mode`` on the configured device."""

    def __init__(
        self, module: Any, *, device: Any, input_dtype: str, signature: InputSignature | None
    ) -> None:
        self.module = module
        self.device = device
        self.input_dtype = input_dtype
        self.signature = signature

    def prepare(self, examples: list[Any]) -> Any:
        torch = import_optional("torch", extra="torch")
        signature = self.signature or InputSignature(shape=_shape_of(examples), dtype=None)
        array = as_typed_batch(
            examples, InputSignature(shape=signature.shape, dtype=self.input_dtype)
        )
        return torch.from_numpy(np.ascontiguousarray(array))

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


def _device(torch: Any, name: str) -> Any:
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(
            f"device '{name}' was asked for, but CUDA is not available to this torch "
            f'({torch.__version__}): no GPU is visible or the build is CPU-only; use device = "cpu"'
        )
    return torch.device(name)


class TorchRuntime(Runtime):
    name = "torch"
    suffixes = TORCHSCRIPT_SUFFIXES + SAFETENSORS_SUFFIXES
    # An eval-mode module under inference_mode only reads its weights, so concurrent forward
    # calls on one instance are safe; PyTorch parallelises inside each call as well.
    default_concurrency = "shared"

    def load(self, spec: ModelSpec) -> Predictor:
        if spec.artifact is None:
            raise ValueError("the torch runtime needs an artifact (TorchScript or .safetensors)")
        if not spec.artifact.is_file():
            raise FileNotFoundError(f"no such file: {spec.artifact}")
        torch = import_optional("torch", extra="torch")
        if "threads" in spec.options:
            # Process-wide in PyTorch: the last model loaded with this option sets it.
            torch.set_num_threads(int(spec.options["threads"]))
        device = _device(torch, str(spec.options.get("device", "cpu")))
        if spec.artifact.suffix.lower() in SAFETENSORS_SUFFIXES:
            module = _load_state_dict_module(torch, spec, device)
        else:
            try:
                module = torch.jit.load(str(spec.artifact), map_location=device)
            except RuntimeError as exc:
                raise ValueError(
                    "not a TorchScript file (save one with torch.jit.save); for a state dict, "
                    "save it as .safetensors and name options.factory: "
                    + " ".join(str(exc).split())[:200]
                ) from None
        module.eval()
        signature = (
            None
            if spec.input_shape is None
            else InputSignature(
                shape=spec.input_shape, dtype=str(spec.options.get("input_dtype", "float32"))
            )
        )
        return TorchPredictor(
            module,
            device=device,
            input_dtype=str(spec.options.get("input_dtype", "float32")),
            signature=signature,
        )


def _load_state_dict_module(torch: Any, spec: ModelSpec, device: Any) -> Any:
    factory_name = spec.options.get("factory")
    if not isinstance(factory_name, str):
        raise ValueError(
            "a .safetensors state dict needs options.factory = 'package.module:function' "
            "returning the torch.nn.Module to load it into"
        )
    safetensors_torch = import_optional("safetensors.torch", extra="torch")
    module = import_object(factory_name)()
    if not isinstance(module, torch.nn.Module):
        raise TypeError(f"{factory_name} returned {type(module).__name__}, not a torch.nn.Module")
    state = safetensors_torch.load_file(str(spec.artifact), device=str(device))
    missing, unexpected = module.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(
            "the state dict does not fit the module built by "
            f"{factory_name}: missing {sorted(missing) or 'none'}, "
            f"unexpected {sorted(unexpected) or 'none'}"
        )
    return module.to(device)
