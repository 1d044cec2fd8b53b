"""The base of loadonce's configuration models (``[server]``, ``[[models]]``, batching): a
``true`` or ``false`` where a number is meant is refused. Pydantic's lax mode takes a
boolean for a number (``port = true`` bound port 1, ``workers = true`` started one worker)."""

from __future__ import annotations

import types
import typing
from typing import Any

from pydantic import BaseModel, ValidationInfo, field_validator


def _bare(annotation: Any) -> Any:
    """``float`` of ``Annotated[float, Field(gt=0)]``."""
    while typing.get_origin(annotation) is typing.Annotated:
        annotation = typing.get_args(annotation)[0]
    return annotation


def _takes_booleans(annotation: Any) -> bool:
    annotation = _bare(annotation)
    if annotation is bool or annotation is Any:
        return True
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return any(_takes_booleans(member) for member in typing.get_args(annotation))
    return typing.get_origin(annotation) is typing.Literal and any(
        isinstance(value, bool) for value in typing.get_args(annotation)
    )


def _takes_numbers(annotation: Any) -> bool:
    annotation = _bare(annotation)
    if isinstance(annotation, type) and issubclass(annotation, int | float):
        return annotation is not bool  # ByteSize is an int too
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return any(_takes_numbers(member) for member in typing.get_args(annotation))
    return False


def _takes_numbers_in_a_sequence(annotation: Any) -> bool:
    """``tuple[int | None, ...]``, ``list[int]``, perhaps among a union's members."""
    annotation = _bare(annotation)
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return any(_takes_numbers_in_a_sequence(m) for m in typing.get_args(annotation))
    if typing.get_origin(annotation) in (tuple, list):
        members = [m for m in typing.get_args(annotation) if m is not Ellipsis]
        return any(_takes_numbers(m) and not _takes_booleans(m) for m in members)
    return False


class ConfigModel(BaseModel):
    @field_validator("*", mode="before")
    @classmethod
    def _no_boolean_for_a_number(cls, value: Any, info: ValidationInfo) -> Any:
        if info.field_name is None:
            return value
        annotation = cls.model_fields[info.field_name].annotation
        if isinstance(value, bool):
            if _takes_numbers(annotation) and not _takes_booleans(annotation):
                raise ValueError(f"must be a number, not {str(value).lower()}")
        elif (
            isinstance(value, list | tuple)
            and any(isinstance(v, bool) for v in value)
            and _takes_numbers_in_a_sequence(annotation)
        ):
            raise ValueError("must hold numbers, not true or false")
        return value
