"""KServe's Python SDK against a server, in a process of its own: KServe's SDK and
tritonclient's gRPC modules register the same protobuf messages, so they cannot share one.

    python -m tests.kserve_client rest URL
    python -m tests.kserve_client grpc HOST:PORT

Calls what a KServe user calls with its REST client (``InferenceRESTClient``) or its gRPC
client (``InferenceGRPCClient``): readiness, model readiness, and inference of Triton's
"simple", of the iris classifier and of a model counting NaN values (which KServe's REST client
sends as null) with an InferRequest (over REST it sends the model's
name in the body; over gRPC, typed contents), and prints the answers as one JSON object.
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

import numpy as np
from kserve import (
    InferenceGRPCClient,
    InferenceRESTClient,
    InferInput,
    InferRequest,
    InferResponse,
    RESTConfig,
)


def _input(name: str, array: np.ndarray[Any, Any], datatype: str) -> InferInput:
    # From numpy, as a KServe user writes it: flat typed data, which both clients send.
    tensor = InferInput(name, list(array.shape), datatype)
    tensor.set_data_from_numpy(array, binary_data=False)
    return tensor


def _simple() -> InferRequest:
    rows = np.arange(16, dtype=np.int32).reshape(1, 16)
    inputs = [_input("INPUT0", rows, "INT32"), _input("INPUT1", np.ones_like(rows), "INT32")]
    return InferRequest(model_name="simple", infer_inputs=inputs, request_id="k1")


def _iris() -> InferRequest:
    flowers = np.array([[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]])
    return InferRequest(model_name="iris", infer_inputs=[_input("input", flowers, "FP64")])


def _missing() -> InferRequest:
    # NaN in JSON data: KServe's REST client writes it as null (orjson).
    values = np.array([[1.0, np.nan, 3.0], [np.nan, np.nan, 0.5]], dtype=np.float32)
    return InferRequest(model_name="missing", infer_inputs=[_input("values", values, "FP32")])


def _outputs(answer: InferResponse) -> dict[str, Any]:
    return {output.name: _plain(output.as_numpy().tolist()) for output in answer.outputs}


def _plain(values: Any) -> Any:
    """gRPC answers BYTES as bytes (bytes_contents), REST as JSON strings: both as strings."""
    if isinstance(values, list):
        return [_plain(value) for value in values]
    return values.decode() if isinstance(values, bytes) else values


async def rest(url: str) -> dict[str, Any]:
    client = InferenceRESTClient(RESTConfig(protocol="v2", retries=0, timeout=30))
    found: dict[str, Any] = {
        "live": await client.is_server_live(url),
        "ready": await client.is_server_ready(url),
        "model_ready": await client.is_model_ready(url, "simple"),
    }
    answer = await client.infer(url, _simple(), model_name="simple")
    found["simple"] = {"id": answer.id, "outputs": _outputs(answer)}
    found["iris"] = _outputs(await client.infer(url, _iris(), model_name="iris"))
    found["missing"] = _outputs(await client.infer(url, _missing(), model_name="missing"))
    await client.close()
    return found


async def grpc(address: str) -> dict[str, Any]:
    async with InferenceGRPCClient(address, timeout=30, retries=0) as client:
        found: dict[str, Any] = {
            "ready": await client.is_server_ready(),
            "model_ready": await client.is_model_ready("simple"),
        }
        answer = await client.infer(_simple())
        found["simple"] = {"id": answer.id, "outputs": _outputs(answer)}
        found["iris"] = _outputs(await client.infer(_iris()))
        found["missing"] = _outputs(await client.infer(_missing()))
    return found


if __name__ == "__main__":
    protocol, target = sys.argv[1:]
    calls = {"rest": rest, "grpc": grpc}[protocol]
    print(json.dumps(asyncio.run(calls(target))))
