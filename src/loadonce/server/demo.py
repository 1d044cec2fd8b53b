"""The built-in demo: an iris classifier trained deterministically, cached as a skops file."""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from loadonce.core.errors import ConfigError
from loadonce.core.spec import ModelSpec

DEMO_EXAMPLE = [5.1, 3.5, 1.4, 0.2]  # the first iris sample: a setosa


CACHE_VARIABLE = "LOADONCE_CACHE_DIR"


def cache_dir() -> Path:
    """$LOADONCE_CACHE_DIR, else $XDG_CACHE_HOME/loadonce, else ~/.cache/loadonce."""
    explicit = os.environ.get(CACHE_VARIABLE)
    if explicit:
        return Path(explicit)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "loadonce"


def demo_artifact() -> Path:
    """The demo model's file, trained and written on first use (atomically), then reused.

    Trained in a child process: the command that asks (the supervisor, ``loadonce plan``)
    never imports scikit-learn itself, which added about 200 MiB to a process that serves
    nothing (the workers load the model from the file)."""
    try:
        sklearn_version = importlib.metadata.version("scikit-learn")
        importlib.metadata.version("skops")
    except importlib.metadata.PackageNotFoundError:
        raise ConfigError(
            "the demo needs scikit-learn and skops: pip install 'loadonce[sklearn]'"
        ) from None
    # One file per scikit-learn version: a skops file is best read by the version that wrote it.
    path = cache_dir() / f"demo-iris-logreg-sklearn{sklearn_version}.skops"
    if not path.is_file():
        # The cache must be a directory loadonce can write: checked here, in one line (the
        # training child's traceback and this process's said it in thirty).
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryFile(dir=path.parent):
                pass
        except OSError as exc:
            raise ConfigError(
                f"the demo's cache directory {str(path.parent)!r} cannot be written "
                f"({exc.strerror or exc}): set LOADONCE_CACHE_DIR to a writable directory"
            ) from None
        trained = subprocess.run(
            [sys.executable, "-m", __name__, str(path)], capture_output=True, text=True
        )
        if trained.returncode != 0:
            last = (trained.stderr.strip().splitlines() or ["no output"])[-1]
            raise ConfigError(f"the demo model could not be trained and cached: {last}")
    return path


def _train(path: Path) -> None:
    import skops.io
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

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


def demo_spec() -> ModelSpec:
    return ModelSpec(name="iris", artifact=demo_artifact(), version="1", warmup=DEMO_EXAMPLE)


if __name__ == "__main__":
    _train(Path(sys.argv[1]))
