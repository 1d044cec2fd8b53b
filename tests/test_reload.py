"""Reloading a model in a running server: every worker, no failed request, old version kept
when the new one cannot load."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx2 as httpx
import pytest

from tests.servers import REPO_ROOT, cli_env, serving

PREDICT = {"inputs": [0]}


def _write_config(
    tmp_path: Path,
    artifact: Path,
    *,
    sha256: str | None = None,
    loader: str = "tests.loaders:constant_from_file",
    workers: int = 2,
) -> Path:
    config = tmp_path / "loadonce.toml"
    pin = f'sha256 = "{sha256}"\n' if sha256 else ""
    config.write_text(
        f"""
[server]
workers = {workers}

[[models]]
name = "constant"
loader = "{loader}"
artifact = "{artifact}"
concurrency = "shared"
{pin}"""
    )
    return config


def _reload_cli(
    tmp_path: Path, url: str, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "loadonce", "reload", "constant", "--url", url, *args],
        env=cli_env(tmp_path, env),
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def _values_by_worker(url: str, requests: int = 40) -> dict[int, set[float]]:
    seen: dict[int, set[float]] = {}
    for _ in range(requests):
        # A new connection each time, so the kernel may hand it to either worker.
        [output] = httpx.post(f"{url}/models/constant/predict", json=PREDICT).json()["outputs"]
        seen.setdefault(output["pid"], set()).add(output["value"])
    return seen


def test_a_reload_under_load_reaches_every_worker_without_a_failed_request(
    tmp_path: Path,
) -> None:
    first, second = tmp_path / "one.txt", tmp_path / "two.txt"
    first.write_text("1")
    second.write_text("2")
    with serving([str(_write_config(tmp_path, first))], tmp_path, env=cli_env(tmp_path)) as server:
        assert {v for values in _values_by_worker(server.url).values() for v in values} == {1.0}
        statuses: Counter[int] = Counter()
        done = threading.Event()

        def keep_asking() -> None:
            with httpx.Client(base_url=server.url) as http:
                while not done.is_set():
                    statuses[http.post("/models/constant/predict", json=PREDICT).status_code] += 1

        askers = [threading.Thread(target=keep_asking) for _ in range(4)]
        for asker in askers:
            asker.start()
        try:
            result = _reload_cli(tmp_path, server.url, "--artifact", str(second), "--version", "2")
        finally:
            done.set()
            for asker in askers:
                asker.join()
        assert result.returncode == 0, result.stderr
        assert result.stdout.count("version 2 loaded") == 2, result.stdout
        assert set(statuses) == {200}, statuses
        assert statuses[200] > 20
        seen = _values_by_worker(server.url)
        assert len(seen) == 2, "both workers answered"
        assert all(values == {2.0} for values in seen.values()), seen
        # Whichever worker answers, /models lists every worker's version of the model.
        [model] = httpx.get(f"{server.url}/models").json()["models"]
        assert model["version"] == "2"
        assert {(w["pid"], w["version"], w["state"]) for w in model["workers"]} == {
            (pid, "2", "ready") for pid in seen
        }


def test_a_tampered_artifact_is_refused_and_the_loaded_version_serves_on(tmp_path: Path) -> None:
    artifact = tmp_path / "value.txt"
    artifact.write_text("1")
    digest = hashlib.sha256(b"1").hexdigest()
    config = _write_config(tmp_path, artifact, sha256=digest)
    with serving([str(config)], tmp_path, env=cli_env(tmp_path)) as server:
        artifact.write_text("666")  # tampered after startup
        result = _reload_cli(tmp_path, server.url)
        assert result.returncode == 1
        assert "sha256 mismatch" in result.stdout
        lines = result.stdout.splitlines()
        assert len(lines) == 2, result.stdout
        assert "the new version failed: " in lines[0]
        assert "sha256 mismatch" in lines[0]
        assert lines[1].endswith(": not tried (an earlier worker failed); version 1 serves")
        assert result.stderr.strip() == (
            "loadonce: model 'constant': the new version failed; version 1 goes on serving"
        )
        seen = _values_by_worker(server.url)
        assert all(values == {1.0} for values in seen.values()), seen
        models = httpx.get(f"{server.url}/models").json()["models"]
        assert models[0]["state"] == "ready"
        metrics = httpx.get(f"{server.url}/metrics").text
        failed = [
            line for line in metrics.splitlines() if line.startswith("loadonce_model_load_failed{")
        ]
        assert len(failed) == 2, "one series per worker"
        assert sum(float(line.split()[-1]) for line in failed) == 1, "the worker that tried"
    # At startup, the same tampered file keeps the server from starting at all.
    refused = subprocess.run(
        [sys.executable, "-m", "loadonce", "serve", str(config), "--port", "0"],
        env=cli_env(tmp_path),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert refused.returncode == 3
    assert "sha256 mismatch" in refused.stdout + refused.stderr


def test_the_cli_names_the_variable_it_reads_the_admin_key_from(tmp_path: Path) -> None:
    artifact = tmp_path / "value.txt"
    artifact.write_text("1")
    config = _write_config(tmp_path, artifact)
    key = "an-admin-key-of-32-characters-00"
    with serving(
        [str(config)], tmp_path, env=cli_env(tmp_path, {"LOADONCE_ADMIN_API_KEYS": key})
    ) as server:
        refused = _reload_cli(tmp_path, server.url)
        assert refused.returncode == 1
        assert refused.stderr.strip() == (
            "loadonce: reload failed (401): an API key is required: send it as 'Authorization: "
            "Bearer <key>' or 'X-API-Key: <key>' (this command sends the admin key it reads "
            "from LOADONCE_ADMIN_KEY)"
        )
        done = _reload_cli(tmp_path, server.url, env={"LOADONCE_ADMIN_KEY": key})
        assert done.returncode == 0, done.stderr
        assert done.stdout.splitlines()[-1] == "model 'constant' reloaded in 2 worker(s)"
        # Mistakes on the command line are usage errors (2), said before any request; a name
        # with a space or a slash is sent quoted (a space raised InvalidURL, a traceback).
        for args, said in (
            (["--sha256", "xyz"], "'xyz' is not a sha256"),
            (["--timeout", "0"], "--timeout"),
        ):
            mistaken = _reload_cli(tmp_path, server.url, *args)
            assert mistaken.returncode == 2, mistaken.stderr
            assert said in mistaken.stderr
        for name in ("a b", "a/b"):
            unknown = subprocess.run(
                [sys.executable, "-m", "loadonce", "reload", name, "--url", server.url],
                env=cli_env(tmp_path, {"LOADONCE_ADMIN_KEY": key}),
                capture_output=True,
                text=True,
                timeout=120,
            )
            assert unknown.returncode == 1
            assert unknown.stderr.startswith("loadonce: reload failed (404): "), unknown.stderr


def test_a_reload_failing_in_one_worker_leaves_every_worker_on_the_old_version(
    tmp_path: Path,
) -> None:
    """The first worker loaded the new version, the second failed: the first stayed on it
    for good (answers depended on the worker reached). It is brought back; then a reload sent
    while the server stops is a 503 at once (it waited out the whole drain, and held the
    shutdown with it)."""
    first, second = tmp_path / "one.txt", tmp_path / "two-fails-second.txt"
    first.write_text("1")
    second.write_text("2")
    config = _write_config(tmp_path, first, loader="tests.loaders:constant_failing_in_second_load")
    # Workers go on serving 2 s after SIGTERM (as behind a load balancer): the reload below
    # reaches one while it drains.
    env = cli_env(tmp_path, {"LOADONCE_STOP_DELAY_S": "2"})
    with serving([str(config)], tmp_path, env=env) as server:
        result = _reload_cli(tmp_path, server.url, "--artifact", str(second), "--version", "2")
        assert result.returncode == 1, result.stdout + result.stderr
        # The first worker had switched; it says what it serves after the call.
        assert "version 2 loaded, then switched back" in result.stdout, result.stdout
        assert "(version 1)" in result.stdout
        seen = _values_by_worker(server.url)
        assert len(seen) == 2, "both workers answered"
        assert all(values == {1.0} for values in seen.values()), seen
        [model] = httpx.get(f"{server.url}/models").json()["models"]
        assert {(w["version"], w["state"]) for w in model["workers"]} == {("1", "ready")}
        assert "restoring 1 worker(s)" in server.log()

        server.process.send_signal(signal.SIGTERM)
        started = time.monotonic()
        stopping = _reload_cli(tmp_path, server.url, "--version", "3")
        assert time.monotonic() - started < 10, "answered at once, not after the drain"
        assert stopping.returncode == 1, stopping.stderr
        assert "reload failed (503): the server is stopping" in stopping.stderr
        server.process.wait(timeout=20)  # the drain is 30 s: it was not held


def test_an_artifact_replaced_between_two_workers_loads_fails_the_reload(tmp_path: Path) -> None:
    """A rolling reload reads the file once per worker: one replaced after the first worker
    loaded it (a deploy copying the next version in) was loaded by the next worker as it
    then was, and both served their own bytes as version 2. Every worker must load what the
    first one did; else the round fails and the first goes back to version 1."""
    first, second = tmp_path / "one.txt", tmp_path / "two.txt"
    first.write_text("1")
    second.write_text("2")
    config = tmp_path / "loadonce.toml"
    config.write_text(
        f"""
