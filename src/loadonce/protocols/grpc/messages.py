"""The protocol's message classes, from a descriptor pool of loadonce's own.

tritonclient.grpc and kserve register the same ``inference.*`` names in protobuf's default
pool, and a second registration in one process fails ("duplicate symbol"): loadonce's
messages live in a private pool, so any of them can be imported beside loadonce. Messages are
typed ``Any``: their fields are made at run time from the descriptors.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, json_format
from google.protobuf.message_factory import GetMessageClass

from loadonce.core.errors import InvalidRequestError
from loadonce.protocols.grpc import _descriptors
from loadonce.protocols.v2.request_counts import MAX_PARAMETERS, check_count

SERVICE = "inference.GRPCInferenceService"
HEALTH_SERVICE = "grpc.health.v1.Health"

_POOL = descriptor_pool.DescriptorPool()
# In dependency order: the inference file imports the model configuration's.
for _serialized in (_descriptors.MODEL_CONFIG, _descriptors.INFERENCE, _descriptors.HEALTH):
    _POOL.Add(descriptor_pb2.FileDescriptorProto.FromString(_serialized))


def message_class(full_name: str) -> Any:
    """The class of a message of the pool (``inference.ModelInferRequest``)."""
    return GetMessageClass(_POOL.FindMessageTypeByName(full_name))


def method_types(service: str) -> dict[str, tuple[Any, Any]]:
    """Each method of ``service``: its request and response classes, by method name."""
    described = _POOL.FindServiceByName(service)
    return {
        method.name: (
            GetMessageClass(method.input_type),
            GetMessageClass(method.output_type),
        )
        for method in described.methods
    }


def fill_from_json(message: Any, answer: Mapping[str, Any]) -> Any:
    """``message`` filled from the REST answer of the same RPC (``answer``): Triton's JSON
    answers are protobuf's JSON mapping of these messages (same member names, enum values by
    name), so one builder serves both protocols."""
    return json_format.ParseDict(answer, message)


def _inference(name: str) -> Any:
    return message_class(f"inference.{name}")


InferParameter = _inference("InferParameter")
InferTensorContents = _inference("InferTensorContents")
ModelInferRequest = _inference("ModelInferRequest")
ModelInferResponse = _inference("ModelInferResponse")
HealthCheckResponse = message_class("grpc.health.v1.HealthCheckResponse")


def plain_parameters(parameters: Any, field: str = "parameters") -> dict[str, Any]:
    """A map of InferParameter (or ModelRepositoryParameter) as plain values; refused
    (``InvalidRequestError``, naming ``field``) past ``MAX_PARAMETERS`` entries, before any
    is read, and where one holds no value (none of its oneof set: REST's null, refused
    there too; it was dropped unsaid, so a client's timeout or flag silently did nothing)."""
    check_count(field, len(parameters), MAX_PARAMETERS)
    values: dict[str, Any] = {}
    for key, parameter in parameters.items():
        choice = parameter.WhichOneof("parameter_choice")
        if choice is None:
            kinds = ", ".join(f.name for f in parameter.DESCRIPTOR.oneofs[0].fields)
            raise InvalidRequestError(
                [(f"{field}['{key}']", f"holds no value: set one of {kinds}")]
            )
        values[key] = getattr(parameter, choice)
    return values
