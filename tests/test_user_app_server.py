"""`loadonce serve pkg.module:app`: a user's own app (tests/apps/my_service.py, copied into a
directory of its own as a user's project would be) under loadonce's supervisor, and under
plain uvicorn."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx2 as httpx
import psutil
import pytest

from tests.servers import (
    REPO_ROOT,
    cli_env,
    free_port,
    run_cli,
    serving,
    start_cli,
    stop,
    wait_ready,
    wait_until,
)

APP_SOURCE = REPO_ROOT / "tests" / "apps" / "my_service.py"


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A directory holding the user's module, as their project would."""
    shutil.copy(APP_SOURCE, tmp_path / "my_service.py")
    return tmp_path


def _pids_answering(url: str, tries: int = 200) -> set[int]:
    """The worker pids that answer the app's own route, each request on a new connection (the
    kernel hands each to one of the workers)."""
    pids: set[int] = set()
    for _ in range(tries):
        answer = httpx.get(f"{url}/hello/3")
        assert answer.json()["doubled"] == 6.0
        assert answer.json()["greeting"] == "hello"  # the app's own lifespan ran
        pids.add(answer.json()["pid"])
        if len(pids) == 2:
            break
    return pids


def test_two_workers_serve_the_apps_routes_and_loadonces(project: Path) -> None:
    with serving(["my_service:app", "--workers", "2"], project) as server:
        assert len(_pids_answering(server.url)) == 2
        predicted = httpx.post(f"{server.url}/models/doubler/predict", json={"inputs": [1, 2]})
        assert predicted.json()["outputs"] == [2.0, 4.0]
        # Metrics count both workers.
        states = [
            line
            for line in httpx.get(f"{server.url}/metrics").text.splitlines()
            if line.startswith('loadonce_model_state{model="doubler"') and 'state="ready"' in line
        ]
        assert len(states) == 2, states
        assert all(line.endswith(" 1.0") for line in states)
        # A reload reaches both workers.
        reloaded = httpx.post(f"{server.url}/admin/models/doubler/reload", timeout=60).json()
        assert reloaded["ok"] is True
        assert len({worker["pid"] for worker in reloaded["workers"]}) == 2
        # So does an unload through the Open Inference Protocol's repository.
        assert httpx.post(f"{server.url}/v2/repository/models/doubler/unload").status_code == 200
        index = httpx.post(f"{server.url}/models/doubler/predict", json={"inputs": [1]})
        assert index.status_code == 503
        assert httpx.post(f"{server.url}/v2/repository/models/doubler/load").status_code == 200
    log = server.log()
    assert log.count("model 'doubler' version 1 loaded in worker pid") == 2


def test_a_containers_model_name_does_not_stop_an_app_a_typed_one_does(project: Path) -> None:
    """LOADONCE_MODEL_NAME (set in a container for a single artifact) made an app target an
    error blamed on --name: an app declares its models' own names, the variable is left
    out; typed, --name is the operator's mistake, one line."""
    env = cli_env(project, {"LOADONCE_MODEL_NAME": "churn"})
    with serving(["my_service:app"], project, env=env) as server:
        predicted = httpx.post(f"{server.url}/models/doubler/predict", json={"inputs": [1]})
        assert predicted.json()["outputs"] == [2.0]
    typed = run_cli(project, "serve", "my_service:app", "--name", "churn", cwd=project)
    assert typed.returncode == 2, typed.stderr
    assert "--name" in typed.stderr
    assert "Traceback" not in typed.stderr


