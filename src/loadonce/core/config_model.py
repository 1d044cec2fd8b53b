"""The base of loadonce's configuration models (``[server]``, ``[[models]]``, batching,
``[ray]``, ``[tracing]``): what pydantic's lax mode would take for something else is refused,
whichever setting it is, so that a mistake stops startup with one line naming the setting:

- ``true`` or ``false`` where a number is meant (``port = true`` bound port 1, ``workers =
  true`` started one worker), and a number where ``true`` or ``false`` is (``gc_freeze = 0``);
- NaN and infinities for any number (TOML writes ``nan`` and ``inf``; a variable ``"inf"``);
- a whole number past 64 bits (a variable holds any digits; TOML's own stop there);
- an empty or blank string for a name, a path, a version, or among paths (``artifact = ""``
  loaded the config file's directory).
"""

from __future__ import annotations

import types
import typing
from pathlib import PurePath
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationInfo, field_validator


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


def _takes_text(annotation: Any) -> bool:
    """``str`` or ``Path`` (not ``Any``: a warm-up example may be any value)."""
    annotation = _bare(annotation)
    if annotation is str or (isinstance(annotation, type) and issubclass(annotation, PurePath)):
        return True
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return any(_takes_text(member) for member in typing.get_args(annotation))
    return False


def _takes_paths_in_a_sequence(annotation: Any) -> bool:
    """``list[Path] | None``... (a list of names checks its entries itself, saying more)."""
    annotation = _bare(annotation)
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return any(_takes_paths_in_a_sequence(m) for m in typing.get_args(annotation))
    if typing.get_origin(annotation) in (tuple, list):
        return any(
            isinstance(m, type) and issubclass(m, PurePath) for m in typing.get_args(annotation)
        )
    return False


def _takes_only_booleans(annotation: Any) -> bool:
    """``bool``, ``bool | None``: not a number, text or anything (``Any``) besides."""
    return (
        _bare(annotation) is not Any
        and _takes_booleans(annotation)
        and not _takes_numbers(annotation)
        and not _takes_text(annotation)
    )


# The largest whole number a setting takes: a 64-bit integer's, as TOML's.
MOST_WHOLE = 2**63 - 1


class ConfigModel(BaseModel):
    model_config = ConfigDict(allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_boolean_for_a_number(cls, value: Any, info: ValidationInfo) -> Any:
        if info.field_name is None:
            return value
        annotation = cls.model_fields[info.field_name].annotation
        if isinstance(value, bool):
            if _takes_numbers(annotation) and not _takes_booleans(annotation):
                raise ValueError(f"must be a number, not {str(value).lower()}")
        elif isinstance(value, int | float):
            if _takes_only_booleans(annotation):
                raise ValueError(f"must be true or false, not {value}")
        elif isinstance(value, str) and not value.strip() and _takes_text(annotation):
            raise ValueError("must not be empty")
        elif (
            isinstance(value, list | tuple)
            and any(isinstance(v, bool) for v in value)
            and _takes_numbers_in_a_sequence(annotation)
        ):
            raise ValueError("must hold numbers, not true or false")
        elif (
            isinstance(value, list | tuple)
            and any(isinstance(v, str) and not v.strip() for v in value)
            and _takes_paths_in_a_sequence(annotation)
        ):
            raise ValueError("holds an empty path")
        return value

    @field_validator("*", mode="after")
    @classmethod
    def _whole_numbers_within_64_bits(cls, value: Any) -> Any:
        # After: a variable's digits arrive as a string, read into any size of int.
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) > MOST_WHOLE:
            raise ValueError(f"must be at most {MOST_WHOLE}")
        return value
