"""Server options from the command line, LOADONCE_* variables and the config file."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx2 as httpx
import pytest

from loadonce.core.errors import ConfigError
from loadonce.server.config_file import spec_for_target
from tests.servers import REPO_ROOT, cli_env, free_port, serving

USAGE_ERROR = 2


def _loadonce(
    tmp_path: Path, *args: str, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """``python -m loadonce ARGS``, its output captured."""
    return subprocess.run(
        [sys.executable, "-m", "loadonce", *args],
        capture_output=True,
        text=True,
        env=cli_env(tmp_path, env),
        cwd=cwd or tmp_path,
        timeout=120,
        check=False,
    )


def _config(tmp_path: Path, server_table: str) -> Path:
    path = tmp_path / "loadonce.toml"
    path.write_text(f'{server_table}\n[[models]]\nname = "echo"\nloader = "tests.loaders:echo"\n')
    return path


def test_precedence_is_cli_then_environment_then_file(tmp_path: Path) -> None:
    file_port, env_port, cli_port = free_port(), free_port(), free_port()
    config = _config(tmp_path, f'[server]\nport = {file_port}\nlog_level = "warning"')

    with serving([str(config)], tmp_path, port=file_port) as server:
        assert httpx.get(f"http://127.0.0.1:{file_port}/livez").status_code == 200
    assert "[loadonce]" not in server.log(), "log_level came from the file"

    env = cli_env(tmp_path, {"LOADONCE_PORT": str(env_port), "LOADONCE_LOG_LEVEL": "info"})
    with serving([str(config)], tmp_path, env=env, port=env_port) as server:
        assert httpx.get(f"http://127.0.0.1:{env_port}/livez").status_code == 200
    assert "[loadonce] model 'echo'" in server.log(), "log_level came from the environment"

    with serving(
        [str(config), "--port", str(cli_port)], tmp_path, env=env, port=cli_port
    ) as server:
        assert httpx.get(f"http://127.0.0.1:{cli_port}/livez").status_code == 200


def _frozen_objects(url: str) -> float:
    metrics = httpx.get(f"{url}/metrics").text
    [line] = [line for line in metrics.splitlines() if line.startswith("loadonce_gc_frozen")]
    return float(line.split()[1])


def test_gc_freeze_is_on_by_default_and_off_from_the_file_or_the_environment(
    tmp_path: Path,
) -> None:
    with serving([str(_config(tmp_path, ""))], tmp_path) as server:
        assert _frozen_objects(server.url) > 10_000
    off_in_file = _config(tmp_path, "[server]\ngc_freeze = false")
    with serving([str(off_in_file)], tmp_path) as server:
        assert _frozen_objects(server.url) == 0
    env = cli_env(tmp_path, {"LOADONCE_GC_FREEZE": "false"})
    with serving([str(_config(tmp_path, ""))], tmp_path, env=env) as server:
        assert _frozen_objects(server.url) == 0


def test_binds_loopback_by_default(tmp_path: Path) -> None:
    with serving([str(_config(tmp_path, ""))], tmp_path) as server:
        assert "http://127.0.0.1:" in server.log()


def test_a_loader_reference_can_be_served_directly(tmp_path: Path) -> None:
    with serving(["tests.loaders:echo"], tmp_path) as server:
        response = httpx.post(f"{server.url}/models/echo/predict", json={"inputs": ["hi"]})
        assert response.json()["outputs"][0]["echo"] == "hi"


def _serve_expecting_usage_error(args: list[str], tmp_path: Path) -> str:
    result = _loadonce(tmp_path, "serve", *args)
    assert result.returncode == USAGE_ERROR, result.stderr
    assert "Traceback" not in result.stderr
    return result.stderr


@pytest.mark.parametrize(
    ("server_table", "models", "expected"),
    [
        ("[server]\nprot = 1", '[[models]]\nname = "a"\nloader = "x:y"', "[server]: prot"),
        ("[server]\nworkers = 0", '[[models]]\nname = "a"\nloader = "x:y"', "workers"),
        ("[server]\ngc_freeze = 2", '[[models]]\nname = "a"\nloader = "x:y"', "gc_freeze"),
        ("", "", "no model is declared"),
        ("", '[[models]]\nname = "a"', "needs a loader or an artifact"),
        ("", '[[models]]\nname = "a"\nloader = "x:y"\nconcurrency = "pool"', "pool:4"),
        ("", '[[models]]\nname = "a b"\nloader = "x:y"', "name"),
        ("", '[[models]]\nname = "a"\nloader = "x:y"\nbatch = 3', "batch"),
        (
            "",
            '[[models]]\nname = "a"\nloader = "x:y"\n[[models]]\nname = "a"\nloader = "x:y"',
            "declared twice",
        ),
        ("[server\n", "", "cannot read config file"),
        # TOML is UTF-8: a Latin-1 byte was a traceback (exit 1).
        ("# caf\xe9", "", "not UTF-8"),
        # Taken as true before: "yes" is not an answer to "run its code?".
        ("", '[[models]]\nname = "a"\nloader = "x:y"\ntrust = "yes"', "trust"),
        ("", '[[models]]\nname = "a"\nloader = "x:y"\nbatching = "yes"', "batching"),
        ("", '[[models]]\nname = "a"\nloader = "x:y"\ninput_shape = [0]', "at least 1"),
        # The key list is named (it said "value"); the key itself never is.
        (
            '[server]\napi_keys = ["short-secret"]',
            '[[models]]\nname = "a"\nloader = "x:y"',
            "[server]: api_keys: an API key must be at least 16",
        ),
        # As one comma-separated string, as the environment takes it: checked the same way.
        (
            '[server]\napi_keys = "long-enough-secret-1, short"',
            '[[models]]\nname = "a"\nloader = "x:y"',
            "[server]: api_keys: an API key must be at least 16",
        ),
        ('[server]\napi_keys = " , "', '[[models]]\nname = "a"\nloader = "x:y"', "is empty"),
        ("[server]\nadmin_api_keys = []", '[[models]]\nname = "a"\nloader = "x:y"', "is empty"),
        # Taken silently before: a proxy's every request, or every reload, then refused.
        (
            '[server]\nallowed_hosts = [""]',
            '[[models]]\nname = "a"\nloader = "x:y"',
            "allowed_hosts: '' is not a host name",
        ),
        (
            '[server]\nartifact_roots = ["not-there"]',
            '[[models]]\nname = "a"\nloader = "x:y"',
            "not-there' is not a directory",
        ),
        # uvicorn binds "" to every interface: not what an empty value meant.
        ('[server]\nhost = ""', '[[models]]\nname = "a"\nloader = "x:y"', "host: must not be"),
        (
            "",
            '[[models]]\nname = "a"\nloader = "x:y"\noptions = { input_dtyp = "float32" }',
            "model 'a': unknown option 'input_dtyp' for the python runtime "
            "(did you mean 'input_dtype'?)",
        ),
        # Taken as numbers before: port = true bound port 1, workers = true started one.
        (
            "[server]\nport = true",
            '[[models]]\nname = "a"\nloader = "x:y"',
            "port: must be a number",
        ),
        (
            "",
            '[[models]]\nname = "a"\nloader = "x:y"\nmax_queue = true',
            "max_queue: must be a number, not true",
        ),
        (
            "[server]\nmemory_limit = true",
            '[[models]]\nname = "a"\nloader = "x:y"',
            "memory_limit: must be a number",
        ),
        (
            "",
            '[[models]]\nname = "a"\nloader = "x:y"\ninput_shape = [true]',
            "input_shape: must hold numbers",
        ),
        # An infinite deadline made the hang watch's timeout infinite: hung calls unseen.
        (
            "",
            '[[models]]\nname = "a"\nloader = "x:y"\ntimeout_s = inf',
            "timeout_s: Input should be a finite number",
        ),
        (
            "",
            '[[models]]\nname = "a"\nloader = "x:y"\ntimeout_s = 1e308',
            "timeout_s: Input should be less than or equal to 10000000",
        ),
        (
            "",
            '[[models]]\nname = "a"\nloader = "x:y"\nruntime = "unknown"',
            "model 'a': unknown runtime 'unknown'",
        ),
        (
            "",
            '[[models]]\nname = "a"\nloader = "x:y"\nruntime = "nowhere:Runtime"',
            "model 'a': No module named 'nowhere'",
        ),
    ],
)
def test_an_invalid_config_file_is_one_line_naming_the_problem(
    tmp_path: Path, server_table: str, models: str, expected: str
) -> None:
    config = tmp_path / "bad.toml"
    # Latin-1: each row is ASCII but the one that holds a byte UTF-8 does not take.
    config.write_bytes(f"{server_table}\n{models}\n".encode("latin-1"))
    stderr = _serve_expecting_usage_error([str(config)], tmp_path)
    assert expected in stderr
    assert str(config) in stderr or "declared" in stderr


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ([], "nothing to serve"),
        (["missing.onnx"], "no such file: missing.onnx"),
        (["--demo", "x.toml"], "either a TARGET or --demo"),
        (["--demo", "--workers", "-1"], "workers"),
        (["x.toml", "--name", "a"], "--input-dtype and --no-batching describe the one"),
        (["tests.loaders:echo", "--name", "a b"], "name"),
        (["tests.loaders:echo", "--host", " "], "host: must not be empty"),
        # An option given twice: click kept the last, unsaid (a config file's key twice is
        # refused too).
        (["--demo", "--workers", "2", "--workers", "3"], "option '--workers' is given more"),
        (["--demo", "--port=8001", "--port", "8002"], "option '--port' is given more"),
        (["--demo", "--tracing", "--no-tracing"], "'--tracing' and '--no-tracing' are both"),
        (["--demo", "--trust", "--trust"], "option '--trust' is given more"),
    ],
)
def test_bad_command_lines_are_usage_errors(tmp_path: Path, args: list[str], expected: str) -> None:
    assert expected in _serve_expecting_usage_error(args, tmp_path)


def test_a_directory_serves_the_one_artifact_in_it(tmp_path: Path) -> None:
    # KServe's /mnt/models: the downloaded file, and files no runtime claims beside it.
    models = tmp_path / "models"
    models.mkdir()
    for name in ("model.onnx", "model.onnx.data", "README.md", ".ready"):
        (models / name).write_bytes(b"")
    spec = spec_for_target(str(models), {"name": "churn"})
    assert (spec.name, spec.artifact) == ("churn", models / "model.onnx")
    assert spec_for_target(str(models)).name == "models"  # the directory's name, as before

    (models / "other.onnx").write_bytes(b"")
    with pytest.raises(ConfigError, match="holds several artifacts"):
        spec_for_target(str(models))
    # A directory a runtime reads whole (transformers) is still the artifact itself.
    (models / "config.json").write_text("{}")
    assert spec_for_target(str(models)).artifact == models


def test_a_runtime_of_your_own_is_named_in_the_config_file(tmp_path: Path) -> None:
    """The README's LinearRuntime, in a module beside the config file (no PYTHONPATH)."""
    (tmp_path / "custom_runtime.py").write_text(
        (REPO_ROOT / "docs" / "examples" / "custom_runtime.py").read_text()
    )
    (tmp_path / "price.model").write_text('{"weights": [2.0, 1.0], "bias": 0.5}')
    config = tmp_path / "loadonce.toml"
    config.write_text(
        '[[models]]\nname = "price"\nartifact = "price.model"\n'
        'runtime = "custom_runtime:LinearRuntime"\n'
    )
    with serving([str(config)], tmp_path) as server:
        answer = httpx.post(f"{server.url}/models/price/predict", json={"inputs": [1.0, 2.0]})
        assert answer.json()["outputs"] == [4.5]


