"""The examples in the docs are run here, so what a user copies works."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

from fastapi.testclient import TestClient

import loadonce
from tests.servers import ThreadedServer, serving
from tests.test_openai import Chat, tiny_bert

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "docs" / "examples"


def _import_example(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"docs_example_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_library_app_example_serves_its_own_route_and_loadonces() -> None:
    example = _import_example("library_app")
    with TestClient(example.app) as client:
        assert client.get("/readyz").json()["models"] == {"iris": "ready"}
        flower = {"sepal_length": 6.7, "sepal_width": 3.0, "petal_length": 5.2, "petal_width": 2.3}
        assert client.post("/classify", json=flower).json() == {"species": "virginica"}
        predicted = client.post("/ml/models/iris/predict", json={"inputs": [5.1, 3.5, 1.4, 0.2]})
        assert predicted.json()["outputs"] == ["setosa"]
        assert example.app.state.requests_served == 1
        # install_middleware: even FastAPI's own 404 carries the request's id.
        missing = client.get("/nowhere", headers={"X-Request-ID": "example-1"})
        assert (missing.status_code, missing.headers["x-request-id"]) == (404, "example-1")


def test_library_app_example_can_swap_the_model_in_tests() -> None:
    example = _import_example("library_app")

    class AlwaysSetosa:
        async def predict(self, inputs: object) -> list[str]:
            return ["setosa"]

    example.app.dependency_overrides[loadonce.ModelDependency("iris")] = AlwaysSetosa
    flower = {"sepal_length": 6.7, "sepal_width": 3.0, "petal_length": 5.2, "petal_width": 2.3}
    with TestClient(example.app) as client:
        assert client.post("/classify", json=flower).json() == {"species": "setosa"}


def test_readme_shows_the_library_example_verbatim() -> None:
    readme = (ROOT / "README.md").read_text()
    example = (EXAMPLES / "library_app.py").read_text()
    body = example.split('"""', 2)[2].strip()  # everything after the module docstring
    assert body in readme


def test_custom_runtime_example_serves_its_own_format(tmp_path: Path) -> None:
    _import_example("custom_runtime")  # registers the runtime
    artifact = tmp_path / "price.linear"
    artifact.write_text('{"weights": [2.0, -1.0], "bias": 0.5}')
    app = loadonce.create_app([loadonce.ModelSpec(name="price", artifact=artifact)])
    with TestClient(app) as client:
        response = client.post("/models/price/predict", json={"inputs": [[1, 1], [3, 0]]})
        assert response.json()["outputs"] == [1.5, 6.5]
        wrong = client.post("/models/price/predict", json={"inputs": [[1, 2, 3]]})
        assert wrong.status_code == 400
        assert "shape [2]" in wrong.json()["error"]
        info = client.get("/models/price").json()
        assert (info["runtime"], info["concurrency"]) == ("linear", "shared")


def test_readme_shows_the_custom_runtime_example_verbatim() -> None:
    readme = (ROOT / "README.md").read_text()
    body = (EXAMPLES / "custom_runtime.py").read_text().split('"""', 2)[2].strip()
    assert body in readme


def test_triton_client_example_talks_to_the_demo_server(tmp_path: Path) -> None:
    example = _import_example("triton_client")
    with serving(["--demo"], tmp_path) as server:
        assert example.classify(f"127.0.0.1:{server.port}") == ["setosa", "virginica"]


def test_readme_shows_the_triton_client_example_verbatim() -> None:
    readme = (ROOT / "README.md").read_text()
    body = (EXAMPLES / "triton_client.py").read_text().split('"""', 2)[2].strip()
    assert body in readme


def test_openai_client_example_talks_to_a_generating_model(tmp_path: Path) -> None:
    example = _import_example("openai_client")
    specs = [
        loadonce.ModelSpec(name="writer", loader=Chat),
        loadonce.ModelSpec(name="encoder", artifact=tiny_bert(tmp_path)),
    ]
    with ThreadedServer(loadonce.create_app(specs)) as server:
        assert example.chat(f"{server.url}/v1") == "user: Tell me a story "
        assert len(example.embed(f"{server.url}/v1")) == 16


def test_readme_shows_the_openai_client_example_verbatim() -> None:
    readme = (ROOT / "README.md").read_text()
    body = (EXAMPLES / "openai_client.py").read_text().split('"""', 2)[2].strip()
    assert body in readme


def test_generating_example_answers_the_generate_routes() -> None:
    example = _import_example("generating")
    with TestClient(example.app) as client:
        whole = client.post("/models/shouter/generate", json={"prompt": "load once"}).json()
        assert (whole["text"], whole["finish_reason"]) == ("LOAD ONCE ", "stop")
        body = {"prompt": "load once serve often", "parameters": {"stop": ["SERVE"]}}
        streamed = client.post("/models/shouter/generate", json={**body, "stream": True})
        assert streamed.text.splitlines()[0] == 'data: {"text":"LOAD "}'
        assert '"finish_reason":"stop"' in streamed.text
        v2 = client.post("/v2/models/shouter/generate", json={"text_input": "hi"}).json()
        assert v2 == {"model_name": "shouter", "model_version": "1", "text_output": "HI "}


def test_readme_shows_the_generating_example_verbatim() -> None:
    readme = (ROOT / "README.md").read_text()
    example = (EXAMPLES / "generating.py").read_text()
    assert example.split('"""', 2)[2].strip() in readme
