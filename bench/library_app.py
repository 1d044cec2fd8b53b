"""A user's own FastAPI app serving the benchmark's model through loadonce's public pieces, as
README's library mode shows: `uvicorn bench.library_app:app`. BENCH_ARTIFACT names the model
file; the model is declared as `bench.servers.loadonce_config` declares it for server mode
(batching, serialized), so the two modes differ only in how the app is built and served.

An older loadonce without `install_middleware` (before issue 16) serves the routers alone:
what a user's app got then.
"""

from __future__ import annotations

import os
from pathlib import Path

from fastapi import FastAPI

import loadonce
from bench.models import TRUSTED_TYPES
from bench.servers import FILL_WAIT_MS, MAX_BATCH_SIZE

model = loadonce.ModelSpec(
    name="m",
    artifact=Path(os.environ["BENCH_ARTIFACT"]),
    options={"trusted_types": TRUSTED_TYPES},
    concurrency="serialized",
    batching=loadonce.Batching(max_batch_size=MAX_BATCH_SIZE, fill_wait_ms=FILL_WAIT_MS),
)
app = FastAPI(lifespan=loadonce.lifespan([model]))
app.include_router(loadonce.models_router())
app.include_router(loadonce.v2_router())
app.include_router(loadonce.health_router())
if hasattr(loadonce, "install_middleware"):
    loadonce.install_middleware(app)
