"""Ray Serve: a local Ray (2 CPUs, no dashboard) serves the demo with 2 replicas, each of which
loads the model once; the same routes answer; the application shuts down cleanly."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx2 as httpx
import numpy as np
import psutil
import pytest
import ray
import tritonclient.http as triton
import yaml
from ray import serve

from loadonce.integrations.ray import RayOptions, ServeConfig, application, build
from loadonce.server.resolve import resolve_serve_config
from tests.servers import demo_cache, free_port, run_cli, start_cli, stop, wait_ready, wait_until

IRIS = [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]]

# The command-line tests come first: each starts and stops its own local Ray before the
# module's in-process Ray starts.
pytestmark = pytest.mark.timeout(300)


def test_cli_serves_on_a_local_ray_and_stops_on_sigterm(tmp_path: Path) -> None:
    """`loadonce serve --demo --ray`: ready when the replica loaded; SIGTERM exits 0."""
    port = free_port()
    server = start_cli(["--demo", "--ray", "--port", str(port)], tmp_path, port=port)
    try:
        wait_ready(server, timeout=180)
        answer = httpx.post(f"{server.url}/models/iris/predict", json={"inputs": IRIS})
        assert answer.json()["outputs"] == ["setosa", "virginica"]
        # Ray's deploy call returns a moment after the replica answers; a stop before that
        # deletes the application as it deploys (a stop waited for it, forever for a
        # replica Ray could not place).
        wait_until(
            lambda: "all replicas loaded" in server.log(), timeout=60, what="the deploy to end"
        )
    finally:
        status = stop(server, timeout=120)
    assert status == 0, server.log()
    assert "all replicas loaded; accepting connections" in server.log()


def test_cli_on_ray_fails_fast_with_the_model_s_one_line(tmp_path: Path) -> None:
    """A model that cannot load: the deployment fails after Ray's retries, and the command
    exits 3 with the model's one-line reason, not Ray's traceback."""
    broken = tmp_path / "broken.skops"
    broken.write_text("not a skops file")
    port = str(free_port())
    # One attempt instead of Ray's default three: each retry starts a replica process that
    # imports scikit-learn again (seconds), and the answer is the same.
    retries = {"RAY_SERVE_MAX_PER_REPLICA_RETRY_COUNT": "1"}
    done = run_cli(
        tmp_path, "serve", str(broken), "--ray", "--port", port, timeout=240, env=retries
    )
    assert done.returncode == 3, done.stdout + done.stderr
    assert f"startup failed: model 'broken' failed to load from {broken}" in done.stderr


def test_cli_refuses_workers_on_ray(tmp_path: Path) -> None:
    done = run_cli(tmp_path, "serve", "--demo", "--ray", "--workers", "2", timeout=120)
    assert done.returncode == 2
    assert "num_replicas" in done.stderr


@pytest.fixture(scope="module")
def local_ray(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """A local Ray with Serve's proxy on a free port; yields the port."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    port = free_port()
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        yield port
    finally:
        serve.shutdown()  # type: ignore[no-untyped-call]
        ray.shutdown()


def _demo_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, replicas: int) -> ServeConfig:
    monkeypatch.setenv("LOADONCE_CACHE_DIR", str(demo_cache(tmp_path)))
    config = resolve_serve_config(None, demo=True, trust=False, overrides={})
    return config.model_copy(update={"ray": RayOptions(num_replicas=replicas)})


