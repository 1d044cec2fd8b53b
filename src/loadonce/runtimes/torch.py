"""PyTorch: torch.export programs (.pt2), TorchScript files, or a safetensors state dict plus a
factory that builds the module."""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from loadonce.core.errors import InvalidInputError
from loadonce.core.imports import import_object, import_optional
from loadonce.core.inputs import as_typed_batch
from loadonce.core.spec import ModelSpec
from loadonce.runtimes._base import (
    InputSignature,
    Predictor,
    Runtime,
    TensorInfo,
    model_file,
    thread_count,
)
from loadonce.runtimes._tensors import split_batch_outputs, stack_named_inputs

logger = logging.getLogger("loadonce")

EXPORTED_SUFFIXES = (".pt2",)
TORCHSCRIPT_SUFFIXES = (".pt", ".pth", ".torchscript", ".ts")
SAFETENSORS_SUFFIXES = (".safetensors",)


class TorchPredictor(Predictor):
    """Runs ``module(batch)`` under ``torch.inference_mode`` on the configured device.

    ``named_inputs``: an exported program's several inputs (each example an object keyed by
    input name; the module gets one tensor per input, in order). ``fixed_batch``: the batch
    size a program was exported with, when it is not dynamic: every call is run in batches of
    exactly that size (the last one padded, its padding's outputs dropped).
    ``scalar_inputs``: the positions of inputs the program records as scalars (no
    dimension, so no batch dimension): every call is then one example's, each scalar given
    alone, and an output without a batch dimension is that example's.
    """

    def __init__(
        self,
        module: Any,
        *,
        device: Any,
        input_dtype: str,
        input_shape: tuple[int | None, ...] | None,
        named_inputs: Sequence[TensorInfo] = (),
        fixed_batch: int | None = None,
        casts: Sequence[Any] = (),
        scalar_inputs: frozenset[int] = frozenset(),
        nested_inputs: Any = None,
    ) -> None:
        self.module = module
        # A program's inputs as it was called when exported (torch's pytree TreeSpec), where
        # that was not one positional tensor per input: a dict or tuple of tensors, keyword
        # arguments. Called with one tensor per input, such a program failed every request
        # (a 500: "Trying to flatten user inputs with exported input tree spec").
        self.nested_inputs = nested_inputs
        # The torch dtype of each input the program records, which the values read (in the
        # served NumPy dtype) are cast to: a bfloat16 input is read as float32.
        self.casts = list(casts)
        self.device = device
        self.input_dtype = input_dtype
        self.fixed_batch = fixed_batch
        self.scalar_inputs = scalar_inputs
        # Only a recorded (.pt2) or declared (input_shape) shape is checked up front, with a
        # 400 that names it; TorchScript and nn.Module do not record theirs.
        self.signature = (
            None
            if input_shape is None or named_inputs
            else InputSignature(shape=input_shape, dtype=input_dtype)
        )
        self._named_inputs = list(named_inputs)
        # A module that records no input (TorchScript, a state dict) without a declared
        # input_shape still takes one tensor of ``input_dtype``, of any shape, the batch
        # first: described so (/v2 metadata listed no input, though infer took "input" of
        # that dtype, and a client reading metadata could not know it), not checked
        # beyond its name and dtype.
        self.inputs = self._named_inputs or (
            [TensorInfo(name="input", dtype=input_dtype, shape=None)]
            if self.signature is None
            else []
        )

    def prepare(self, examples: list[Any]) -> Any:
        import numpy as np

        torch = import_optional("torch", extra="torch")
        if self._named_inputs:
            stacked = stack_named_inputs(examples, self._named_inputs)
            arrays = [stacked[t.name] for t in self._named_inputs]
        else:
            if any(isinstance(example, Mapping) for example in examples):
                # Said here: read as numbers, an object was "not a rectangular array".
                raise InvalidInputError(
                    "this model takes one input tensor: each example is an array of numbers, "
                    "not an object of named inputs (a model of several named inputs is served "
                    "from a torch.export program, .pt2)"
                )
            shape = self.signature.shape if self.signature else _shape_of(examples)
            signature = InputSignature(shape=shape, dtype=self.input_dtype)
            arrays = [as_typed_batch(examples, signature)]
        tensors = [torch.from_numpy(np.ascontiguousarray(array)) for array in arrays]
        if self.casts:  # only a program with an input NumPy cannot hold has any
            tensors = [t.to(cast) for t, cast in zip(tensors, self.casts, strict=True)]
        return tensors

    def combine(self, batches: list[Any]) -> Any:
        torch = import_optional("torch", extra="torch")
        return [torch.cat(parts) for parts in zip(*batches, strict=True)]

    def predict(self, batch: Any) -> Sequence[Any]:
        torch = import_optional("torch", extra="torch")
        count = len(batch[0])
        scalars = self.scalar_inputs
        size = 1 if scalars else self.fixed_batch or count
        # Only scalar inputs: no output has a batch dimension either.
        batchless = len(scalars) == len(batch)
        outputs: list[Any] = []
        with torch.inference_mode():
            for start in range(0, count, size):
                chunk = [
                    tensor[start] if index in scalars else tensor[start : start + size]
                    for index, tensor in enumerate(batch)
                ]
                taken = min(size, count - start)
                if taken < size:  # padded with zeros to the exported batch size
                    chunk = [_padded(torch, tensor, size) for tensor in chunk]
                result = self._call([tensor.to(self.device) for tensor in chunk])
                if batchless:
                    result = _one_example(result)
                outputs += _split(result, size)[:taken]
        return outputs

    def _call(self, tensors: list[Any]) -> Any:
        if self.nested_inputs is None:
            return self.module(*tensors)
        from torch.utils._pytree import tree_unflatten

        args, kwargs = tree_unflatten(tensors, self.nested_inputs)
        return self.module(*args, **kwargs)


