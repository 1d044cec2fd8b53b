"""Control requests (reload, repository load) cannot run code, name a file the operator did
not allow, wedge a model, or be sent by a web page; inference answers show no server path."""

from __future__ import annotations

import hashlib
import os
import pickle
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx2 as httpx
import joblib
import pytest
import skops.io
from fastapi.testclient import TestClient
from sklearn.linear_model import LogisticRegression

import loadonce
from tests.servers import ThreadedServer


class _RunsCodeWhenUnpickled:
    """A pickle that makes a directory when loaded: proof that the pickle's code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return os.mkdir, (str(self.marker),)


@dataclass
class Setup:
    server: ThreadedServer
    models: Path
    outside: Path
    marker: Path

    def reload(self, name: str, body: dict[str, str], **headers: str) -> httpx.Response:
        url = f"{self.server.url}/admin/models/{name}/reload"
        return httpx.post(url, json=body, headers=headers, timeout=30)


def _estimator() -> LogisticRegression:
    return LogisticRegression().fit([[0.0, 0.0], [1.0, 1.0]], [0, 1])


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    base = tmp_path_factory.mktemp("control")
    models, outside = base / "models", base / "outside"
    models.mkdir()
    outside.mkdir()
    skops.io.dump(_estimator(), models / "m.skops")
    with (models / "huge.skops").open("wb") as sparse:  # 2 MiB, over the test's 1 MiB cap
        sparse.truncate(2 * 1024 * 1024)
    skops.io.dump(_estimator(), models / "m2.skops")
    skops.io.dump(_estimator(), outside / "other.skops")
    (models / "broken.skops").write_bytes(b"not a skops file")
    spaced = models / "Secret Project" / "prod models"
    spaced.mkdir(parents=True)
    (spaced / "broken.skops").write_bytes(b"not a skops file")
    (models / "link.skops").symlink_to(outside / "other.skops")
    marker = base / "the-pickle-ran"
    (models / "evil.pkl").write_bytes(pickle.dumps(_RunsCodeWhenUnpickled(marker)))
    joblib.dump(_estimator(), models / "trusted.joblib")
    joblib.dump(_estimator(), models / "trusted2.joblib")
    value = models / "value.txt"
    value.write_text("1")
    (models / "hang.txt").write_text("hang")
    specs = [
        loadonce.ModelSpec(name="m", artifact=models / "m.skops"),
        loadonce.ModelSpec(name="trusted", artifact=models / "trusted.joblib", trust=True),
        loadonce.ModelSpec(
            name="slow",
            loader="tests.loaders:constant_or_hang",
            artifact=models / "value.txt",
            load_timeout_s=1,
        ),
        loadonce.ModelSpec(
            name="changing", loader="tests.loaders:constant_changed_while_loading", artifact=value
        ),
        loadonce.ModelSpec(
            name="changing_pinned",
            loader="tests.loaders:constant_changed_while_loading",
            artifact=value,
            sha256=_sha256(value),
        ),
    ]
    # /dev is allowed too, to show that an allowed place still only gives files.
    registry = loadonce.Registry(
        specs, artifact_roots=[models, Path("/dev")], max_artifact_bytes=1024 * 1024
    )
    with ThreadedServer(loadonce.create_app(registry)) as server:
        yield Setup(server, models, outside, marker)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_pin_in_a_request_does_not_make_a_pickle_trusted(setup: Setup) -> None:
    evil = setup.models / "evil.pkl"
    refused = setup.reload("m", {"artifact": str(evil), "sha256": _sha256(evil)})
    assert refused.status_code == 403, refused.text
    assert "trust = true" in refused.json()["error"]
    assert not setup.marker.exists(), "the pickle's code ran"
    predicted = httpx.post(f"{setup.server.url}/models/m/predict", json={"inputs": [[0, 0]]})
    assert predicted.status_code == 200


def test_a_request_cannot_change_the_operators_pin(setup: Setup) -> None:
    refused = setup.reload("m", {"sha256": "0" * 64})
    assert refused.status_code == 400
    assert "sha256" in refused.json()["error"]


@pytest.mark.parametrize(
    "where", ["outside", "symlink to outside", "relative", "dotdot", "nul", "too long"]
)
def test_only_artifacts_under_the_roots_may_be_named(setup: Setup, where: str) -> None:
    artifact = {
        "outside": str(setup.outside / "other.skops"),
        "symlink to outside": str(setup.models / "link.skops"),
        "relative": "m2.skops",
        "dotdot": f"{setup.models}/../outside/other.skops",
        "nul": f"{setup.models}/m2.skops\0",
        "too long": f"{setup.models}/{'a' * 5000}.skops",
    }[where]
    refused = setup.reload("m", {"artifact": artifact})
    assert refused.status_code in (400, 403), refused.text
    assert refused.json()["error"]
    assert httpx.get(f"{setup.server.url}/models/m").json()["state"] == "ready"


HOSTILE_VERSIONS = {
    "newline (a forged log line)": "2\nINFO: model 'm' version 9 loaded",
    "carriage return": "2\r3",
    "NUL": "2\x00",
    "escape sequence": "\x1b[31m2",
    "right-to-left override": "\u202e2",
    "zero-width space": "2\u200b",
    "line separator": "2\u20283",
    "slash (unaddressable in /versions/{v})": "a/b",
    "dot segment": "..",
    "space": "2 beta",
    "query mark": "2?x=1",
    "non-ASCII": "版本2",
    "65 characters": "9" * 65,
    "very long": "9" * 100_000,
}


@pytest.mark.parametrize("version", HOSTILE_VERSIONS.values(), ids=HOSTILE_VERSIONS.keys())
def test_a_version_that_would_break_urls_metrics_or_logs_is_refused(
    setup: Setup, version: str
) -> None:
    refused = setup.reload("m", {"version": version})
    assert refused.status_code == 400, refused.text
    error = refused.json()["error"]
    assert "version" in error, error
    assert len(error) < 500, "the answer echoes at most a short part of the version"
    served = httpx.get(f"{setup.server.url}/models/m").json()
    assert (served["state"], served["version"]) == ("ready", "1")
    # A config file's declaration is checked as a request's change is.
    with pytest.raises(ValueError, match="is no version"):
        loadonce.ModelSpec(name="m", loader=_estimator, version=version)


@pytest.mark.parametrize("version", ["2", "2.0.1", "2024-06-01", "v3_rc1+build:7"])
def test_plain_versions_are_served_and_named_in_urls(setup: Setup, version: str) -> None:
    reloaded = setup.reload("m", {"version": version})
    assert reloaded.status_code == 200, reloaded.text
    infer = httpx.post(
        f"{setup.server.url}/v2/models/m/versions/{version}/infer",
        json={"inputs": [{"name": "input", "shape": [1, 2], "datatype": "FP64", "data": [0, 0]}]},
    )
    assert infer.status_code == 200, infer.text
    assert infer.json()["model_version"] == version
    assert setup.reload("m", {"version": "1"}).status_code == 200


@pytest.mark.parametrize("directory", ["Secret Project", "Secret Project/prod models"])
def test_a_pin_on_a_directory_is_refused_before_any_load(setup: Setup, directory: str) -> None:
    refused = setup.reload("m", {"artifact": str(setup.models / directory), "sha256": "a" * 64})
    assert refused.status_code == 400, refused.text
    error = refused.json()["error"]
    assert "sha256 pins one file's bytes" in error, error
    assert "workers" not in refused.json(), "no worker tried to load it"


def test_a_declared_pin_on_a_directory_fails_its_load_saying_so(tmp_path: Path) -> None:
    (tmp_path / "value.txt").write_text("1")
    loader = "tests.loaders:constant_from_file"
    spec = loadonce.ModelSpec(name="c", loader=loader, artifact=tmp_path, sha256="a" * 64)
    with pytest.raises(loadonce.ModelLoadError, match="sha256 pins one file's bytes"):
        TestClient(loadonce.create_app([spec])).__enter__()


@pytest.mark.parametrize("artifact", ["", " ", "\t\n"])
def test_an_empty_artifact_is_named_as_such(setup: Setup, artifact: str) -> None:
    refused = setup.reload("m", {"artifact": artifact})
    assert refused.status_code == 400, refused.text
    assert "artifact is empty" in refused.json()["error"]


@pytest.mark.parametrize("artifact", ["/dev/zero", "/dev/null", "/dev/stdin"])
def test_a_device_is_refused_at_once(setup: Setup, artifact: str) -> None:
    started = time.monotonic()
    refused = setup.reload("m", {"artifact": artifact, "sha256": "0" * 64})
    assert refused.status_code == 400, refused.text
    assert time.monotonic() - started < 5
    assert "not a regular file" in refused.json()["error"]


def test_a_file_over_the_size_cap_is_refused_before_it_is_read(setup: Setup) -> None:
    refused = setup.reload("m", {"artifact": str(setup.models / "huge.skops")})
    assert refused.status_code == 400
    assert "max_artifact_bytes" in refused.json()["error"]


def test_a_directory_no_runtime_reads_is_refused(setup: Setup) -> None:
    refused = setup.reload("m", {"artifact": str(setup.models)})
    assert refused.status_code == 400
    assert "no runtime reads the directory" in refused.json()["error"]


def test_safe_formats_under_the_roots_and_pickles_of_a_trusted_model_reload(setup: Setup) -> None:
    ok = setup.reload("m", {"artifact": str(setup.models / "m2.skops"), "version": "2"})
    assert ok.status_code == 200, ok.text
    trusted = setup.reload("trusted", {"artifact": str(setup.models / "trusted2.joblib")})
    assert trusted.status_code == 200, trusted.text


# A path with spaces: what followed its first space was shown ("Secret Project/prod ...").
@pytest.mark.parametrize("where", ["broken.skops", "Secret Project/prod models/broken.skops"])
def test_a_failed_reload_shows_paths_to_admins_only(setup: Setup, where: str) -> None:
    broken = setup.reload("m", {"artifact": str(setup.models / where)})
    assert broken.status_code == 400
    assert str(setup.models / where) in broken.json()["error"]
    listing = httpx.get(f"{setup.server.url}/models").text
    index = httpx.post(f"{setup.server.url}/v2/repository/index").text
    one = httpx.get(f"{setup.server.url}/models/m").json()
    assert "failed to load" in one["error"]
    for answer in (listing, index, str(one)):
        assert str(setup.models) not in answer
        assert "/tmp" not in answer
        assert "Secret" not in answer
        assert "prod models" not in answer


@pytest.mark.parametrize("loop", ["itself", "two links", "through its directory"])
def test_an_artifact_that_became_a_link_loop_fails_its_reload_and_nothing_else(
    tmp_path: Path, loop: str
) -> None:
    """The configured artifact turned into a symbolic link loop after startup: the reload
    fails with a reason and the loaded version serves. Path.resolve raised on the loop when
    the failed load's reason was shown without paths: /models and the repository index
    answered 500 "the server failed (RuntimeError)" until the next good load."""
    models = tmp_path / "models"
    models.mkdir()
    artifact = models / "m.skops"
    skops.io.dump(_estimator(), artifact)
    spec = loadonce.ModelSpec(name="m", artifact=artifact)
    with ThreadedServer(loadonce.create_app(loadonce.Registry([spec]))) as server:
        artifact.unlink()
        if loop == "itself":
            artifact.symlink_to(artifact)
        elif loop == "two links":
            artifact.symlink_to(models / "other.skops")
            (models / "other.skops").symlink_to(artifact)
        else:
            (models / "sub").symlink_to(models / "sub")
            artifact.symlink_to(models / "sub" / "m.skops")
        failed = httpx.post(f"{server.url}/admin/models/m/reload", json={}, timeout=30)
        assert failed.status_code == 400, failed.text
        assert "symbolic link" in failed.json()["error"]
        one = httpx.get(f"{server.url}/models/m")
        assert one.status_code == 200, one.text
        assert "symbolic link" in one.json()["error"]
        assert str(models) not in one.text
        assert httpx.get(f"{server.url}/models").status_code == 200
        assert httpx.post(f"{server.url}/v2/repository/index").status_code == 200
        assert httpx.get(f"{server.url}/readyz").status_code == 200
        predicted = httpx.post(f"{server.url}/models/m/predict", json={"inputs": [[0, 0]]})
        assert predicted.status_code == 200


def test_a_native_stack_trace_reaches_admins_only(tmp_path: Path) -> None:
    """XGBoost's errors carry its C++ stack trace, with the memory addresses of its
    libraries (which address randomisation hides): the load's reason says why in one short
    line, and what clients without the admin key see has neither trace nor address."""
    import numpy as np
    import xgboost

    rows = np.random.default_rng(0).random((20, 3))
    data = xgboost.DMatrix(rows, label=(rows[:, 0] > 0.5).astype(int))
    booster = xgboost.train({"objective": "binary:logistic"}, data, num_boost_round=2)
    booster.save_model(tmp_path / "b.json")
    (tmp_path / "garbage.ubj").write_bytes(b"not a model" * 20)
    whole = (tmp_path / "b.json").read_bytes()
    (tmp_path / "cut.json").write_bytes(whole[: len(whole) // 2])
    spec = loadonce.ModelSpec(name="b", artifact=tmp_path / "b.json")
    registry = loadonce.Registry([spec], artifact_roots=[tmp_path])
    with ThreadedServer(loadonce.create_app(registry)) as server:
        for damaged in ("garbage.ubj", "cut.json"):
            url = f"{server.url}/admin/models/b/reload"
            refused = httpx.post(url, json={"artifact": str(tmp_path / damaged)}, timeout=30)
            assert refused.status_code == 400
            assert "not an XGBoost model file" in refused.json()["error"]
            assert len(refused.json()["error"]) < 400
            shown = httpx.get(f"{server.url}/models/b").json()["error"]
            index = httpx.post(f"{server.url}/v2/repository/index").text
            for answer in (refused.text, shown, index):
                assert "Stack trace" not in answer
                assert "[bt]" not in answer
                assert "0x7" not in answer


def test_a_load_that_hangs_times_out_and_frees_the_model(setup: Setup) -> None:
    started = time.monotonic()
    hung = setup.reload("slow", {"artifact": str(setup.models / "hang.txt")})
    assert hung.status_code == 400
    assert "load_timeout_s" in hung.json()["error"]
    assert time.monotonic() - started < 3.5
    assert httpx.get(f"{setup.server.url}/models/slow").json()["state"] == "ready"
    # The lock is free: the next reload goes ahead at once.
    again = setup.reload("slow", {"artifact": str(setup.models / "value.txt"), "version": "2"})
    assert again.status_code == 200, again.text


@pytest.mark.parametrize("pinned", [False, True], ids=["unpinned", "pinned"])
@pytest.mark.parametrize("how", ["rewritten", "replaced", "deleted", "truncated"])
def test_an_artifact_changed_while_it_loads_fails_the_reload(
    setup: Setup, how: str, pinned: bool
) -> None:
    """A file written, replaced, deleted or truncated while a reload read it (a ``cp`` over
    it, a deploy renaming the next version in): the load read some of one and some of the
    other, or bytes other than those the pin was checked against; it fails, saying so, and
    the loaded version serves on."""
    name = "changing_pinned" if pinned else "changing"
    artifact = setup.models / f"{name}-{how}.txt"
    artifact.write_text(f"2 {how}")
    body = {"artifact": str(artifact), "version": "2"}
    if pinned:
        body["sha256"] = _sha256(artifact)
    refused = setup.reload(name, body)
    assert refused.status_code == 400, refused.text
    assert "changed on disk while it loaded" in refused.json()["error"]
    model = httpx.get(f"{setup.server.url}/models/{name}").json()
    assert (model["version"], model["state"]) == ("1", "ready")
    answer = httpx.post(f"{setup.server.url}/models/{name}/predict", json={"inputs": [0]})
    assert answer.json()["outputs"][0]["value"] == 1.0


CROSS_SITE = [
    {"Origin": "https://evil.example"},
    {"Origin": "null"},
    {"Sec-Fetch-Site": "cross-site"},
    {"Sec-Fetch-Site": "same-site"},
]


@pytest.mark.parametrize(
    "headers", CROSS_SITE, ids=lambda h: ":".join(h.items().__iter__().__next__())
)
def test_a_web_page_of_another_site_cannot_drive_control_routes(
    setup: Setup, headers: dict[str, str]
) -> None:
    for path in ("/admin/models/m/reload", "/v2/repository/models/m/unload"):
        refused = httpx.post(
            setup.server.url + path,
            content=b"{}",
            headers={"Content-Type": "text/plain", **headers},
        )
        assert refused.status_code == 403, (path, refused.text)
    assert httpx.get(f"{setup.server.url}/models/m").json()["state"] == "ready"


def test_clients_that_are_not_browsers_and_pages_of_this_server_keep_working(
    setup: Setup,
) -> None:
    url = setup.server.url
    # tritonclient posts its JSON without a content type, and no Origin.
    assert httpx.post(f"{url}/v2/repository/models/m/load", content=b"{}").status_code == 200
    own = {"Origin": url, "Sec-Fetch-Site": "same-origin"}
    assert httpx.post(f"{url}/admin/models/m/reload", json={}, headers=own).status_code == 200


@pytest.mark.parametrize("host", ["evil.example", "evil.example:80", "10.0.0.1", "[2001:db8::1]"])
def test_a_loopback_server_answers_only_to_loopback_names(setup: Setup, host: str) -> None:
    for method, path in (("GET", "/models"), ("POST", "/admin/models/m/reload")):
        refused = httpx.request(method, setup.server.url + path, headers={"Host": host})
        assert refused.status_code == 403, (host, path)
        assert "loopback" in refused.json()["error"]
    for name in ("localhost", f"localhost:{setup.server.port}", "127.0.0.1", "app.localhost"):
        assert httpx.get(setup.server.url + "/models", headers={"Host": name}).status_code == 200


def test_allowed_hosts_let_a_local_proxy_pass_its_own_host() -> None:
    spec = loadonce.ModelSpec(name="m", loader=lambda: lambda b: list(b), input_shape=())
    app = loadonce.create_app([spec], allowed_hosts=["api.example.com", "*.internal.example"])
    with ThreadedServer(app) as server:
        for host in ("api.example.com", "a.internal.example", "localhost"):
            answered = httpx.get(f"{server.url}/models", headers={"Host": host})
            assert answered.status_code == 200, host
        for host in ("example.com", "internal.example", "api.example.com.evil"):
            assert httpx.get(f"{server.url}/models", headers={"Host": host}).status_code == 403


def test_a_server_bound_to_every_address_guards_what_arrives_through_loopback() -> None:
    """Bound to 0.0.0.0, the server is reached through 127.0.0.1 by a browser on the same
    machine too (DNS rebinding): the guard holds there, and its refusal says what it is and
    how a local proxy passes (it said "this server listens on a loopback address", false)."""
    spec = loadonce.ModelSpec(name="m", loader=lambda: lambda b: list(b), input_shape=())
    with ThreadedServer(loadonce.create_app([spec]), host="0.0.0.0") as server:
        refused = httpx.get(f"{server.url}/models", headers={"Host": "api.example.com"})
        assert refused.status_code == 403
        error = refused.json()["error"]
        assert "through the loopback address 127.0.0.1" in error
        assert "DNS rebinding" in error
        assert "'api.example.com'" in error
        assert "allowed_hosts" in error
        assert "listens on a loopback address" not in error
        assert httpx.get(f"{server.url}/models", headers={"Host": "localhost"}).status_code == 200
    app = loadonce.create_app([spec], allowed_hosts=["api.example.com"])
    with ThreadedServer(app, host="0.0.0.0") as server:
        proxied = httpx.get(f"{server.url}/models", headers={"Host": "api.example.com"})
        assert proxied.status_code == 200


@pytest.mark.parametrize(
    "pattern", ["", " ", "http://api.example.com", "api.example.com:8080", "api.example.com/v1"]
)
def test_an_allowed_host_that_could_never_match_is_refused_when_given(pattern: str) -> None:
    # It was taken silently, and every request the proxy passed on was then refused.
    spec = loadonce.ModelSpec(name="m", loader=lambda: lambda b: list(b))
    with pytest.raises(loadonce.ConfigError, match=r"allowed_hosts: .* is not a host name"):
        loadonce.create_app([spec], allowed_hosts=[pattern])
    with pytest.raises(loadonce.ConfigError, match="is not a host name"):
        loadonce.lifespan([spec], allowed_hosts=["api.example.com", pattern])


def test_an_allowed_host_written_with_its_final_dot_matches() -> None:
    spec = loadonce.ModelSpec(name="m", loader=lambda: lambda b: list(b), input_shape=())
    app = loadonce.create_app([spec], allowed_hosts=["api.example.com.", "::1", "my_service"])
    with ThreadedServer(app) as server:
        for host in ("api.example.com", "API.example.com.", "my_service:8000"):
            answered = httpx.get(f"{server.url}/models", headers={"Host": host})
            assert answered.status_code == 200, host
        assert (
            httpx.get(f"{server.url}/models", headers={"Host": "evil.example"}).status_code == 403
        )
