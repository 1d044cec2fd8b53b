"""A repository ``load`` with Triton's ``config`` parameter (tritonclient's
``load_model(name, config=...)``): what of it loadonce can honour.

loadonce loads a model as the operator declared it; a request cannot make it load something
else. What a configuration may change is the batching, which the queue applies to the same
model: ``max_batch_size`` (0: no batching) and ``dynamic_batching.max_queue_delay_microseconds``
(``max_wait_ms``). Every other member must say what the model's configuration says already
(``GET .../config``), and is then accepted as it changes nothing; one that differs is a 400
naming it. Numbers may be written as strings, as protobuf's JSON writes 64-bit integers.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import ValidationError

from loadonce.core.errors import describe_validation
from loadonce.core.model import Model
from loadonce.core.spec import Batching
from loadonce.protocols.v2.errors import LoadRefusedError
from loadonce.protocols.v2.model_config import model_config

_CHANGEABLE = "max_batch_size, dynamic_batching.max_queue_delay_microseconds"

# What a load sets the batching to: a table, none ("off"), the one declared at startup
# ("declared": a load without config), or None: as it is.
BatchingChange = Batching | Literal["off", "declared"] | None


def batching_from_config(model: Model, text: Any) -> BatchingChange:
    """The batching the load's ``config`` asks for (None: as it is); raises a 400 saying
    why the load failed, in Triton's words ("failed to load"), which its clients look for."""
    config = _parsed(model.name, text)
    current = model_config(model)
    batching = model.batching
    max_batch_size = current["max_batch_size"]
    max_wait_ms = 0.0 if batching is None else batching.max_wait_ms
    differs: list[str] = []
    for key, value in config.items():
        if key == "max_batch_size":
            max_batch_size = _count(model.name, key, value, _INT32_MOST)
        elif key == "dynamic_batching" and isinstance(value, dict):
            for member, given in value.items():
                if member == "max_queue_delay_microseconds":
                    delay = _count(model.name, f"{key}.{member}", given, _UINT64_MOST)
                    max_wait_ms = delay / 1000
                elif given != current.get(key, {}).get(member):
                    differs.append(f"{key}.{member}")
        elif current.get(key) != value:
            differs.append(key)
    if differs:
        raise LoadRefusedError(
            model.name,
            f"its config cannot change {', '.join(differs)}: "
            f"loadonce loads the model as declared, and a load's config may change only "
            f"{_CHANGEABLE} (GET /v2/models/{model.name}/config shows the rest)",
        )
    if max_batch_size == 0:
        return "off" if batching is not None else None
    options = {} if batching is None else batching.model_dump()
    try:
        wanted = Batching.model_validate(
            {**options, "max_batch_size": max_batch_size, "max_wait_ms": max_wait_ms}
        )
    except ValidationError as exc:
        raise LoadRefusedError(model.name, f"{describe_validation(exc)}") from None
    return None if wanted == batching else wanted


def _parsed(name: str, text: Any) -> dict[str, Any]:
    if not isinstance(text, str):
        raise LoadRefusedError(
            name, "parameters.config must be the configuration as a JSON object in a string"
        )
    try:
        config = json.loads(text)
    except json.JSONDecodeError as exc:
        raise LoadRefusedError(
            name, f"parameters.config is not JSON ({exc.msg} at character {exc.pos})"
        ) from None
    except ValueError:  # an integer past Python's 4,300 digits
        raise LoadRefusedError(name, "parameters.config holds a number too long to read") from None
    except RecursionError:
        raise LoadRefusedError(name, "parameters.config nests too deeply") from None
    if not isinstance(config, dict):
        raise LoadRefusedError(name, "parameters.config is not an object")
    return config


# The fields' types in Triton's ModelConfig (int32 max_batch_size, uint64 delay): a load that
# took a larger number made every gRPC ModelConfig after it fail (protobuf: out of range).
_INT32_MOST = 2**31 - 1
_UINT64_MOST = 2**64 - 1


def _count(name: str, field: str, value: Any, most: int) -> int:
    """A whole number from 0 to ``most``, or one written as a string (protobuf's JSON for
    int64)."""
    if isinstance(value, str) and value.isdigit() and len(value) < 21:
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= most:
        raise LoadRefusedError(name, f"{field} must be a whole number from 0 to {most}")
    return value