# Floating-point dtypes NumPy has: any other (bfloat16, the float8 types) is served as
# float32, a type that holds each of its values exactly; inputs are cast back to the model's.
_NUMPY_FLOATS = ("float16", "float32", "float64")


def _served_dtype(name: str) -> str:
    """The NumPy dtype a model's tensor of dtype ``name`` (torch's, without "torch.") is
    read and answered as."""
    return "float32" if name.startswith(("bfloat", "float8")) else name


def _as_numpy(value: Any) -> Any:
    """A tensor's values as a NumPy array: in float32 where NumPy has no such dtype."""
    value = value.detach().cpu()
    if value.dtype.is_floating_point and str(value.dtype).removeprefix("torch.") not in (
        _NUMPY_FLOATS
    ):
        value = value.float()
    return value.numpy()


def _one_example(result: Any) -> Any:
    """The outputs of a call on one example of scalar inputs only (which have no batch
    dimension), each with a batch dimension of that one example."""
    if isinstance(result, Mapping):
        return {key: _one_example(value) for key, value in result.items()}
    if isinstance(result, tuple | list):
        return type(result)(_one_example(value) for value in result)
    return result.unsqueeze(0)


def _padded(torch: Any, tensor: Any, size: int) -> Any:
    padding = torch.zeros((size - len(tensor), *tensor.shape[1:]), dtype=tensor.dtype)
    return torch.cat([tensor, padding])


def _shape_of(examples: list[Any]) -> tuple[int | None, ...]:
    """Without a declared input_shape, any shape is accepted as long as the examples agree."""
    import numpy as np

    try:
        return tuple(None for _ in np.shape(examples[0]))
    except ValueError:
        raise InvalidInputError("each example must be a rectangular array of numbers") from None


