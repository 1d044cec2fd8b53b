"""`loadonce serve --demo`: a new user sees real predictions with no files of their own."""

from __future__ import annotations

from pathlib import Path

import httpx2 as httpx

from tests.servers import cli_env, serving


def test_demo_predicts_known_iris_examples_and_caches_its_model(tmp_path: Path) -> None:
    env = cli_env(tmp_path, trained_demo=False)  # this test sees the first start train it
    cache = Path(env["LOADONCE_CACHE_DIR"])
    with serving(["--demo"], tmp_path, env=env) as server:
        response = httpx.post(
            f"{server.url}/models/iris/predict",
            json={"inputs": [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3], [5.9, 3.0, 4.2, 1.5]]},
        )
        assert response.status_code == 200
        assert response.json() == {
            "model": "iris",
            "version": "1",
            "outputs": ["setosa", "virginica", "versicolor"],
        }
        one = httpx.post(f"{server.url}/models/iris/predict", json={"inputs": [5.1, 3.5, 1.4, 0.2]})
        assert one.json()["outputs"] == ["setosa"]
        assert httpx.get(f"{server.url}/readyz").json()["models"] == {"iris": "ready"}
    [cached] = list(cache.glob("*.skops"))
    written = cached.stat().st_mtime_ns
    # A second start reuses the cached model instead of training again.
    with serving(["--demo"], tmp_path, env=env) as server:
        assert httpx.get(f"{server.url}/models/iris").json()["state"] == "ready"
    assert cached.stat().st_mtime_ns == written
    assert list(cache.glob("*.skops")) == [cached]
