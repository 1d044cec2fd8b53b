"""LitServe serving a joblib scikit-learn model: `python litserve_app.py ARTIFACT PORT BATCH`.

Run by the LitServe environment's interpreter (bench/.venvs/litserve), not loadonce's. BATCH 0
serves without batching; otherwise LitServe batches up to BATCH requests, waiting at most
BATCH_TIMEOUT_S for a batch to fill (LitServe's own window). The route is LitServe's
/predict; the body is loadonce's: {"inputs": [[...one example...]]}.
"""

from __future__ import annotations

import sys
from typing import Any

import joblib
import litserve as ls
import numpy as np

BATCH_TIMEOUT_S = 0.005


class SklearnAPI(ls.LitAPI):  # type: ignore[misc]
    def __init__(self, artifact: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.artifact = artifact

    def setup(self, device: str) -> None:
        self.model = joblib.load(self.artifact)

    # Unannotated on purpose: LitServe reads the annotation to choose how to parse the
    # request, and none means "the JSON body".
    def decode_request(self, request):  # type: ignore[no-untyped-def]
        return np.asarray(request["inputs"][0], dtype=np.float64)

    def predict(self, x: Any) -> Any:
        # Unbatched: one example (1-D); batched: LitServe stacked them (2-D).
        return self.model.predict(np.atleast_2d(x))

    def encode_response(self, output: Any) -> dict[str, Any]:
        return {"outputs": np.atleast_1d(output).tolist()}


def main() -> None:
    artifact, port, batch = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    if batch:
        api = SklearnAPI(artifact, max_batch_size=batch, batch_timeout=BATCH_TIMEOUT_S)
    else:
        api = SklearnAPI(artifact)
    server = ls.LitServer(api, accelerator="cpu", workers_per_device=1)
    server.run(port=port, generate_client_file=False, log_level="warning")


if __name__ == "__main__":
    main()