def _split(result: Any, count: int) -> list[Any]:
    """A tensor gives one row per example; several outputs an object per example: a dict's
    by its keys, a tuple's or list's by position (``output0``, ``output1``...), so that each
    is a tensor of its own under the Open Inference Protocol (a list per example was sent as
    one tensor of JSON text)."""
    torch = import_optional("torch", extra="torch")
    if isinstance(result, torch.Tensor):
        named = [("output", _as_numpy(result))]
    elif isinstance(result, Mapping):
        named = [(str(key), _as_numpy(value)) for key, value in result.items()]
    elif isinstance(result, tuple | list):
        named = [(f"output{i}", _as_numpy(value)) for i, value in enumerate(result)]
    else:
        raise TypeError(f"the module returned {type(result).__name__}; expected tensors")
    # A scalar (a sum over the batch) has no row per example: each gets it whole, as ONNX
    # graphs' (every request was a 500).
    whole = [name for name, value in named if value.ndim == 0]
    examples = split_batch_outputs(named, count, whole=whole)
    if len(named) == 1 and not isinstance(result, torch.Tensor):
        # A tuple or dict of one: still an object per example (its one output's rows).
        [(name, _)] = named
        return [{name: example} for example in examples]
    return examples


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
    reads_input_shape = True
    options = frozenset({"threads", "device", "input_dtype", "factory"})
    libraries = ("torch", "safetensors.torch")
    suffixes = EXPORTED_SUFFIXES + TORCHSCRIPT_SUFFIXES + SAFETENSORS_SUFFIXES
    # An eval-mode module under inference_mode only reads its weights, so concurrent forward
    # calls on one instance are safe; PyTorch parallelises inside each call as well.
    default_concurrency = "shared"

    def code_modules(self, spec: ModelSpec) -> tuple[str, ...]:
        factory = spec.options.get("factory")
        return (factory.partition(":")[0],) if isinstance(factory, str) else ()

    def load(self, spec: ModelSpec) -> Predictor:
        if spec.artifact is None:
            raise ValueError(
                "the torch runtime needs an artifact (.pt2, TorchScript, .safetensors)"
            )
        model_file(spec.artifact)
        torch = import_optional("torch", extra="torch")
        threads = thread_count(spec, "threads")
        if threads is not None:
            # Process-wide in PyTorch: the last model loaded with this option sets it.
            torch.set_num_threads(threads)
        device = torch_device(torch, str(spec.options.get("device", "cpu")))
        suffix = spec.artifact.suffix.lower()
        shared = False  # only a safetensors state dict is mapped
        named_inputs: list[TensorInfo] = []
        scalar_inputs: frozenset[int] = frozenset()
        outputs: list[TensorInfo] = []
        fixed_batch: int | None = None
        across_rows = False  # an output computed over the batch (a program's scalar)
        input_shape, input_dtype = spec.input_shape, spec.options.get("input_dtype")
        casts: list[Any] = []
        nested_inputs: Any = None
        if suffix in EXPORTED_SUFFIXES:
            program = _load_exported(torch, spec)
            # An exported program records its inputs' shapes and dtypes: they check requests.
            recorded, casts = _exported_inputs(program)
            scalar_inputs = frozenset(i for i, t in enumerate(recorded) if t.shape == ())
            # Described and read as any input: one value per example, the batch first.
            recorded = [
                TensorInfo(name=t.name, dtype=t.dtype, shape=(None,))
                if index in scalar_inputs
                else t
                for index, t in enumerate(recorded)
            ]
            if len(recorded) == 1:
                shape = recorded[0].shape
                input_shape = input_shape or (None if shape is None else tuple(shape[1:]))
                input_dtype = input_dtype or recorded[0].dtype
            else:
                named_inputs = recorded
            fixed_batch = _fixed_batch(recorded, spec.name)
            outputs = _exported_outputs(program, batchless=len(scalar_inputs) == len(recorded) > 0)
            # One example per call with scalar inputs: its scalars are its own.
            across_rows = not scalar_inputs and _returns_a_scalar(program)
            nested_inputs = _nested_inputs(program, len(recorded))
            # Exported programs fix train/eval mode at export time; .eval() is not supported.
            module = program.module().to(device)
        elif suffix in SAFETENSORS_SUFFIXES:
            module, shared = _load_state_dict_module(torch, spec, device)
            module.eval()
            _refuse_several_inputs(_required_inputs(module.forward))
            _refuse_an_annotated_input_not_a_tensor(torch, module.forward)
        else:
            module = _load_torchscript(torch, spec, device).eval()
            _refuse_several_inputs(_script_required_inputs(module))
            _refuse_an_input_not_a_tensor(module)
        predictor = TorchPredictor(
            module,
            device=device,
            input_dtype=str(input_dtype or "float32"),
            input_shape=input_shape,
            named_inputs=named_inputs,
            fixed_batch=fixed_batch,
            casts=casts,
            scalar_inputs=scalar_inputs,
            nested_inputs=nested_inputs,
        )
        predictor.shares_weights = shared
        predictor.outputs = outputs
        # An exported program with a dynamic batch dimension was traced in the mode it serves
        # in (eval, for inference), where rows are computed independently; a TorchScript or
        # state-dict module is the user's code, batched only when they ask for it. Not one
        # that returns a scalar: it is computed over the whole batch, other requests' too.
        predictor.batches_exactly = (
            suffix in EXPORTED_SUFFIXES and fixed_batch is None and not across_rows
        )
        return predictor