[server]
workers = 2

[[models]]
name = "constant"
loader = "tests.loaders:constant_slowly_from_file"
artifact = "{first}"
concurrency = "shared"
warmup = [0]
"""
    )
    with serving([str(config)], tmp_path, env=cli_env(tmp_path)) as server:
        # Each warm-up now takes 3 s: the first worker has read the file, and is warming up,
        # when the file is replaced.
        (tmp_path / "calls-are-slow").touch()
        results: list[subprocess.CompletedProcess[str]] = []
        reloading = threading.Thread(
            target=lambda: results.append(
                _reload_cli(tmp_path, server.url, "--artifact", str(second), "--version", "2")
            )
        )
        reloading.start()
        deadline = time.monotonic() + 30
        while "version 2 loading" not in server.log() and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(1)
        replacement = tmp_path / "two.new"
        replacement.write_text("3")
        os.replace(replacement, second)
        reloading.join(60)
        (tmp_path / "calls-are-slow").unlink()
        [result] = results
        assert result.returncode == 1, result.stdout + result.stderr
        assert "changed on disk since worker pid" in result.stdout + result.stderr
        seen = _values_by_worker(server.url)
        assert len(seen) == 2, "both workers answered"
        assert all(values == {1.0} for values in seen.values()), seen


def test_a_failed_reload_is_said_truthfully_by_every_worker(tmp_path: Path) -> None:
    """A reload failing in the first worker (the second not tried), then one failing in the
    second (the first switched back): the failure showed only in the worker that tried it
    (/models, the repository index: the other said "no error"), the answer's line did not say
    what the workers not tried serve, and the log said "see the workers' log lines", which
    the worker not tried never wrote. Every worker now says each worker's part, without
    server paths to clients; the log says it in one line."""
    first, bad = tmp_path / "one.txt", tmp_path / "bad.txt"
    second = tmp_path / "two-fails-second.txt"
    first.write_text("1")
    bad.write_text("not a number")
    second.write_text("2")
    config = _write_config(tmp_path, first, loader="tests.loaders:constant_failing_in_second_load")
    with serving([str(config)], tmp_path, env=cli_env(tmp_path)) as server:
        [model] = httpx.get(f"{server.url}/models").json()["models"]
        one, two = sorted(w["pid"] for w in model["workers"])
        for artifact, tried, then in ((bad, one, two), (second, two, one)):
            body = {"artifact": str(artifact), "version": "2"}
            answer = httpx.post(f"{server.url}/admin/models/constant/reload", json=body)
            assert answer.status_code == 400, answer.text
            error = answer.json()["error"]
            # Both workers, what each serves, the one that failed with its reason (and path:
            # this is an admin's answer).
            assert f"worker pid {one}, serving version 1: " in error, error
            assert f"worker pid {two}, serving version 1: " in error, error
            assert f"worker pid {tried}, serving version 1: model 'constant' failed" in error
            assert str(artifact) in error
            said = {}
            for _ in range(40):
                with httpx.Client(base_url=server.url) as client:
                    page = client.get("/models/constant").json()
                    index = client.post("/v2/repository/index").json()
                said[page["worker_pid"]] = (page["error"], index[0]["reason"])
            assert set(said) == {one, two}
            for shown, reason in said.values():
                assert shown == reason
                assert shown.startswith("the last load of model 'constant' (version 2) failed")
                assert f"worker pid {tried}, serving version 1: model 'constant' failed" in shown
                assert f"worker pid {then}, serving version 1: " in shown
                assert str(tmp_path) not in shown
                assert "<path>" in shown
        log = server.log()
        assert "see the workers' log lines" not in log
        lines = [line for line in log.splitlines() if "workers FAILED" in line]
        assert len(lines) == 2, log
        assert all(f"worker pid {one}" in line and f"worker pid {two}" in line for line in lines)
        assert "not tried, an earlier worker failed" in lines[0]
        assert f"worker pid {two}: model 'constant' failed to load" in log


def test_a_reload_longer_than_the_commands_timeout_says_it_may_still_run(tmp_path: Path) -> None:
    """The server was reached and the reload goes on: the command said "cannot reach" and
    exited 2 (the server cannot be reached) while the reload completed."""
    first, slow = tmp_path / "one.txt", tmp_path / "slow.txt"
    first.write_text("1")
    slow.write_text("hang")  # 4 s to load (constant_or_hang), then refused as no number
    config = _write_config(tmp_path, first, loader="tests.loaders:constant_or_hang")
    with serving([str(config)], tmp_path, env=cli_env(tmp_path)) as server:
        result = _reload_cli(tmp_path, server.url, "--artifact", str(slow), "--timeout", "1")
    assert result.returncode == 1, result.stderr
    assert "no answer from" in result.stderr
    assert "the reload may still be running" in result.stderr


def test_reloads_keep_the_operators_artifact_directories(tmp_path: Path) -> None:
    """With artifact_roots unset, the directories of the configured artifacts: after a
    reload to a subdirectory, a reload back to the first directory stopped the whole server
    (the supervisor took the reloaded artifact's directory as the only one), and a
    replacement worker refused it too."""
    home = tmp_path / "r"
    (home / "sub").mkdir(parents=True)
    first, second, third, fourth = (
        home / "one.txt",
        home / "sub" / "two.txt",
        home / "three.txt",
        home / "four.txt",
    )
    for number, path in enumerate((first, second, third, fourth), start=1):
        path.write_text(str(number))
    with serving([str(_write_config(tmp_path, first))], tmp_path, env=cli_env(tmp_path)) as server:
        for version, artifact in (("2", second), ("3", third)):
            result = _reload_cli(
                tmp_path, server.url, "--artifact", str(artifact), "--version", version
            )
            assert result.returncode == 0, result.stdout + result.stderr
        seen = _values_by_worker(server.url)
        assert all(values == {3.0} for values in seen.values()), seen
        # A replacement worker starts from what the others serve, under the same roots.
        dead = next(iter(seen))
        subprocess.run(["kill", "-9", str(dead)], check=True)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            [model] = httpx.get(f"{server.url}/models").json()["models"]
            pids = {worker["pid"] for worker in model["workers"] if worker["state"] == "ready"}
            if len(pids) == 2 and dead not in pids:
                break
            time.sleep(0.2)
        else:
            raise AssertionError("no replacement worker served")
        result = _reload_cli(tmp_path, server.url, "--artifact", str(fourth), "--version", "4")
        assert result.returncode == 0, result.stdout + result.stderr
        assert result.stdout.count("version 4 loaded") == 2, result.stdout
        seen = _values_by_worker(server.url)
        assert len(seen) == 2, seen
        assert all(values == {4.0} for values in seen.values()), seen


def test_a_reload_longer_than_the_heartbeat_timeout_kills_no_worker(tmp_path: Path) -> None:
    """While the supervisor waited on one worker's reload, the other's heartbeats stayed
    unread in its pipe: right after a reload longer than heartbeat_timeout_s, that healthy
    worker was killed as silent, and its requests were dropped."""
    first, second = tmp_path / "one.txt", tmp_path / "slow-two.txt"
    first.write_text("1")
    second.write_text("2")
    config = _write_config(tmp_path, first, loader="tests.loaders:constant_slowly_from_file")
    env = cli_env(tmp_path, {"LOADONCE_HEARTBEAT_TIMEOUT_S": "3"})
    with serving([str(config)], tmp_path, env=env) as server:
        before = set(_values_by_worker(server.url))
        result = _reload_cli(tmp_path, server.url, "--artifact", str(second), "--version", "2")
        assert result.returncode == 0, result.stdout + result.stderr
        time.sleep(2)  # the supervisor's next checks
        seen = _values_by_worker(server.url)
        assert set(seen) == before, (before, seen)
        assert all(values == {2.0} for values in seen.values()), seen
        assert "sent no heartbeat" not in server.log()


def test_a_reload_cut_short_by_a_worker_dying_is_a_503_and_undone(tmp_path: Path) -> None:
    """The other worker died while the first loaded the new version: the answer was a 400
    "the worker exited" (a failed load), and it said the first worker served version 2,
    which it no longer did once switched back."""
    first_artifact, second = tmp_path / "one.txt", tmp_path / "slow-two.txt"
    first_artifact.write_text("1")
    second.write_text("2")
    config = _write_config(
        tmp_path, first_artifact, loader="tests.loaders:constant_slowly_from_file"
    )
    with serving([str(config)], tmp_path, env=cli_env(tmp_path)) as server:
        client, first, other = _client_of_the_first_worker(server.url)
        answers: list[httpx.Response] = []
        body = {"artifact": str(second), "version": "2"}
        reloading = threading.Thread(
            target=lambda: answers.append(client.post("/admin/models/constant/reload", json=body))
        )
        reloading.start()
        _when_reloading(server.url, first)
        subprocess.run(["kill", "-9", str(other)], check=True)
        reloading.join(timeout=60)
        client.close()
        assert answers[0].status_code == 503, answers[0].text
        assert "try again" in answers[0].json()["error"]
        # Every worker, the replacement included, serves the version before the request.
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            seen = _values_by_worker(server.url)
            if len(seen) == 2 and other not in seen:
                break
            time.sleep(0.5)
        assert all(values == {1.0} for values in seen.values()), seen


def _client_of_the_first_worker(url: str) -> tuple[httpx.Client, int, int]:
    """A client whose connection reached the worker the supervisor applies requests to
    first (started first: the lower pid), that worker's pid and the other's."""
    [model] = httpx.get(f"{url}/models").json()["models"]
    first, other = sorted(w["pid"] for w in model["workers"])
    return _client_reaching(url, first), first, other


def _client_reaching(url: str, pid: int) -> httpx.Client:
    """A client whose connection reached the worker ``pid``."""
    for _ in range(100):
        client = httpx.Client(base_url=url, timeout=60)
        if client.get("/readyz").json()["worker_pid"] == pid:
            return client
        client.close()
    raise AssertionError(f"no connection reached worker pid {pid}")


def _when_reloading(url: str, pid: int) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        [model] = httpx.get(f"{url}/models").json()["models"]
        if {w["pid"]: w["state"] for w in model["workers"]}.get(pid) == "reloading":
            return
        time.sleep(0.05)
    raise AssertionError(f"worker pid {pid} never reloading")


def _batch_sizes_by_worker(url: str, dead: int) -> dict[int, int]:
    """Each serving worker's max_batch_size of the model, once the replacement serves."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        [model] = httpx.get(f"{url}/models").json()["models"]
        ready = {w["pid"] for w in model["workers"] if w["state"] == "ready"}
        if len(ready) == 2 and dead not in ready:
            break
        time.sleep(0.2)
    return {pid: config["max_batch_size"] for pid, config in _configs_by_worker(url).items()}


def _configs_by_worker(url: str) -> dict[int, dict[str, Any]]:
    """Each worker's configuration of the model (GET /v2/models/constant/config)."""
    configs: dict[int, dict[str, Any]] = {}
    for _ in range(40):  # new connections: either worker
        with httpx.Client(base_url=url) as client:
            pid = client.get("/readyz").json()["worker_pid"]
            configs.setdefault(pid, client.get("/v2/models/constant/config").json())
    return configs


def test_a_config_load_cut_short_switches_the_batching_back_too(tmp_path: Path) -> None:
    """A repository load with a config (max_batch_size 8) cut short by a worker's death: the
    worker switched back kept max_batch_size 8 (the switch back said nothing of a batching
    the spec never declared), its replacement had the runtime's default."""
    artifact = tmp_path / "one.txt"
    artifact.write_text("1")
    config = _write_config(tmp_path, artifact, loader="tests.loaders:constant_slowly_from_file")
    with serving([str(config)], tmp_path, env=cli_env(tmp_path)) as server:
        declared = httpx.get(f"{server.url}/v2/models/constant/config").json()["max_batch_size"]
        (tmp_path / "loads-are-slow").write_text("")
        client, first, other = _client_of_the_first_worker(server.url)
        answers: list[httpx.Response] = []
        body = {"parameters": {"config": json.dumps({"max_batch_size": declared + 7})}}
        loading = threading.Thread(
            target=lambda: answers.append(
                client.post("/v2/repository/models/constant/load", json=body)
            )
        )
        loading.start()
        # The first worker loads it; the other dies before its turn: the first switches back.
        _when_reloading(server.url, first)
        subprocess.run(["kill", "-9", str(other)], check=True)
        dead = other
        loading.join(timeout=60)
        client.close()
        assert answers[0].status_code == 503, answers[0].text
        (tmp_path / "loads-are-slow").unlink()
        sizes = _batch_sizes_by_worker(server.url, dead)
        assert set(sizes.values()) == {declared}, (declared, sizes)


def test_a_load_without_config_goes_back_to_the_declared_batching_in_every_worker(
    tmp_path: Path,
) -> None:
    """A repository load's config (max_batch_size) lasted for good: every later plain load
    kept it, and a worker started after it took it as its declaration. A load without
    config loads the declared batching, here through a worker started after the change."""
    artifact = tmp_path / "one.txt"
    artifact.write_text("1")
    with serving(
        [str(_write_config(tmp_path, artifact))], tmp_path, env=cli_env(tmp_path)
    ) as server:
        declared = httpx.get(f"{server.url}/v2/models/constant/config").json()["max_batch_size"]
        body = {"parameters": {"config": json.dumps({"max_batch_size": declared + 7})}}
        changed = httpx.post(f"{server.url}/v2/repository/models/constant/load", json=body)
        assert changed.status_code == 200, changed.text
        unused, first, other = _client_of_the_first_worker(server.url)
        unused.close()
        subprocess.run(["kill", "-9", str(other)], check=True)
        sizes = _batch_sizes_by_worker(server.url, other)
        assert set(sizes.values()) == {declared + 7}, sizes  # the replacement serves the change
        [replacement] = set(sizes) - {first}
        client = _client_reaching(server.url, replacement)
        plain = client.post("/v2/repository/models/constant/load")
        client.close()
        assert plain.status_code == 200, plain.text
        sizes = _batch_sizes_by_worker(server.url, other)
        assert set(sizes.values()) == {declared}, (declared, sizes)


def test_a_config_load_starts_from_the_declaration_in_every_worker(tmp_path: Path) -> None:
    """Each repository load is the declared configuration plus its own config: a load that set
    max_batch_size alone kept the delay an earlier load set. A worker started after the
    first load started from the changed spec as its declaration, so a load it received kept
    the delay in every worker."""
    artifact = tmp_path / "one.txt"
    artifact.write_text("1")
    with serving(
        [str(_write_config(tmp_path, artifact))], tmp_path, env=cli_env(tmp_path)
    ) as server:
        declared = httpx.get(f"{server.url}/v2/models/constant/config").json()
        delay = {"max_queue_delay_microseconds": 5000}
        first = {"max_batch_size": declared["max_batch_size"] + 7, "dynamic_batching": delay}
        body = {"parameters": {"config": json.dumps(first)}}
        changed = httpx.post(f"{server.url}/v2/repository/models/constant/load", json=body)
        assert changed.status_code == 200, changed.text
        unused, _, other = _client_of_the_first_worker(server.url)
        unused.close()
        subprocess.run(["kill", "-9", str(other)], check=True)
        _batch_sizes_by_worker(server.url, other)  # once the replacement serves
        replacement = next(p for p in _configs_by_worker(server.url) if p != other)
        client = _client_reaching(server.url, replacement)
        second = {"max_batch_size": declared["max_batch_size"] + 3}
        body = {"parameters": {"config": json.dumps(second)}}
        again = client.post("/v2/repository/models/constant/load", json=body)
        client.close()
        assert again.status_code == 200, again.text
        configs = _configs_by_worker(server.url)
        assert len(configs) == 2
        # The model declares no batching: the delay is the batching table's default, 0.
        assert {
            (c["max_batch_size"], c["dynamic_batching"]["max_queue_delay_microseconds"])
            for c in configs.values()
        } == {(second["max_batch_size"], 0)}, configs


def test_an_unload_cut_short_leaves_every_worker_serving(tmp_path: Path) -> None:
    """The first worker unloaded the model, the other died before its turn: the first stayed
    unloaded and the replacement loaded it, for good (answers depended on the worker)."""
    first_artifact = tmp_path / "one.txt"
    first_artifact.write_text("1")
    config = _write_config(
        tmp_path, first_artifact, loader="tests.loaders:constant_slowly_from_file"
    )
    with serving([str(config)], tmp_path, env=cli_env(tmp_path)) as server:
        client, first, other = _client_of_the_first_worker(server.url)
        (tmp_path / "calls-are-slow").write_text("")
        # A call in flight in the first worker: its unload waits for it (3 s).
        busy = threading.Thread(
            target=lambda: client.post("/models/constant/predict", json=PREDICT)
        )
        busy.start()
        time.sleep(0.5)
        unloader, reached, _ = _client_of_the_first_worker(server.url)
        answers: list[httpx.Response] = []
        unloading = threading.Thread(
            target=lambda: answers.append(unloader.post("/v2/repository/models/constant/unload"))
        )
        unloading.start()
        time.sleep(1)
        subprocess.run(["kill", "-9", str(other)], check=True)
        unloading.join(timeout=60)
        busy.join(timeout=60)
        client.close()
        unloader.close()
        (tmp_path / "calls-are-slow").unlink()
        assert reached == first
        assert answers[0].status_code == 503, answers[0].text
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            [model] = httpx.get(f"{server.url}/models").json()["models"]
            states = {w["pid"]: w["state"] for w in model["workers"]}
            if len(states) == 2 and other not in states and set(states.values()) == {"ready"}:
                break
            time.sleep(0.2)
        else:
            raise AssertionError(f"the workers disagree: {states}")


def test_a_worker_stopped_while_it_reloads_does_not_wait_for_the_load(tmp_path: Path) -> None:
    """SIGTERM to a worker loading a new version for the supervisor: it exited only once
    the load ended (up to load_timeout_s), whatever drain_timeout_s said. The load is
    abandoned; the worker stops at once, and the reload is answered 503 (try again)."""
    artifact = tmp_path / "one.txt"
    artifact.write_text("1")
    config = _write_config(tmp_path, artifact, loader="tests.loaders:constant_slowly_from_file")
    env = cli_env(tmp_path, {"LOADONCE_STOP_DELAY_S": "0"})
    with serving([str(config)], tmp_path, env=env) as server:
        client, first, other = _client_of_the_first_worker(server.url)
        client.close()
        (tmp_path / "loads-are-slow").write_text("20")
        answers: list[httpx.Response] = []
        # Asked through the other worker, which stays up to answer.
        via = _client_reaching(server.url, other)
        try:
            reloading = threading.Thread(
                target=lambda: answers.append(via.post("/admin/models/constant/reload"))
            )
            reloading.start()
            _when_reloading(server.url, first)
            stopped = time.monotonic()
            subprocess.run(["kill", "-TERM", str(first)], check=True)
            while Path(f"/proc/{first}").exists() and time.monotonic() - stopped < 30:
                time.sleep(0.05)
            took = time.monotonic() - stopped
            reloading.join(timeout=60)
        finally:
            via.close()
        (tmp_path / "loads-are-slow").unlink()
        assert took < 8, f"the worker took {took:.1f} s to stop (the load: 20 s)"
        assert answers[0].status_code == 503, answers[0].text


def _model_states_settled(url: str, within: float) -> set[str]:
    """The states /readyz gives the model over six reads (answered by any worker), once they
    agree on "ready" or ``within`` seconds passed: a worker puts back the state of a load it
    abandoned when the cancellation reaches it, which takes a moment under load (it said
    "reloading" until the process exited, before)."""
    deadline = time.monotonic() + within
    while True:
        states = {httpx.get(f"{url}/readyz").json()["models"]["constant"] for _ in range(6)}
        if states == {"ready"} or time.monotonic() > deadline:
            return states
        time.sleep(0.05)


@pytest.mark.parametrize("workers", [1, 2])
def test_a_stopping_server_refuses_control_requests_and_abandons_the_load_it_applies(
    tmp_path: Path, workers: int
) -> None:
    """With one worker, a reload sent during the drain was applied, and one in flight held
    the stop for its whole load (up to load_timeout_s); with several, both were 503 at once.
    Now alike: 503 (try again), the loaded version serving what was accepted."""
    artifact = tmp_path / "one.txt"
    artifact.write_text("1")
    loader = "tests.loaders:constant_slowly_from_file"
    config = _write_config(tmp_path, artifact, loader=loader, workers=workers)
    env = cli_env(tmp_path, {"LOADONCE_STOP_DELAY_S": "5"})
    reload_url = "/admin/models/constant/reload"
    with serving([str(config)], tmp_path, env=env) as server:
        (tmp_path / "loads-are-slow").write_text("20")
        answers: list[httpx.Response] = []
        in_flight = threading.Thread(
            target=lambda: answers.append(httpx.post(server.url + reload_url, timeout=60))
        )
        in_flight.start()
        [model] = httpx.get(f"{server.url}/models").json()["models"]
        first = min(w["pid"] for w in model["workers"])  # the one a reload reaches first
        _when_reloading(server.url, first)
        stopped = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        while httpx.get(f"{server.url}/readyz").status_code != 503:
            time.sleep(0.02)
        refused = httpx.post(server.url + reload_url, json={"version": "2"}, timeout=10)
        in_flight.join(timeout=10)
        states = _model_states_settled(server.url, within=2.5)
        server.process.wait(timeout=30)
        took = time.monotonic() - stopped
    assert refused.status_code == 503, refused.text
    assert "the server is stopping; try again" in refused.json()["error"]
    assert [a.status_code for a in answers] == [503], [a.text for a in answers]
    assert states == {"ready"}, "the abandoned reload left the loaded version serving"
    assert took < 12, f"the server took {took:.1f} s to stop (the load: 20 s)"
