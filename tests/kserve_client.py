"""KServe's Python SDK against a server, in a process of its own: KServe's SDK and
tritonclient's gRPC modules register the same protobuf messages, so they cannot share one.

    python -m tests.kserve_client URL

Calls what a KServe user calls (liveness, readiness, model readiness, and inference of the
iris classifier and of Triton's "simple" with an InferRequest, which sends the model's name in
the body) and prints the answers as one JSON object.
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

import numpy as np
from kserve import InferenceRESTClient, InferInput, InferRequest, RESTConfig


async def calls(url: str) -> dict[str, Any]:
    client = InferenceRESTClient(RESTConfig(protocol="v2", retries=0, timeout=30))
    found: dict[str, Any] = {
        "live": await client.is_server_live(url),
        "ready": await client.is_server_ready(url),
        "model_ready": await client.is_model_ready(url, "simple"),
    }
    rows = np.arange(16, dtype=np.int32).reshape(1, 16)
    first = InferInput("INPUT0", [1, 16], "INT32", rows.tolist())
    second = InferInput("INPUT1", [1, 16], "INT32", np.ones_like(rows).tolist())
    answer = await client.infer(
        url,
        InferRequest(model_name="simple", infer_inputs=[first, second], request_id="k1"),
        model_name="simple",
    )
    found["simple"] = {
        "id": answer.id,
        "outputs": {output.name: output.as_numpy().tolist() for output in answer.outputs},
    }
    iris = InferInput("input", [2, 4], "FP64", [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]])
    answer = await client.infer(
        url, InferRequest(model_name="iris", infer_inputs=[iris]), model_name="iris"
    )
    found["iris"] = {output.name: output.as_numpy().tolist() for output in answer.outputs}
    await client.close()
    return found


if __name__ == "__main__":
    print(json.dumps(asyncio.run(calls(sys.argv[1]))))