def _required_inputs(forward: Any) -> list[str]:
    """The arguments a module's Python ``forward`` cannot be called without."""
    import inspect

    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return [
        name
        for name, parameter in inspect.signature(forward).parameters.items()
        if parameter.kind in positional and parameter.default is inspect.Parameter.empty
    ]


def _script_required_inputs(module: Any) -> list[str]:
    """The arguments a TorchScript module's ``forward`` cannot be called without (its schema
    names ``self`` first)."""
    schema = getattr(getattr(module, "forward", None), "schema", None)
    if schema is None:
        return []
    return [a.name for a in schema.arguments[1:] if not a.has_default_value()]


def _refuse_an_input_not_a_tensor(module: Any) -> None:
    """A TorchScript ``forward`` whose input is a dict, tuple or list of tensors (or a
    number, a string) loaded, and every request failed inside it (a 500: "Expected a value
    of type 'Dict[str, Tensor]'"): loadonce calls it with one tensor, the batch. Its schema
    records the type, so the load says so."""
    schema = getattr(getattr(module, "forward", None), "schema", None)
    arguments = [] if schema is None else schema.arguments[1:]
    if not arguments:
        return
    first = arguments[0]
    kind = str(first.type)
    if kind not in ("Tensor", "Optional[Tensor]"):
        raise ValueError(
            f"its forward takes {first.name} as {kind}, not a tensor; a TorchScript module is "
            "called with one tensor, the batch: export it with torch.export and save it as "
            ".pt2, whose dict, tuple and list inputs are served as named inputs"
        )


def _refuse_an_annotated_input_not_a_tensor(torch: Any, forward: Any) -> None:
    """As ``_refuse_an_input_not_a_tensor``, for a factory's module, whose ``forward`` says
    its input's type where it is annotated (a dict, tuple or list of tensors: every request
    was a 500)."""
    import inspect
    import typing
    from types import UnionType

    parameters = list(inspect.signature(forward).parameters.values())
    if not parameters:
        return
    try:
        hints = typing.get_type_hints(forward)
    except Exception:  # an annotation that does not resolve: nothing is known
        return
    first = parameters[0]
    hint = hints.get(first.name)
    if hint is None:
        return
    # A tensor (a subclass too), an optional one, or anything: called with the batch.
    kinds = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, UnionType) else ()
    if (
        hint is typing.Any
        or _is_tensor(torch, hint)
        or (kinds and all(kind is type(None) or _is_tensor(torch, kind) for kind in kinds))
    ):
        return
    name = str(hint) if typing.get_origin(hint) else getattr(hint, "__name__", str(hint))
    raise ValueError(
        f"its forward takes {first.name} as {name.replace('torch.', '')}, not a tensor; a "
        "state-dict module is called with one tensor, the batch: export it with torch.export "
        "and save it as .pt2, whose dict, tuple and list inputs are served as named inputs"
    )


def _is_tensor(torch: Any, hint: Any) -> bool:
    return isinstance(hint, type) and issubclass(hint, torch.Tensor)


def _refuse_several_inputs(required: list[str]) -> None:
    """loadonce calls a TorchScript or state-dict module with one tensor, the batch: a
    ``forward`` that needs more loaded, and every request failed (a 500)."""
    if len(required) > 1:
        raise ValueError(
            f"its forward takes {len(required)} inputs "
            f"({', '.join(required)}); a TorchScript or state-dict module is called with one "
            "tensor: export it with torch.export and save it as .pt2 to serve named inputs"
        )