def test_two_replicas_serve_the_demo_each_loading_it_once(
    local_ray: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = f"http://127.0.0.1:{local_ray}"
    serve.run(application(_demo_config(tmp_path, monkeypatch, 2)), name="demo", route_prefix="/")
    with httpx.Client(base_url=url, timeout=30) as client:
        answers = [client.post("/models/iris/predict", json={"inputs": IRIS}) for _ in range(100)]
        assert [a.status_code for a in answers] == [200] * 100
        assert {tuple(a.json()["outputs"]) for a in answers} == {("setosa", "virginica")}

        # Each replica loaded the model exactly once, and both served.
        seen = [client.get("/models").json() for _ in range(40)]
        loads = {body["worker_pid"]: body["models"][0]["load_count"] for body in seen}
        assert len(loads) == 2, loads
        assert set(loads.values()) == {1}

        assert client.get("/livez").status_code == 200
        assert client.get("/readyz").json()["ready"] is True
        assert 'loadonce_requests_total{model="iris"' in client.get("/metrics").text
        # A reload through one replica would leave the other on the old version: refused.
        refused = client.post("/admin/models/iris/reload", json={})
        assert refused.status_code == 501
        assert "redeploy" in refused.json()["error"]

    # The Open Inference Protocol, with Triton's own client, through Ray's proxy.
    triton_client = triton.InferenceServerClient(f"127.0.0.1:{local_ray}")
    assert triton_client.is_server_ready()
    tensor = triton.InferInput("input", [2, 4], "FP64")
    tensor.set_data_from_numpy(np.array(IRIS, dtype=np.float64))
    result = triton_client.infer("iris", [tensor])
    assert [label.decode() for label in result.as_numpy("label")] == ["setosa", "virginica"]

    # Ray's health check asks each replica's models; both healthy.
    status = serve.status().applications["demo"]
    assert status.status == "RUNNING"
    assert status.deployments["loadonce"].replica_states == {"RUNNING": 2}

    serve.delete("demo")
    assert "demo" not in serve.status().applications
    for pid in loads:
        # The replica's process is gone: psutil.wait_procs returns it as gone once it exits.
        _, alive = psutil.wait_procs(_processes(pid), timeout=30)
        assert not alive, f"replica pid {pid} still running"


def _processes(pid: int) -> list[psutil.Process]:
    try:
        return [psutil.Process(pid)]
    except psutil.NoSuchProcess:
        return []


def test_the_printed_serve_config_builds_the_same_application(
    local_ray: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`loadonce ray-config` names a builder and args that deploy the config's models, with
    the [ray] table's replicas and the drain timeout as Ray's graceful shutdown."""
    artifact = tmp_path / "iris.skops"
    config_file = tmp_path / "loadonce.toml"
    monkeypatch.setenv("LOADONCE_CACHE_DIR", str(demo_cache(tmp_path)))
    from loadonce.server.demo import demo_artifact

    artifact.write_bytes(demo_artifact().read_bytes())
    # A loader module beside the config file, as `loadonce serve` imports it: a replica does
    # not start with the driver's sys.path (it was importable in the driver only).
    beside = f"beside_{tmp_path.name.replace('-', '_')}"
    (tmp_path / f"{beside}.py").write_text(
        "def load():\n    return lambda batch: [2 * x for x in batch]\n"
    )
    config_file.write_text(
        '[server]\ndrain_timeout_s = 12\n\n[ray]\nname = "irises"\nnum_replicas = 1\n'
        'max_ongoing_requests = 64\n\n[[models]]\nname = "flowers"\nartifact = "iris.skops"\n'
        f'\n[[models]]\nname = "doubler"\nloader = "{beside}:load"\n'
    )
    printed = run_cli(tmp_path, "ray-config", str(config_file), "--host", "0.0.0.0", timeout=120)
    assert printed.returncode == 0, printed.stderr
    document = yaml.safe_load(printed.stdout)
    assert document["http_options"] == {"host": "0.0.0.0", "port": 8000}
    [app] = document["applications"]
    assert app["name"] == "irises"
    assert app["import_path"] == "loadonce.integrations.ray:build"
    assert app["args"] == {"config": str(config_file.resolve())}
    [deployment] = app["deployments"]
    assert deployment["num_replicas"] == 1
    assert deployment["max_ongoing_requests"] == 64
    assert deployment["graceful_shutdown_timeout_s"] == 12

    serve.run(build(app["args"]), name=app["name"], route_prefix="/irises")
    answer = httpx.post(
        f"http://127.0.0.1:{local_ray}/irises/models/flowers/predict",
        json={"inputs": IRIS},
        timeout=30,
    )
    assert answer.json()["outputs"] == ["setosa", "virginica"]
    doubled = httpx.post(
        f"http://127.0.0.1:{local_ray}/irises/models/doubler/predict",
        json={"inputs": [1, 2]},
        timeout=30,
    )
    assert doubled.json()["outputs"] == [2, 4]
    serve.delete(app["name"])
    with pytest.raises(Exception, match="unknown argument"):
        build({"config": str(config_file), "replicas": 3})
