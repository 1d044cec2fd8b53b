"""The two benchmark models, built deterministically and saved as skops files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import numpy.typing as npt
import skops.io
from sklearn.datasets import load_iris, make_classification
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression

# skops does not trust scikit-learn's tree internals by default; the benchmark vouches for them.
TRUSTED_TYPES = ["sklearn.tree._tree.Tree"]


def build(directory: Path) -> dict[str, tuple[Path, npt.NDArray[np.float64]]]:
    """{name: (artifact, one example row)}, trained on first use and reused after."""
    directory.mkdir(parents=True, exist_ok=True)
    iris_path = directory / "iris.skops"
    forest_path = directory / "forest.skops"
    iris = load_iris()
    features, labels = make_classification(n_samples=20000, n_features=32, random_state=0)
    if not iris_path.exists():
        skops.io.dump(LogisticRegression(max_iter=1000).fit(iris.data, iris.target), iris_path)
    if not forest_path.exists():
        forest = RandomForestClassifier(n_estimators=100, max_depth=12, random_state=0, n_jobs=1)
        skops.io.dump(forest.fit(features, labels), forest_path)
    return {"iris": (iris_path, iris.data[0]), "forest": (forest_path, features[0])}


def load(path: Path) -> object:
    return skops.io.load(path, trusted=TRUSTED_TYPES)