def _exported_outputs(program: Any, *, batchless: bool = False) -> list[TensorInfo]:
    """An exported program's outputs as ``_split`` names them (one tensor: ``output``; a
    tuple's or list's, even of one: ``output0``...; a dict's: its keys), with the dtypes and
    shapes its graph records; none where it returns anything else (nested structures).

    The first dimension is the batch's whatever the graph records: ``_split`` hands each
    example its row, and a program exported with a fixed batch is run at that size and its
    padding dropped, so an answer has as many rows as the request's examples. A scalar has
    no batch dimension: one example's is itself; so is every output of a ``batchless``
    program (whose inputs are all scalars, run one example at a time)."""
    spec = program.call_spec.out_spec
    values = _output_values(program)
    if spec is None or not values:
        return []
    _refuse_outputs_not_tensors(program)
    if any(not hasattr(v, "shape") for v in values):
        return []
    flat = spec.num_children == len(values) and all(child.is_leaf() for child in spec.children())
    if not flat and not (len(values) == 1 and spec.is_leaf()):
        # Each answer is cut into one tensor per name: a dict holding a tuple loaded, and
        # every request failed with a 500.
        raise ValueError(
            "its forward returns nested outputs (a tuple, list or dict inside another); "
            "loadonce answers a tensor, or a flat tuple, list or dict of tensors: return one "
            "of those and export it again"
        )
    if spec.type in (tuple, list) and flat:
        names = [f"output{i}" for i in range(len(values))]
    elif spec.type is dict and flat:
        names = [str(key) for key in spec.context]
    elif len(values) == 1 and spec.type not in (tuple, list, dict):
        names = ["output"]
    else:
        return []
    return [
        TensorInfo(
            name=name,
            dtype=_served_dtype(str(value.dtype).removeprefix("torch.")),
            shape=_one_example_shape(value.shape) if batchless else _batch_first(value.shape),
        )
        for name, value in zip(names, values, strict=True)
    ]


def _refuse_outputs_not_tensors(program: Any) -> None:
    """An output that is no tensor (None, a Python number, a size): nothing to cut into one
    row per example (each request was a 500)."""
    [node] = [n for n in program.graph.nodes if n.op == "output"]
    for position, arg in enumerate(node.args[0]):
        value = getattr(arg, "meta", {}).get("val") if arg is not None else None
        if arg is None or (value is not None and not hasattr(value, "shape")):
            kind = "None" if arg is None else type(value).__name__
            raise ValueError(
                f"its forward returns {kind} as output {position}, not a tensor; loadonce "
                "answers tensors only: return tensors (or leave that output out) and export "
                "it again"
            )


def _output_values(program: Any) -> list[Any]:
    """What an exported program's graph records of each output (a fake tensor: its shape
    and dtype), None where it records nothing."""
    [node] = [n for n in program.graph.nodes if n.op == "output"]
    return [getattr(arg, "meta", {}).get("val") for arg in node.args[0]]


def _returns_a_scalar(program: Any) -> bool:
    """Whether an output is a scalar: computed over the whole batch (a sum), so batched
    requests would see each other's rows in it."""
    return any(getattr(value, "ndim", None) == 0 for value in _output_values(program))


def _nested_inputs(program: Any, count: int) -> Any:
    """How the program was called when exported (its pytree spec of ``(args, kwargs)``),
    where that was not ``count`` positional tensors and its leaves are the ``count`` inputs
    served (a dict, tuple or list of tensors, keyword arguments); None for a plain call."""
    from torch.utils._pytree import tree_flatten

    spec = getattr(getattr(program, "call_spec", None), "in_spec", None)
    if spec is None:
        return None
    plain = tree_flatten((tuple(range(count)), {}))[1]
    if spec == plain or spec.num_leaves != count:
        return None
    return spec


def _batch_first(shape: Any) -> tuple[int | None, ...]:
    """A recorded shape with the batch's dimension (the first) and symbolic ones variable;
    a scalar's, one value per example."""
    dims = tuple(d if isinstance(d, int) else None for d in shape)
    return (None, *dims[1:]) if dims else (None,)


def _one_example_shape(shape: Any) -> tuple[int | None, ...]:
    """A recorded shape that is one example's, behind the batch's dimension."""
    return (None, *(d if isinstance(d, int) else None for d in shape))


