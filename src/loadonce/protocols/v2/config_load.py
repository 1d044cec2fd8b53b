"""A repository ``load`` with Triton's ``config`` parameter (tritonclient's
``load_model(name, config=...)``): what of it loadonce can honour.

loadonce loads a model as the operator declared it; a request cannot make it load something
else. What a configuration may change is the batching, which the queue applies to the same
model: ``max_batch_size`` (0: no batching) and ``dynamic_batching.max_queue_delay_microseconds``
(``max_wait_ms``). As in Triton, each load starts from the model's own configuration (as
declared) and the members this load's config sets: what an earlier load's config set does not
last into the next. Every other member must say what the configuration so loaded says (``GET
.../config`` shows it), and is then accepted as it changes nothing; one that differs is a 400
naming it. Numbers may be written as strings, as protobuf's JSON writes 64-bit integers.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import ValidationError

from loadonce.core.errors import describe_validation
from loadonce.core.log_safe import quoted
from loadonce.core.model import Model
from loadonce.core.spec import Batching
from loadonce.http.duplicate_keys import repeated_key
from loadonce.protocols.v2.errors import LoadRefusedError
from loadonce.protocols.v2.model_config import config_with

_CHANGEABLE = "max_batch_size, dynamic_batching.max_queue_delay_microseconds"

# What a load sets the batching to: a table, none ("off"), or the one declared at startup
# ("declared": a load without config, or one whose config says what the declaration does).
BatchingChange = Batching | Literal["off", "declared"]


def batching_from_config(model: Model, text: Any) -> BatchingChange:
    """The batching the load's ``config`` asks for: the declared batching with the members
    the config sets; raises a 400 saying why the load failed, in Triton's words ("failed to
    load"), which its clients look for."""
    config = _parsed(model.name, text)
    # The declaration, not what an earlier load's config left (model.batching). Every worker
    # holds the operator's declaration, one started after a change too (Registry(declared)).
    declared = model.declared_spec.batching_for(model.batches_exactly is True)
    max_batch_size = 0 if declared is None else declared.max_batch_size
    max_wait_ms = 0.0 if declared is None else declared.max_wait_ms
    # The other members, by (key, member of its table or ""), with what the config gives.
    others: dict[tuple[str, str], Any] = {}
    for key, value in config.items():
        if key == "max_batch_size":
            max_batch_size = _count(model.name, key, value, _INT32_MOST)
        elif key == "dynamic_batching" and isinstance(value, dict):
            for member, given in value.items():
                if member == "max_queue_delay_microseconds":
                    delay = _count(model.name, f"{key}.{member}", given, _UINT64_MOST)
                    max_wait_ms = delay / 1000
                else:
                    others[key, member] = given
        else:
            others[key, ""] = value
    wanted = _batching(model.name, declared, max_batch_size, max_wait_ms)
    # Compared with the configuration this load gives: the dims leave the batch dimension
    # out with a max_batch_size, whatever an earlier load set.
    loaded = config_with(model, wanted)
    differs = [
        f"{key}.{member}" if member else key
        for (key, member), value in others.items()
        if _member(loaded, key, member) != value
    ]
    if differs:
        raise LoadRefusedError(
            model.name,
            f"its config cannot change {', '.join(differs)}: "
            f"loadonce loads the model as declared, and a load's config may change only "
            f"{_CHANGEABLE} (GET /v2/models/{model.name}/config shows the rest)",
        )
    if wanted == declared:
        return "declared"
    return "off" if wanted is None else wanted


def _batching(
    name: str, declared: Batching | None, max_batch_size: int, max_wait_ms: float
) -> Batching | None:
    """The declared batching with the size and delay a load's config gives (size 0: none)."""
    if max_batch_size == 0:
        return None
    options = {} if declared is None else declared.model_dump()
    try:
        return Batching.model_validate(
            {**options, "max_batch_size": max_batch_size, "max_wait_ms": max_wait_ms}
        )
    except ValidationError as exc:
        raise LoadRefusedError(name, f"{describe_validation(exc)}") from None


def _member(config: dict[str, Any], key: str, member: str) -> Any:
    """``key`` of ``config``, or ``member`` of its table ("": the key's value; None: not
    there)."""
    value = config.get(key)
    if member:
        return value.get(member) if isinstance(value, dict) else None
    return value


class _RepeatedKeyError(Exception):
    """A key given twice in one object of a config."""


def _refuse_repeats(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    built = dict(pairs)
    if len(built) != len(pairs):
        raise _RepeatedKeyError(repeated_key(pairs))
    return built


def _parsed(name: str, text: Any) -> dict[str, Any]:
    if not isinstance(text, str):
        raise LoadRefusedError(
            name, "parameters.config must be the configuration as a JSON object in a string"
        )
    try:
        # A key given twice is refused, as in the request's own body: readers differ on
        # which one counts ({"max_batch_size": 8, "max_batch_size": 0} loaded without
        # batching here, where a filter that reads the first saw 8).
        config = json.loads(text, object_pairs_hook=_refuse_repeats)
    except _RepeatedKeyError as exc:
        raise LoadRefusedError(
            name,
            f"parameters.config gives {quoted(exc.args[0])} more than once: give each key once "
            "(readers differ on which one counts)",
        ) from None
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
