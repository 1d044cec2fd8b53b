"""The built-in demo: an iris classifier trained deterministically, cached as a skops file."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from loadonce.core.errors import ConfigError
from loadonce.core.spec import ModelSpec

DEMO_EXAMPLE = [5.1, 3.5, 1.4, 0.2]  # the first iris sample: a setosa


def cache_dir() -> Path:
    """$LOADONCE_CACHE_DIR, else $XDG_CACHE_HOME/loadonce, else ~/.cache/loadonce."""
    explicit = os.environ.get("LOADONCE_CACHE_DIR")
    if explicit:
        return Path(explicit)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "loadonce"


def demo_artifact() -> Path:
    """The demo model's file, trained and written on first use (atomically), then reused."""
    try:
        import sklearn
        import skops.io
        from sklearn.datasets import load_iris
        from sklearn.linear_model import LogisticRegression
    except ImportError:
        raise ConfigError(
            "the demo needs scikit-learn and skops: pip install 'loadonce[sklearn]'"
        ) from None
    # One file per scikit-learn version: a skops file is best read by the version that wrote it.
    path = cache_dir() / f"demo-iris-logreg-sklearn{sklearn.__version__}.skops"
    if path.is_file():
        return path
    iris = load_iris()  # ships inside scikit-learn: no download
    labels = iris.target_names[iris.target]
    # lbfgs on a fixed dataset with no random start is deterministic.
    estimator = LogisticRegression(max_iter=1000).fit(iris.data, labels)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Written beside the target and renamed, so a concurrent reader never sees half a file.
    handle, temporary = tempfile.mkstemp(dir=path.parent, suffix=".partial")
    os.close(handle)
    try:
        skops.io.dump(estimator, temporary)
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)
    return path


def demo_spec() -> ModelSpec:
    return ModelSpec(name="iris", artifact=demo_artifact(), version="1", warmup=DEMO_EXAMPLE)