def test_every_serve_option_is_accepted_in_the_server_table(tmp_path: Path) -> None:
    """trust, memory_limit (Kubernetes' units) and a fractional drain_timeout_s, from the file."""
    config = tmp_path / "loadonce.toml"
    config.write_text(
        '[server]\ntrust = true\nmemory_limit = "16Gi"\ndrain_timeout_s = 2.5\n\n'
        '[[models]]\nname = "echo"\nloader = "tests.loaders:echo"\n'
    )
    with serving([str(config)], tmp_path) as server:
        answer = httpx.post(f"{server.url}/models/echo/predict", json={"inputs": [1]})
        assert answer.status_code == 200


@pytest.mark.parametrize(
    ("variable", "value", "said"),
    [
        (
            "LOADONCE_MAX_CONNECTIONS",
            "many",
            "loadonce: error: invalid server option: max_connections (LOADONCE_MAX_CONNECTIONS): "
            "Input should be a valid integer, unable to parse string as an integer",
        ),
        # Options of the command line read from their variable: named by the variable (they
        # said 'workers' and '--log-level', which the operator never typed).
        (
            "LOADONCE_WORKERS",
            "0",
            "loadonce: error: invalid server option: workers (LOADONCE_WORKERS): "
            "Input should be greater than or equal to 1",
        ),
        ("LOADONCE_LOG_LEVEL", "loud", "Invalid value for LOADONCE_LOG_LEVEL (for --log-level)"),
    ],
)
def test_a_bad_value_from_the_environment_names_its_variable(
    tmp_path: Path, variable: str, value: str, said: str
) -> None:
    result = _loadonce(tmp_path, "serve", "--demo", env={variable: value})
    assert result.returncode == USAGE_ERROR
    assert said in result.stderr, result.stderr


