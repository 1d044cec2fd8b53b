"""A model's inputs and outputs as the protocol describes them (metadata, configuration)."""

from __future__ import annotations

from collections.abc import Sequence

from loadonce.core.model import Model
from loadonce.protocols.v2.datatypes import datatype_of_declared
from loadonce.protocols.v2.examples import metadata_shape
from loadonce.protocols.v2.outputs import output_tensors
from loadonce.protocols.v2.schemas import MetadataTensor
from loadonce.runtimes import TensorInfo


def described_inputs(model: Model) -> list[MetadataTensor]:
    return _declared(model.inputs)


def described_outputs(model: Model) -> list[MetadataTensor]:
    """The outputs the model declares: every runtime's, at load, from what the library
    records (a classifier's classes, a regressor's targets, a Transformers task), true from
    startup and for every answer (``outputs.py`` sends them so).

    Only a model nobody can describe without calling it (a loader's plain function, a
    method loadonce does not know) declares none: it is described by what it answered its
    warm-up with (or, without one, its first request), encoded as inference encodes them:
    one output (``output``), or one per key of an object, each shaped as that answer's with
    a variable batch dimension. None before either: nothing is known."""
    if model.outputs:
        return _declared(model.outputs)
    answer = model.sample_answer
    if not answer:
        return []
    try:
        tensors = output_tensors((), list(answer))
    except RuntimeError:  # examples with different keys: no one form to describe
        return []
    return [
        MetadataTensor(name=t.name, datatype=t.datatype, shape=[-1, *t.shape[1:]]) for t in tensors
    ]


def _declared(tensors: Sequence[TensorInfo]) -> list[MetadataTensor]:
    """Tensors whose datatype is known (a model that accepts anything declares none)."""
    described = []
    for tensor in tensors:
        datatype = datatype_of_declared(tensor.dtype)
        if datatype is not None:
            shape = metadata_shape(tensor.shape)
            described.append(MetadataTensor(name=tensor.name, datatype=datatype, shape=shape))
    return described