def test_a_config_file_names_an_app_factory_beside_it(
    project: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    config = project / "loadonce.toml"
    config.write_text('app = "my_service:create"\nfactory = true\n\n[server]\nlog_level = "info"\n')
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    with serving([str(config)], elsewhere) as server:
        assert httpx.get(f"{server.url}/hello/1").json()["doubled"] == 2.0
        assert httpx.get(f"{server.url}/readyz").json()["models"] == {"doubler": "ready"}


def _startup_failure(project: Path, workers: str, env: dict[str, str]) -> list[str]:
    """The ERROR lines of a startup that must fail with status 3, without a traceback."""
    port = free_port()
    finished = run_cli(
        project,
        *("serve", "my_service:app", "--workers", workers, "--port", str(port)),
        cwd=project,
        env=env,
    )
    assert finished.returncode == 3, finished.stderr
    assert "Traceback" not in finished.stderr
    return [line for line in finished.stderr.splitlines() if line.startswith("ERROR")]


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_loader_that_raises_stops_startup_with_one_line(project: Path, workers: str) -> None:
    assert _startup_failure(project, workers, {"MY_SERVICE_BROKEN": "1"}) == [
        "ERROR:    [loadonce] startup failed: model 'doubler' failed to load from "
        "my_service:load_doubler: RuntimeError: the weights are corrupt"
    ]


@pytest.mark.parametrize(
    ("workers", "plan"), [("1", "true"), ("2", "true"), ("2", "false")], ids=str
)
def test_the_apps_own_failing_startup_is_said_as_such(
    project: Path, workers: str, plan: str
) -> None:
    """The memory plan starts the app as a worker would: a failure of the user's own
    lifespan there was blamed on the models ("a model's library crashed (a damaged or
    truncated artifact?)"), under a multiprocessing traceback. One worker (and several
    without the plan) logged the lifespan's whole traceback, then "failed to start (see the
    log above)": now the same one line (the traceback at debug level)."""
    env = {"MY_SERVICE_DATABASE_DOWN": "1", "LOADONCE_MEMORY_PLAN": plan}
    assert _startup_failure(project, workers, env) == [
        "ERROR:    [loadonce] startup failed: the app's startup failed: RuntimeError: "
        "database unreachable"
    ]


def test_accepting_connections_is_said_once_the_apps_own_startup_ran(project: Path) -> None:
    """It was logged when the models had loaded, before the app's own lifespan ran (which
    could take long, or fail, and nothing was accepted meanwhile)."""
    with serving(["my_service:app"], project) as server:
        assert httpx.get(f"{server.url}/hello/1").json()["greeting"] == "hello"
    log = server.log()
    accepting = log.index("all models loaded; accepting connections on ")
    assert log.index("my_service: own startup done") < accepting, log


def test_an_apps_lifespan_that_raises_at_shutdown_is_a_failed_exit(project: Path) -> None:
    """It exited 0, as if all had been closed."""
    env = cli_env(project, {"MY_SERVICE_POOL_CLOSE_FAILS": "1"})
    server = start_cli(["my_service:app"], project, env=env)
    try:
        wait_ready(server)
    finally:
        status = stop(server)
    assert status == 1, server.log()
    assert server.log().count("ERROR:    Application shutdown failed.") == 1


def test_an_apps_lifespan_that_raises_at_shutdown_fails_the_exit_with_two_workers(
    project: Path,
) -> None:
    """Each worker logged its failed shutdown, and the server still exited 0."""
    env = cli_env(project, {"MY_SERVICE_POOL_CLOSE_FAILS": "1", "LOADONCE_MEMORY_PLAN": "false"})
    server = start_cli(["my_service:app", "--workers", "2"], project, env=env)
    try:
        wait_ready(server)
        pids = _pids_answering(server.url)
    finally:
        status = stop(server)
    log = server.log()
    assert status == 1, log
    assert log.count("ERROR:    Application shutdown failed.") == 2, log
    said = re.findall(r"worker pid (\d+): the app's shutdown failed \(see the log above\)", log)
    assert {int(pid) for pid in said} == pids, log


def test_a_lifespan_blocking_past_the_heartbeat_timeout_is_waited_for(project: Path) -> None:
    """A synchronous migration in the app's own lifespan blocks each worker's loop, heartbeats
    included: the supervisor killed every worker after heartbeat_timeout_s, then each
    replacement, and the server never served. Heartbeats count once a worker started."""
    env = cli_env(
        project,
        {
            "MY_SERVICE_MIGRATION_S": "4",
            "LOADONCE_HEARTBEAT_TIMEOUT_S": "2",
            "LOADONCE_MEMORY_PLAN": "false",  # the plan would run the migration once more
        },
    )
    with serving(["my_service:app", "--workers", "2"], project, env=env) as server:
        assert len(_pids_answering(server.url)) == 2
        time.sleep(2.5)  # past the heartbeat timeout, serving: still the same two workers
        assert len(_pids_answering(server.url)) == 2
        log = server.log()
    assert "all 2 workers loaded and started; accepting connections" in log
    assert "sent no heartbeat" not in log
    assert "starting a replacement" not in log


@pytest.mark.parametrize(
    ("workers", "extra"),
    [
        # With one worker, startup_timeout_s did not apply: the server hung for good.
        ("1", {}),
        ("2", {"LOADONCE_MEMORY_PLAN": "false"}),  # the plan would run the migration too
    ],
)
def test_a_lifespan_that_never_finishes_stops_startup_with_one_line(
    project: Path, workers: str, extra: dict[str, str]
) -> None:
    env = {"MY_SERVICE_MIGRATION_S": "120", "LOADONCE_STARTUP_TIMEOUT_S": "1", **extra}
    started = time.monotonic()
    [line] = _startup_failure(project, workers, env)
    assert time.monotonic() - started < 60  # not the migration's 120 s, nor the stop's grace
    assert re.fullmatch(
        r"ERROR:    \[loadonce\] startup failed: worker pid \d+ loaded its models but did not "
        r"start serving within startup_timeout_s \(1 s\): the app's own lifespan startup did "
        r"not finish",
        line,
    ), line


def test_the_plan_reads_the_models_from_the_apps_lifespan_and_predicts_the_pss(
    project: Path,
) -> None:
    finished = run_cli(project, "plan", "my_service:app", "--workers", "2", cwd=project)
    assert finished.returncode == 0, finished.stderr
    assert finished.stdout.splitlines()[1].startswith("doubler ")
    total = re.search(r"2 workers x .* = ([\d,.]+) MiB", finished.stdout)
    assert total is not None, finished.stdout
    predicted = float(total.group(1).replace(",", ""))
    with serving(["my_service:app", "--workers", "2"], project) as server:
        assert len(_pids_answering(server.url)) == 2
        root = psutil.Process(server.process.pid)
        processes = [root, *root.children(recursive=True)]
        measured = sum(p.memory_full_info().pss for p in processes) / 2**20
    assert 0.9 * measured < predicted < 1.1 * measured, (predicted, measured, finished.stdout)


def test_an_app_without_loadonces_lifespan_is_a_usage_error(project: Path) -> None:
    (project / "plain.py").write_text("from fastapi import FastAPI\n\napp = FastAPI()\n")
    finished = run_cli(project, "serve", "plain:app", cwd=project)
    assert finished.returncode == 2
    assert "does not load its models with loadonce" in finished.stderr
    # A lifespan of the user's own goes in wrap=: the line says so.
    assert "wrap=" in finished.stderr


# The user's own lifespan enters loadonce's, to do work before the models load: it runs under
# uvicorn, and loadonce serve said the app "does not load its models with loadonce".
_COMPOSED = """
from contextlib import AsyncExitStack, asynccontextmanager

from fastapi import Depends, FastAPI

import loadonce
from my_service import DOUBLER, models

models_lifespan = loadonce.lifespan(models)


@asynccontextmanager
async def entered(app):
    app.state.greeting = "before the models"
    async with models_lifespan(app):
        yield


@asynccontextmanager
async def stacked(app):
    async with AsyncExitStack() as stack:
        app.state.greeting = "before the models"
        await stack.enter_async_context(models_lifespan(app))
        yield


app = FastAPI(lifespan={lifespan})


@app.get("/hello/{{x}}")
async def hello(x: float, model: loadonce.Model = Depends(DOUBLER)):
    [doubled] = await model.predict(x)
    return {{"greeting": app.state.greeting, "doubled": doubled}}
"""


@pytest.mark.parametrize("lifespan", ["entered", "stacked"])
def test_an_apps_lifespan_that_enters_loadonces_itself_is_served(
    project: Path, lifespan: str
) -> None:
    (project / "composed.py").write_text(_COMPOSED.format(lifespan=lifespan))
    with serving(["composed:app", "--workers", "2"], project) as server:
        answer = httpx.get(f"{server.url}/hello/3").json()
        assert (answer["doubled"], answer["greeting"]) == (6.0, "before the models")
        assert httpx.get(f"{server.url}/readyz").json()["models"] == {"doubler": "ready"}
        # The server's control reaches the models of every worker.
        reloaded = httpx.post(f"{server.url}/admin/models/doubler/reload", timeout=60).json()
        assert len({worker["pid"] for worker in reloaded["workers"]}) == 2


_MIXUPS = """
from fastapi import FastAPI
from starlette.applications import Starlette

import loadonce
from my_service import app as the_app, models


def make_app() -> FastAPI:
    return FastAPI(lifespan=loadonce.lifespan(models))


def broken_factory() -> FastAPI:
    raise RuntimeError("the factory broke")


starlette_app = Starlette()

# A sub-app's own lifespan never runs: its models and settings were dropped without a word.
mounts_its_own = FastAPI(lifespan=loadonce.lifespan(models))
mounts_its_own.mount("/sub", FastAPI(lifespan=loadonce.lifespan(models)))
"""


@pytest.mark.parametrize(
    ("args", "status", "said"),
    [
        # A factory taken for a model loader: it was "ready", and every predict a 500.
        (["mixups:make_app"], 3, "returned a web app (FastAPI), not a model"),
        (["mixups:broken_factory", "--factory"], 2, "raised RuntimeError: the factory broke"),
        (["mixups:the_app", "--factory"], 2, "is an app, not a factory"),
        (["mixups:starlette_app"], 2, "is a Starlette, not a FastAPI app"),
        (["no_such_module:app"], 2, "no module named 'no_such_module'"),
        (["mixups:mounts_its_own"], 2, "mounted at /sub has a loadonce.lifespan of its own"),
    ],
)
def test_an_app_or_factory_mixup_is_said_in_one_line(
    project: Path, args: list[str], status: int, said: str
) -> None:
    # A factory that raised, or an app given --factory, was a traceback (exit 1).
    (project / "mixups.py").write_text(_MIXUPS)
    finished = run_cli(project, "serve", *args, "--port", "0", cwd=project)
    assert finished.returncode == status, finished.stderr
    assert said in finished.stderr + finished.stdout
    assert "Traceback" not in finished.stderr


def test_under_plain_uvicorn_the_app_logs_each_models_load(project: Path) -> None:
    port = free_port()
    log_path = project / "uvicorn.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "my_service:app", "--port", str(port)],
            cwd=project,
            env=cli_env(project),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:

        def answers() -> bool:
            try:
                return httpx.get(f"http://127.0.0.1:{port}/hello/1").status_code == 200
            except httpx.TransportError:
                return False

        wait_until(answers, 60, "uvicorn serving the app")
    finally:
        process.terminate()
        process.wait(30)
    text = log_path.read_text()
    assert "[loadonce] model 'doubler' version 1 loaded in worker pid" in text, text
    assert "each worker process loads its own copy" in text


_SINGLE_PAGE_APP = """
from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

import loadonce
from my_service import models

app = FastAPI(lifespan=loadonce.lifespan(models))


@app.get("/livez")
async def own_livez() -> dict[str, str]:
    return {"mine": "alive"}


app.mount("/", StaticFiles(directory="site", html=True), name="site")
"""


def test_the_servers_routes_go_ahead_of_a_catch_all_mount(project: Path) -> None:
    """A single-page app's files mounted at "/" took every path: behind it, loadonce serve's
    /readyz and /metrics were 404s and a reload a 405 (Kubernetes' probes and `loadonce
    reload` failed without a word). A path the app serves itself stays the app's."""
    (project / "site").mkdir()
    (project / "site" / "index.html").write_text("<html>the app</html>")
    (project / "spa.py").write_text(_SINGLE_PAGE_APP)
    with serving(["spa:app"], project) as server:
        assert httpx.get(f"{server.url}/readyz").json()["models"] == {"doubler": "ready"}
        assert "loadonce_model_state" in httpx.get(f"{server.url}/metrics").text
        reloaded = httpx.post(f"{server.url}/admin/models/doubler/reload", timeout=60)
        assert reloaded.json()["ok"] is True
        assert httpx.get(f"{server.url}/livez").json() == {"mine": "alive"}
        assert httpx.get(f"{server.url}/").text == "<html>the app</html>"
    assert "the app's own route /livez is served there, not loadonce's" in server.log()