def test_a_config_files_keys_may_be_one_comma_separated_string(tmp_path: Path) -> None:
    """As the docs say it and the environment takes it: the file refused it ("Input should be
    a valid list")."""
    keys = '[server]\napi_keys = "inference-key-0123456789, other-key-0123456789"'
    config = _config(tmp_path, keys)
    with serving([str(config)], tmp_path) as server:
        assert httpx.get(f"{server.url}/models").status_code == 401
        headers = {"Authorization": "Bearer other-key-0123456789"}
        assert httpx.get(f"{server.url}/models", headers=headers).status_code == 200


def test_a_bad_grpc_port_is_not_blamed_on_loadonce_port(tmp_path: Path) -> None:
    """ "port:" is in "grpc_port:" too: the message named LOADONCE_PORT for a bad gRPC port."""
    port = {"LOADONCE_PORT": "8001"}
    result = _loadonce(tmp_path, "serve", "--demo", "--grpc-port", "70000", env=port)
    assert result.returncode == USAGE_ERROR
    assert "grpc_port: Input should be less than or equal to 65535" in result.stderr
    assert "LOADONCE_PORT" not in result.stderr


def _reload(tmp_path: Path, url: str) -> subprocess.CompletedProcess[str]:
    return _loadonce(tmp_path, "reload", "m", "--url", url)


