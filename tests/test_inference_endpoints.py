"""The inference middleware's table is the app's own routes: every inference endpoint a
router registered, found with the prefix the app mounted it under, and nothing else. (An
empty table would go unnoticed by the HTTP tests, since the routes answer the same way: only
slower; bench.modes measures that.)"""

from __future__ import annotations

from fastapi import FastAPI

import loadonce
from loadonce.http.endpoints import mounted_endpoints

PREDICT = "/models/{name}/predict"
INFER = "/v2/models/{model_name}/infer"
INFER_VERSION = "/v2/models/{model_name}/versions/{model_version}/infer"
GENERATE = "/models/{name}/generate"
V2_GENERATE = [
    f"/v2/models/{{model_name}}{version}/{route}"
    for version in ("", "/versions/{model_version}")
    for route in ("generate", "generate_stream")
]


def _specs() -> list[loadonce.ModelSpec]:
    return [loadonce.ModelSpec(name="m", loader=lambda: lambda batch: batch, input_shape=())]


def test_create_apps_table_holds_every_protocols_inference_routes() -> None:
    app = loadonce.create_app(_specs())
    assert [found.path for found in mounted_endpoints(app.routes)] == [
        PREDICT,
        GENERATE,
        INFER,
        INFER_VERSION,
        *V2_GENERATE,
        "/v1/completions",
        "/v1/chat/completions",
        "/v1/embeddings",
    ]


def test_a_users_app_gets_the_routes_it_mounted_under_their_prefix() -> None:
    app = FastAPI(lifespan=loadonce.lifespan(_specs()))
    app.include_router(loadonce.health_router())
    app.include_router(loadonce.models_router(), prefix="/ml")

    @app.post("/models/{name}/predict")
    async def own(name: str) -> dict[str, str]:
        return {"own": name}

    table = mounted_endpoints(app.routes)
    assert [found.path for found in table] == ["/ml" + PREDICT, "/ml" + GENERATE]
    match = table[0].pattern.match("/ml/models/iris/predict")
    assert match is not None
    assert match.groupdict() == {"name": "iris"}
    assert table[0].pattern.match("/models/iris/predict") is None
    assert table[0].pattern.match("/ml/models/iris/predict/more") is None
