"""MLServer's settings for one run: a folder with settings.json and the model's
model-settings.json, served by `mlserver start FOLDER` from bench/.venvs/mlserver."""

from __future__ import annotations

import json
from pathlib import Path

# MLServer's adaptive batching waits at most this long for a batch to fill (seconds).
MAX_BATCH_TIME_S = 0.005


def write(folder: Path, artifact: Path, *, port: int, batch: int) -> Path:
    """The folder for a model named "m" served on ``port`` (gRPC and metrics on the next two
    ports); ``batch`` 0 turns adaptive batching off."""
    folder.mkdir(parents=True, exist_ok=True)
    settings = {
        "http_port": port,
        "grpc_port": port + 1,
        "metrics_port": port + 2,
        "debug": False,
        "logging_level": "WARNING",
    }
    model: dict[str, object] = {
        "name": "m",
        "implementation": "mlserver_sklearn.SKLearnModel",
        "parameters": {"uri": str(artifact)},
    }
    if batch:
        model |= {"max_batch_size": batch, "max_batch_time": MAX_BATCH_TIME_S}
    (folder / "settings.json").write_text(json.dumps(settings, indent=2))
    (folder / "model-settings.json").write_text(json.dumps(model, indent=2))
    return folder


def request_body(row: list[float]) -> str:
    """One example as an Open Inference Protocol request, the way MLServer takes it."""
    tensor = {"name": "input-0", "shape": [1, len(row)], "datatype": "FP64", "data": row}
    return json.dumps({"inputs": [tensor]})