def test_loadonce_reload_refuses_a_bad_url_or_a_foreign_answer_in_one_line(
    tmp_path: Path,
) -> None:
    """A malformed URL, or a server that is not loadonce's (a proxy's login page), was a
    traceback and status 1."""
    import http.server
    import threading

    for url in ("http://[::1", "http://127.0.0.1:abc", "http://a b"):
        result = _reload(tmp_path, url)
        assert result.returncode == USAGE_ERROR, (url, result.stderr)
        assert "Traceback" not in result.stderr
        assert result.stderr.count("\n") == 1, result.stderr

    class Foreign(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = b"<html>login</html>"
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), Foreign) as foreign:
        threading.Thread(target=foreign.serve_forever, daemon=True).start()
        result = _reload(tmp_path, f"http://127.0.0.1:{foreign.server_address[1]}")
        foreign.shutdown()
    assert result.returncode == USAGE_ERROR, result.stderr
    assert "not a loadonce reload's" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_demo_cache_that_cannot_be_written_is_one_line(tmp_path: Path) -> None:
    """LOADONCE_CACHE_DIR naming a file: the training child's traceback, then this
    process's, status 1."""
    not_a_directory = tmp_path / "a-file"
    not_a_directory.write_text("")
    cache = {"LOADONCE_CACHE_DIR": str(not_a_directory)}
    result = _loadonce(tmp_path, "serve", "--demo", "--port", str(free_port()), env=cache)
    assert result.returncode == USAGE_ERROR, result.stderr
    assert "Traceback" not in result.stderr
    assert "LOADONCE_CACHE_DIR" in result.stderr


