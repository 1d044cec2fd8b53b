"""The Open Inference Protocol's JSON objects, validated as its REST specification defines them.

Every request object accepts members it does not know, and ignores them: the specification's
schemas allow extra members, and clients send some (KServe's SDK puts ``model_name`` in the
inference request). A known member of the wrong type is still refused.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StrictStr,
    WithJsonSchema,
)
from pydantic_core import PydanticCustomError

from loadonce.protocols.v2.request_counts import MAX_PARAMETERS, MAX_TENSORS

Dimension = Annotated[StrictInt, Field(ge=0)]

_JSON_KINDS = {
    dict: "an object",
    list: "an array",
    type(None): "null",
    bool: "a boolean",
    int: "a number",
    float: "a number",
    str: "a string",
}


def json_kind(value: Any) -> str:
    """What a parsed JSON value is, in JSON's words (not Python's: "NoneType", "dict")."""
    return _JSON_KINDS.get(type(value), type(value).__name__)


def _scalar(value: Any) -> Any:
    """A parameter's value is a string, a number or a boolean, as the protocol defines it
    (gRPC's InferParameter can carry nothing else; Triton and KServe refuse the rest). An
    object, an array or null was taken, and reached the model or was dropped unsaid."""
    if isinstance(value, str | int | float):  # bool is an int
        return value
    raise PydanticCustomError(
        "parameter_type",
        "a parameter must be a string, a number or a boolean; got {kind}",
        {"kind": json_kind(value)},
    )


ParameterValue = Annotated[
    Any,
    AfterValidator(_scalar),
    WithJsonSchema({"anyOf": [{"type": "string"}, {"type": "number"}, {"type": "boolean"}]}),
]
# Counts bounded as gRPC's are (request_counts.py): each item costs work before any check.
Parameters = Annotated[dict[str, ParameterValue], Field(max_length=MAX_PARAMETERS)]


class _RequestObject(BaseModel):
    """An object a client sends: unknown members are dropped unread (``ignore``, not
    ``allow``: nothing is kept of them), known ones are validated strictly."""

    model_config = ConfigDict(extra="ignore")


class RequestInput(_RequestObject):
    name: StrictStr
    shape: list[Dimension]
    datatype: StrictStr
    parameters: Parameters | None = None
    data: Any = Field(
        default=None,
        description="The tensor's elements, row-major, flat or nested; left out when the "
        "elements follow the JSON in binary (parameters.binary_data_size).",
    )


class RequestOutput(_RequestObject):
    name: StrictStr
    parameters: Parameters | None = None


class InferenceRequest(_RequestObject):
    model_config = ConfigDict(
        extra="ignore",
        json_schema_extra={
            "examples": [
                {
                    "id": "42",
                    "inputs": [
                        {
                            "name": "input",
                            "shape": [1, 4],
                            "datatype": "FP64",
                            "data": [5.1, 3.5, 1.4, 0.2],
                        }
                    ],
                }
            ]
        },
    )

    id: StrictStr | None = None
    parameters: Parameters | None = None
    inputs: Annotated[list[RequestInput], Field(min_length=1, max_length=MAX_TENSORS)]
    outputs: Annotated[list[RequestOutput], Field(max_length=MAX_TENSORS)] | None = None


class OutputTensor(BaseModel):
    name: str
    datatype: str
    shape: list[int]
    parameters: Parameters | None = None
    data: list[Any] | None = None


class InferenceResponse(BaseModel):
    model_name: str
    model_version: str | None = None
    id: str | None = None
    outputs: list[OutputTensor]


class MetadataTensor(BaseModel):
    name: str
    datatype: str
    shape: list[int] = Field(description="-1 marks a variable dimension.")


class ModelMetadata(BaseModel):
    name: str
    versions: list[str]
    platform: str
    inputs: list[MetadataTensor]
    outputs: list[MetadataTensor]


class ServerMetadata(BaseModel):
    name: str
    version: str
    extensions: list[str]


class ServerLive(BaseModel):
    live: bool


class ServerReady(BaseModel):
    ready: bool


class ModelReady(BaseModel):
    name: str
    ready: bool


class RepositoryIndexRequest(_RequestObject):
    ready: StrictBool = Field(default=False, description="Only the models ready to infer.")


class RepositoryModel(BaseModel):
    name: str
    version: str
    state: str = Field(description="READY, LOADING, UNLOADING or UNAVAILABLE, as in Triton.")
    reason: str


class RepositoryRequest(_RequestObject):
    """The body of a load or unload request (it may also be empty)."""

    parameters: Parameters | None = None


class V2Error(BaseModel):
    error: str
