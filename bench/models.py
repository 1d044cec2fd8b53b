"""The two benchmark models, built deterministically and saved as skops files (loadonce and
the plain FastAPI apps) and as joblib files (the peers: MLServer's scikit-learn runtime reads
joblib; LitServe's app too)."""

from __future__ import annotations

from pathlib import Path

import joblib
import numpy as np
import numpy.typing as npt
import skops.io
from sklearn.datasets import load_iris, make_classification
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression

# skops does not trust scikit-learn's tree internals by default; the benchmark vouches for them.
TRUSTED_TYPES = ["sklearn.tree._tree.Tree"]


def build(
    directory: Path, names: tuple[str, ...] = ("iris", "forest")
) -> dict[str, tuple[Path, npt.NDArray[np.float64]]]:
    """{name: (artifact, one example row)} for the models named, trained on first use and
    reused after."""
    directory.mkdir(parents=True, exist_ok=True)
    built: dict[str, tuple[Path, npt.NDArray[np.float64]]] = {}
    if "iris" in names:
        iris = load_iris()
        path = directory / "iris.skops"
        if not path.exists():
            skops.io.dump(LogisticRegression(max_iter=1000).fit(iris.data, iris.target), path)
        built["iris"] = (path, iris.data[0])
    if "forest" in names:
        features, labels = make_classification(n_samples=20000, n_features=32, random_state=0)
        path = directory / "forest.skops"
        if not path.exists():
            forest = RandomForestClassifier(
                n_estimators=100, max_depth=12, random_state=0, n_jobs=1
            )
            skops.io.dump(forest.fit(features, labels), path)
        built["forest"] = (path, features[0])
    for path, _ in built.values():
        if not path.with_suffix(".joblib").exists():
            joblib.dump(load(path), path.with_suffix(".joblib"))
    return built


def load(path: Path) -> object:
    return skops.io.load(path, trusted=TRUSTED_TYPES)