def test_the_command_line_beats_the_environments_target_and_model_fields(
    tmp_path: Path,
) -> None:
    """--demo typed with LOADONCE_TARGET set was "give either a TARGET or --demo"; a
    container's LOADONCE_MODEL_NAME (for a single artifact) made a config file an error
    blamed on --name."""

    def plan(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
        return _loadonce(tmp_path, "plan", *args, env=env, cwd=REPO_ROOT)

    demo = plan(["--demo"], {"LOADONCE_TARGET": str(tmp_path / "elsewhere.skops")})
    assert demo.returncode == 0, demo.stderr
    config = _config(tmp_path, "")
    named = plan([str(config)], {"LOADONCE_MODEL_NAME": "churn"})
    assert named.returncode == 0, named.stderr
    typed = plan([str(config), "--name", "churn"], {})
    assert typed.returncode == USAGE_ERROR, typed.stderr  # typed: the operator's mistake


def test_a_linked_config_file_reads_artifacts_and_modules_beside_the_link(
    tmp_path: Path,
) -> None:
    """Artifacts were read beside the link's target, loader modules beside the link."""
    here, elsewhere = tmp_path / "here", tmp_path / "elsewhere"
    here.mkdir()
    elsewhere.mkdir()
    (here / "value.txt").write_text("7")
    (here / "my_loaders.py").write_text(
        "from pathlib import Path\n\n\n"
        "def load(path):\n"
        "    value = float(Path(path).read_text())\n"
        "    return lambda batch: [value for _ in batch]\n"
    )
    real = elsewhere / "loadonce.toml"
    real.write_text(
        '[[models]]\nname = "seven"\nloader = "my_loaders:load"\nartifact = "value.txt"\n'
    )
    (here / "loadonce.toml").symlink_to(real)
    result = _loadonce(tmp_path, "plan", str(here / "loadonce.toml"))
    assert result.returncode == 0, result.stderr


def test_an_artifact_that_is_a_directory_is_said_to_be_one(tmp_path: Path) -> None:
    """A directory where the model file was meant was "no such file", though it is there."""
    (tmp_path / "model.skops").mkdir()
    config = tmp_path / "loadonce.toml"
    config.write_text('[[models]]\nname = "m"\nartifact = "model.skops"\n')
    result = _loadonce(tmp_path, "plan", str(config))
    assert result.returncode != 0
    assert "model.skops is a directory, not a model file" in result.stderr, result.stderr


def test_an_input_shape_a_runtime_does_not_read_is_refused(tmp_path: Path) -> None:
    """--input-shape on a scikit-learn artifact was ignored: /models said [4], the inputs
    were checked against [4], and the operator believed otherwise."""
    import skops.io
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    iris = load_iris()
    artifact = tmp_path / "iris.skops"
    skops.io.dump(LogisticRegression(max_iter=200).fit(iris.data, iris.target), artifact)
    port = str(free_port())
    result = _loadonce(tmp_path, "serve", str(artifact), "--input-shape", "3,2", "--port", port)
    assert result.returncode != 0
    assert "input_shape is not read by the sklearn runtime" in result.stderr, result.stderr