def _exported_inputs(program: Any) -> tuple[list[TensorInfo], list[Any]]:
    """An exported program's inputs, batch dimension first, as its graph records them (a
    dimension exported as dynamic is None, a dtype NumPy lacks float32), and each one's
    torch dtype, which the served values are cast to."""
    names = list(program.graph_signature.user_inputs)
    found: dict[str, TensorInfo] = {}
    casts: dict[str, Any] = {}
    for node in program.graph.nodes:
        if node.op == "placeholder" and node.name in names:
            value = node.meta.get("val")
            if value is None or not hasattr(value, "shape"):
                continue
            shape = tuple(d if isinstance(d, int) else None for d in value.shape)
            dtype = _served_dtype(str(value.dtype).removeprefix("torch."))
            found[node.name] = TensorInfo(name=node.name, dtype=dtype, shape=shape)
            casts[node.name] = value.dtype
    kept = [name for name in names if name in found]
    served = [found[name] for name in kept]
    # Casts only where a served dtype is not the program's (none: nothing to cast per call).
    needed = any(str(casts[name]).removeprefix("torch.") != found[name].dtype for name in kept)
    return served, [casts[name] for name in kept] if needed else []


def _fixed_batch(inputs: list[TensorInfo], model: str) -> int | None:
    """The batch size a program was exported with when its batch dimension is not dynamic:
    it answers no other (a guard fails), so every call is run at exactly that size."""
    sizes = {t.shape[0] for t in inputs if t.shape}
    if len(sizes) != 1 or None in sizes:
        return None
    [size] = sizes
    logger.info(
        "model '%s': exported with a fixed batch of %s (not a dynamic dimension): its calls "
        "run %s examples at a time, the last padded; export with "
        "dynamic_shapes=({0: torch.export.Dim('batch')},) to take any batch",
        model,
        size,
        size,
    )
    return size


def _load_exported(torch: Any, spec: ModelSpec) -> Any:
    """A torch.export program; a file that is not one is said in one line (PyTorch's own
    message says to read the warnings above it, which its logger was told to keep quiet)."""
    try:
        with _quiet("torch.export"):
            return torch.export.load(str(spec.artifact))
    except Exception as exc:
        if _is_torchscript_archive(spec.artifact):
            raise ValueError(
                "a TorchScript file, not a torch.export program: name it .pt (or save the "
                "model with torch.export.save)"
            ) from None
        reason = " ".join(str(exc).replace("Please check the warnings above", "").split())
        raise ValueError(f"not a torch.export program (.pt2): {reason[:200]}") from None


def _is_torchscript_archive(path: Any) -> bool:
    """A TorchScript file is a zip holding ``code/`` and ``constants.pkl``."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (OSError, zipfile.BadZipFile):
        return False
    return any(name.endswith("/constants.pkl") for name in names) and any(
        "/code/" in name for name in names
    )


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
    # Built on the meta device either way: built for real, the module would first fill its
    # own weights with random initial values (seconds per GB) only to overwrite them.
    module = _build_module(torch, factory, factory_name, on_meta=True)
    state = safetensors_torch.load_file(str(spec.artifact), device=str(device))
    if not share:
        state = _private_copies(state, module, copy=str(device) == "cpu")
    missing, unexpected = module.load_state_dict(state, strict=False, assign=True)
    if missing or unexpected:
        raise ValueError(
            "the state dict does not fit the module built by "
            f"{factory_name}: missing {sorted(missing) or 'none'}, "
            f"unexpected {sorted(unexpected) or 'none'}"
        )
    if _has_meta_tensors(module):
        # A tensor the file does not hold (a non-persistent buffer) stayed on the meta
        # device: build the module for real and let only the weights stay mapped.
        module = _build_module(torch, factory, factory_name, on_meta=False)
        module.load_state_dict(state, strict=False, assign=True)
    return module.to(device), share


def _private_copies(state: dict[str, Any], module: Any, *, copy: bool) -> dict[str, Any]:
    """The file's tensors as the worker's own memory (``copy``: they are mapped views of the
    file on the CPU), each in the dtype the module declares for it, as copying into the
    module's own tensors would give."""
    declared = module.state_dict(keep_vars=True)
    return {
        name: tensor.to(dtype=declared[name].dtype, copy=copy) if name in declared else tensor
        for name, tensor in state.items()
    }


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
