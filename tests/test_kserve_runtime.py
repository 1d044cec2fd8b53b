"""The KServe ClusterServingRuntime runs loadonce as KServe would: its args rendered for an
InferenceService (``{{.Name}}``, the model downloaded into /mnt/models), started for real,
its probes, the Open Inference Protocol and gRPC health checked against it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import grpc
import httpx2 as httpx
import onnx
import yaml
from onnx import TensorProto, helper

from loadonce.protocols.grpc.messages import HEALTH_SERVICE, message_class
from tests.servers import REPO_ROOT, free_port, serving

RUNTIME = REPO_ROOT / "deploy" / "kubernetes" / "kserve-servingruntime.yaml"
# What KServe's storage initializer and the InferenceService would give the container.
MODEL_DIR = "/mnt/models"
ISVC_NAME = "doubler"
SERVING = 1  # grpc.health.v1.HealthCheckResponse.ServingStatus


def _runtime() -> dict[str, Any]:
    document = yaml.safe_load(RUNTIME.read_text())
    assert isinstance(document, dict)
    return document


def _option(args: list[str], flag: str) -> str:
    return args[args.index(flag) + 1]


def _render(args: list[str], model_dir: Path, http_port: int, grpc_port: int) -> list[str]:
    """The args as KServe renders them (``{{.Name}}``, /mnt/models), then moved to this
    machine: loopback and free ports instead of the pod's address and its fixed ports."""
    rendered = [
        word.replace("{{.Name}}", ISVC_NAME).replace(MODEL_DIR, str(model_dir)) for word in args
    ]
    rendered[rendered.index("0.0.0.0")] = "127.0.0.1"
    rendered[rendered.index("--port") + 1] = str(http_port)
    rendered[rendered.index("--grpc-port") + 1] = str(grpc_port)
    return rendered


def _build_doubler(path: Path) -> Path:
    """An ONNX model, x FP32 [-1, 2] -> twice: quick to load, so the test stays short."""
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "x"], ["twice"])],
        "doubler",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 2])],
        [helper.make_tensor_value_info("twice", TensorProto.FLOAT, ["batch", 2])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.save(model, path)
    return path


def _grpc_health(address: str) -> int:
    request_class = message_class("grpc.health.v1.HealthCheckRequest")
    response_class = message_class("grpc.health.v1.HealthCheckResponse")
    with grpc.insecure_channel(address) as channel:
        check = channel.unary_unary(
            f"/{HEALTH_SERVICE}/Check",
            request_serializer=request_class.SerializeToString,
            response_deserializer=response_class.FromString,
        )
        status: int = check(request_class(service=""), timeout=5).status
        return status


def test_the_runtime_declares_a_v2_single_model_server() -> None:
    runtime = _runtime()
    assert runtime["apiVersion"] == "serving.kserve.io/v1alpha1"
    assert runtime["kind"] == "ClusterServingRuntime"
    spec = runtime["spec"]
    assert spec["protocolVersions"] == ["v2"]
    assert spec["multiModel"] is False
    formats = {entry["name"]: entry for entry in spec["supportedModelFormats"]}
    assert set(formats) == {
        "sklearn",
        "onnx",
        "pytorch",
        "xgboost",
        "lightgbm",
        "catboost",
        "huggingface",
    }
    # KServe's own runtimes claim these formats: InferenceServices name this one.
    assert not any(entry["autoSelect"] for entry in formats.values())
    [container] = spec["containers"]
    assert container["name"] == "kserve-container"  # the name KServe merges model settings into
    args = container["args"]
    assert args[:2] == ["serve", MODEL_DIR]
    assert _option(args, "--name") == "{{.Name}}"
    assert _option(args, "--host") == "0.0.0.0"
    # Knative allows one container port: HTTP on KServe's 8080; gRPC on a port of its own.
    [port] = container["ports"]
    assert port["containerPort"] == int(_option(args, "--port")) == 8080
    assert int(_option(args, "--grpc-port")) == 8081
    assert spec["annotations"]["prometheus.kserve.io/port"] == str(port["containerPort"])
    for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[kind]["httpGet"]["port"] == port["containerPort"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/livez"
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 300


def test_the_runtime_serves_the_downloaded_model_under_the_services_name(
    tmp_path: Path,
) -> None:
    container = _runtime()["spec"]["containers"][0]
    # A storageUri naming one file: the initializer leaves it in /mnt/models by its own name.
    model_dir = tmp_path / "mnt-models"
    model_dir.mkdir()
    _build_doubler(model_dir / "model.onnx")
    http_port, grpc_port = free_port(), free_port()
    args = _render(container["args"], model_dir, http_port, grpc_port)

    with serving(args[1:], tmp_path, port=http_port) as server:
        probes = [container[kind] for kind in ("startupProbe", "readinessProbe", "livenessProbe")]
        for probe in probes:
            answer = httpx.get(f"{server.url}{probe['httpGet']['path']}")
            assert answer.status_code == 200, (probe, answer.text)
        metrics_path = _runtime()["spec"]["annotations"]["prometheus.kserve.io/path"]
        assert httpx.get(f"{server.url}{metrics_path}").status_code == 200
        assert httpx.get(f"{server.url}/v2/models/{ISVC_NAME}/ready").status_code == 200
        tensor = {"name": "x", "shape": [2, 2], "datatype": "FP32", "data": [1, 2, 3, 4]}
        body = {"inputs": [tensor]}
        answer = httpx.post(f"{server.url}/v2/models/{ISVC_NAME}/infer", json=body)
        assert answer.status_code == 200, answer.text
        assert answer.json()["model_name"] == ISVC_NAME
        [output] = answer.json()["outputs"]
        assert output["data"] == [2, 4, 6, 8]
        assert _grpc_health(f"127.0.0.1:{grpc_port}") == SERVING
