"""The Dockerfile and the Kubernetes manifests agree with what the server really serves: their
ports, commands, probes, grace period and memory, checked against a running server and
against `loadonce plan` and `loadonce ray-config`."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import httpx2 as httpx
import pytest
import ray
import yaml

from loadonce.server.demo import demo_artifact
from loadonce.server.settings import ServerOptions
from loadonce.server.supervisor import UNLOAD_GRACE_SECONDS
from tests.servers import REPO_ROOT, demo_cache, free_port, run_cli, serving

DEPLOY = REPO_ROOT / "deploy" / "kubernetes"
_MEMORY_UNITS = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30}


def _documents(name: str) -> dict[str, dict[str, Any]]:
    with (DEPLOY / name).open() as stream:
        return {doc["kind"]: doc for doc in yaml.safe_load_all(stream)}


def _container(deployment: dict[str, Any]) -> dict[str, Any]:
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    assert isinstance(container, dict)
    return container


def _option(args: list[str], flag: str) -> str:
    return args[args.index(flag) + 1]


def _bytes(quantity: str) -> int:
    match = re.fullmatch(r"(\d+)(Ki|Mi|Gi)", quantity)
    assert match, quantity
    return int(match.group(1)) * _MEMORY_UNITS[match.group(2)]


@pytest.fixture
def local_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The ConfigMap's loadonce.toml, its artifact replaced by a model built here."""
    configmap = _documents("loadonce.yaml")["ConfigMap"]
    text = configmap["data"]["loadonce.toml"]
    assert "/models/iris.skops" in text
    monkeypatch.setenv("LOADONCE_CACHE_DIR", str(demo_cache(tmp_path)))
    artifact = demo_artifact()
    config = tmp_path / "loadonce.toml"
    config.write_text(text.replace("/models/iris.skops", str(artifact)))
    return config


def test_the_deployment_probes_what_the_server_serves(tmp_path: Path, local_config: Path) -> None:
    deployment = _documents("loadonce.yaml")["Deployment"]
    container = _container(deployment)
    args = container["args"]
    assert args[:2] == ["serve", "/etc/loadonce/loadonce.toml"]
    [port] = container["ports"]
    assert port["containerPort"] == int(_option(args, "--port"))
    assert _option(args, "--host") == "0.0.0.0"
    probes = {kind: container[kind] for kind in ("startupProbe", "readinessProbe", "livenessProbe")}
    for probe in probes.values():
        assert probe["httpGet"]["port"] in (port["name"], port["containerPort"])
    assert probes["startupProbe"]["httpGet"]["path"] == "/readyz"
    assert probes["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert probes["livenessProbe"]["httpGet"]["path"] == "/livez"
    # Slow loads: the startup probe waits minutes before the kubelet gives up.
    startup = probes["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 300

    # The same command, on this machine: every probe's path answers 200 once it is ready.
    local_args = [str(local_config), *args[2:]]
    local_args[local_args.index("0.0.0.0")] = "127.0.0.1"
    local_args[local_args.index("--port") + 1] = str(free_port())
    port_here = int(_option(local_args, "--port"))
    with serving(local_args, tmp_path, port=port_here) as server:
        for probe in probes.values():
            answer = httpx.get(f"{server.url}{probe['httpGet']['path']}")
            assert answer.status_code == 200, (probe, answer.text)
        assert len(httpx.get(f"{server.url}/models").json()["models"][0]["workers"]) == 2


def test_the_grace_period_covers_the_drain(local_config: Path) -> None:
    spec = _documents("loadonce.yaml")["Deployment"]["spec"]["template"]["spec"]
    server = ServerOptions.model_validate(tomllib.loads(local_config.read_text())["server"])
    pause = _container({"spec": {"template": {"spec": spec}}})["lifecycle"]["preStop"]["sleep"]
    needed = pause["seconds"] + server.stop_delay_s + server.drain_timeout_s + UNLOAD_GRACE_SECONDS
    assert spec["terminationGracePeriodSeconds"] >= needed


def test_the_memory_request_holds_what_the_plan_predicts(
    tmp_path: Path, local_config: Path
) -> None:
    resources = _container(_documents("loadonce.yaml")["Deployment"])["resources"]
    planned = run_cli(tmp_path, "plan", str(local_config))
    assert planned.returncode == 0, planned.stderr
    match = re.search(r"= ([\d,.]+) MiB\n", planned.stdout)
    assert match, planned.stdout
    total = float(match.group(1).replace(",", "")) * 2**20
    assert "2 workers x" in planned.stdout  # the plan read the ConfigMap's worker count
    assert _bytes(resources["requests"]["memory"]) >= total, planned.stdout
    assert _bytes(resources["limits"]["memory"]) >= _bytes(resources["requests"]["memory"])


def test_the_dockerfile_runs_the_same_server_as_a_non_root_user() -> None:
    text = (REPO_ROOT / "Dockerfile").read_text()
    instructions = [
        line for line in text.replace("\\\n", " ").splitlines() if line and line[0] != "#"
    ]

    def arguments(keyword: str) -> list[str]:
        return [line.split(None, 1)[1] for line in instructions if line.startswith(keyword)]

    assert len(arguments("FROM ")) >= 2, "multi-stage: the final image holds no build tools"
    [user] = arguments("USER ")
    assert user.strip() not in ("root", "0")
    [exposed] = arguments("EXPOSE ")
    [entrypoint] = arguments("ENTRYPOINT ")
    [command] = arguments("CMD ")
    command_args = yaml.safe_load(command)
    assert yaml.safe_load(entrypoint) == ["loadonce"]
    assert int(exposed) == int(_option(command_args, "--port"))
    # The image's command is the Deployment's: one config path, one port.
    container = _container(_documents("loadonce.yaml")["Deployment"])
    assert command_args == container["args"]
    [healthcheck] = arguments("HEALTHCHECK ")
    assert f"127.0.0.1:{exposed}/readyz" in healthcheck
    # Every option the command passes exists in `loadonce serve`.
    help_text = subprocess.run(
        [sys.executable, "-m", "loadonce", "serve", "--help"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    for word in command_args:
        if word.startswith("--"):
            assert word in help_text, word
    # The project's console script is the entrypoint's name.
    pyproject = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    assert "loadonce" in pyproject["project"]["scripts"]


def test_the_rayservice_deploys_what_ray_config_prints(tmp_path: Path) -> None:
    documents = _documents("rayservice.yaml")
    config = tmp_path / "loadonce.toml"
    config.write_text(documents["ConfigMap"]["data"]["loadonce.toml"])
    printed = run_cli(
        tmp_path,
        "ray-config",
        str(config),
        "--path-on-cluster",
        "/etc/loadonce/loadonce.toml",
        "--host",
        "0.0.0.0",
    )
    assert printed.returncode == 0, printed.stderr
    service = documents["RayService"]["spec"]
    assert yaml.safe_load(service["serveConfigV2"]) == yaml.safe_load(printed.stdout)
    cluster = service["rayClusterConfig"]
    assert cluster["rayVersion"] == ray.__version__, "the image's Ray is the one tested here"
    head = cluster["headGroupSpec"]["template"]["spec"]
    mounts = {m["mountPath"] for c in head["containers"] for m in c["volumeMounts"]}
    assert "/etc/loadonce" in mounts
    serve_ports = [p for c in head["containers"] for p in c["ports"] if p["name"] == "serve"]
    assert serve_ports[0]["containerPort"] == yaml.safe_load(printed.stdout)["http_options"]["port"]
    dockerfile = (DEPLOY / "Dockerfile.ray").read_text()
    assert f"rayproject/ray:{ray.__version__}-py311" in dockerfile
