"""A model's configuration as Triton writes it (``GET /v2/models/{m}/config``), derived from
its spec and what the loaded model declares, so clients that read it (tritonclient's
``get_model_config``, tools that size their requests by ``max_batch_size``) work.

- ``max_batch_size``: the batching's ``max_batch_size``, 0 without batching. As in Triton,
  with a ``max_batch_size`` the ``dims`` leave the batch dimension out; with 0 they are
  the whole shape (loadonce's first dimension is always the batch: -1).
- ``instance_group``: the calls of the model that may run at once (the pool's instances,
  the shared threads, or the concurrent batches), all on the CPU as loadonce sees them.
- ``dynamic_batching``: only with batching; ``max_queue_delay_microseconds`` is
  ``max_wait_ms``.
"""

from __future__ import annotations

from typing import Any

from loadonce.core.model import Model
from loadonce.core.spec import Batching
from loadonce.protocols.v2.datatypes import BYTES
from loadonce.protocols.v2.described import described_inputs, described_outputs
from loadonce.protocols.v2.schemas import MetadataTensor


def model_config(model: Model) -> dict[str, Any]:
    """The configuration of a loaded model."""
    return config_with(model, model.batching)


def config_with(model: Model, batching: Batching | None) -> dict[str, Any]:
    """The configuration ``model`` has loaded with ``batching`` (what a repository load's
    config is compared with, before the load)."""
    max_batch_size = 0 if batching is None else batching.max_batch_size
    optional = {t.name for t in model.inputs if t.optional}
    config: dict[str, Any] = {
        "name": model.name,
        "platform": model.runtime_name or "",
        "backend": model.runtime_name or "",
        "max_batch_size": max_batch_size,
        "input": [_input(t, max_batch_size, optional) for t in described_inputs(model)],
        "output": [_tensor(t, max_batch_size) for t in described_outputs(model)],
        "instance_group": [
            {
                "name": f"{model.name}_0",
                "kind": "KIND_CPU",
                "count": _concurrent_calls(model, batching),
            }
        ],
    }
    if batching is not None:
        config["dynamic_batching"] = {
            "max_queue_delay_microseconds": round(batching.max_wait_ms * 1000)
        }
    return config


def triton_type(datatype: str) -> str:
    """The protocol's datatype as Triton's configuration names it (BYTES is TYPE_STRING)."""
    return "TYPE_STRING" if datatype == BYTES else f"TYPE_{datatype}"


def _tensor(tensor: MetadataTensor, max_batch_size: int) -> dict[str, Any]:
    dims = tensor.shape[1:] if max_batch_size > 0 else tensor.shape
    return {"name": tensor.name, "data_type": triton_type(tensor.datatype), "dims": dims}


def _input(tensor: MetadataTensor, max_batch_size: int, optional: set[str]) -> dict[str, Any]:
    """An input as Triton's ``ModelInput``: ``optional`` where a request may leave it out
    (an ONNX graph's optional input), as Triton marks it; a client that sizes its requests
    by the configuration sent it always."""
    described = _tensor(tensor, max_batch_size)
    if tensor.name in optional:
        described["optional"] = True
    return described


def _concurrent_calls(model: Model, batching: Batching | None) -> int:
    """As the batcher counts them (``core/model.py`` ``_make_batcher``)."""
    policy = model.concurrency
    size = 1 if policy is None else policy.size
    if model.batcher is None or batching is None:
        return size
    pooled = policy is not None and policy.kind == "pool"
    return batching.concurrent_batches or (size if pooled else 1)
