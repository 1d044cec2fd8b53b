"""A random forest's predictions computed tree by tree in the calling thread: what
scikit-learn computes with ``n_jobs=1``, without joblib's wrapper around each tree.

scikit-learn's forests predict through ``sklearn.utils.parallel.Parallel`` even when they run
one job: every tree's call is wrapped to carry the caller's configuration and warning filters
to a worker, so for each tree it enters ``config_context``, saves the warning filters, resets
them and adds every one back (a check against the others and, for a filter with a message or
module, a regular expression each). Measured on the benchmark's 100-tree forest
(docs/benchmarks.md, "The forest called tree by tree"): a 60-row call took 4.2 ms through
``predict_proba`` with the 11 filters a plain process has, 5.0 ms with the 16 a server
exporting traces has (``requests``, ``urllib3`` and OpenTelemetry add theirs at import), and
1.1 ms tree by tree: three quarters of a call was the wrapper, and its cost grew with every
library the process imported. With ``n_jobs=-1``, which a forest keeps from its training, a
56-row call took 23 ms here (two cores): a served batch is too small for threads to pay off.

Tree by tree, the sum runs in the order of ``estimators_``, as scikit-learn's sequential
backend runs it, with the same operations: the answers are identical, bit for bit, to
``n_jobs=1``'s (tested for classifiers and regressors, one output and several, with and
without missing values); several jobs sum in the order the threads finish, so their last bits
vary from call to call. Only the four forest classes themselves, exactly, are called this way
(a subclass may override what it predicts), alone or as the last step of a ``Pipeline``
(whose ``predict`` runs its steps' ``transform`` in order, then the forest's: so does this);
a forest's other methods (``apply``, ``predict_log_proba``, ...) are scikit-learn's own.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

# Each forest class's module and name: matched exactly, never by subclass.
_CLASSIFIERS = frozenset(
    {
        ("sklearn.ensemble._forest", "RandomForestClassifier"),
        ("sklearn.ensemble._forest", "ExtraTreesClassifier"),
    }
)
_REGRESSORS = frozenset(
    {
        ("sklearn.ensemble._forest", "RandomForestRegressor"),
        ("sklearn.ensemble._forest", "ExtraTreesRegressor"),
    }
)
_PIPELINE = ("sklearn.pipeline", "Pipeline")
# What the methods below read of a fitted forest besides its trees.
_CLASSIFIER_ATTRIBUTES = ("classes_", "n_classes_", "n_outputs_")


def tree_by_tree_methods(
    estimator: Any, *, whatever_its_jobs: bool = False
) -> dict[str, Callable[[Any], Any]]:
    """The forest's ``predict`` (and a classifier's ``predict_proba``), computed tree by
    tree, for one of the four forests or a ``Pipeline`` ending in one; empty for anything
    else, or a forest not fitted. Unless ``whatever_its_jobs``, also empty when scikit-learn
    would run the forest otherwise: its ``n_jobs`` asks for several jobs, or its ``verbose``
    for progress output."""
    forest = forest_in(estimator)
    if forest is None or (not whatever_its_jobs and not runs_one_job(forest)):
        return {}
    kind = (type(forest).__module__, type(forest).__name__)
    if kind in _REGRESSORS:
        methods: dict[str, Callable[[Any], Any]] = {"predict": _ForestRegression(forest)}
    elif all(hasattr(forest, name) for name in _CLASSIFIER_ATTRIBUTES):
        probabilities = _ForestProbabilities(forest)
        methods = {"predict": _ForestLabels(forest, probabilities), "predict_proba": probabilities}
    else:
        return {}
    if forest is estimator:
        return methods
    transforms = _transforms_before(estimator)
    return {name: _AfterTransforms(transforms, method) for name, method in methods.items()}


def forest_in(estimator: Any) -> Any | None:
    """The fitted forest ``estimator`` is, or the one a ``Pipeline`` (of pipelines) ends in."""
    kind = (type(estimator).__module__, type(estimator).__name__)
    if kind == _PIPELINE:
        steps = getattr(estimator, "steps", None)
        return forest_in(steps[-1][1]) if steps else None
    if kind not in _CLASSIFIERS and kind not in _REGRESSORS:
        return None
    trees = getattr(estimator, "estimators_", None)
    if not trees or not callable(getattr(estimator, "_validate_X_predict", None)):
        return None
    return estimator


def _transforms_before(pipeline: Any) -> list[Callable[[Any], Any]]:
    """What ``Pipeline.predict`` runs before its last step, in order: each step's
    ``transform`` (those of a pipeline inside it, in turn), "passthrough" and None skipped."""
    transforms: list[Callable[[Any], Any]] = []
    for _, step in pipeline.steps[:-1]:
        if step is not None and step != "passthrough":
            transforms.append(step.transform)
    last = pipeline.steps[-1][1]
    if (type(last).__module__, type(last).__name__) == _PIPELINE:
        transforms += _transforms_before(last)
    return transforms


class _AfterTransforms:
    """A pipeline's method: its steps' transforms, then its forest's method tree by tree."""

    def __init__(
        self, transforms: list[Callable[[Any], Any]], method: Callable[[Any], Any]
    ) -> None:
        self.transforms = transforms
        self.method = method

    def __call__(self, rows: Any) -> Any:
        for transform in self.transforms:
            rows = transform(rows)
        return self.method(rows)


def runs_one_job(forest: Any) -> bool:
    """Whether scikit-learn would run the forest's trees in one job without progress output
    (``n_jobs`` of None or 1, ``verbose`` 0)."""
    return not getattr(forest, "verbose", 0) and getattr(forest, "n_jobs", None) in (None, 1)


class _ForestProbabilities:
    """``ForestClassifier.predict_proba``: the mean of the trees' probabilities, per output."""

    def __init__(self, forest: Any) -> None:
        self.forest = forest

    def __call__(self, rows: Any) -> Any:
        import numpy as np

        forest = self.forest
        checked = forest._validate_X_predict(rows)
        sums = [
            np.zeros((checked.shape[0], classes), dtype=np.float64)
            for classes in np.atleast_1d(forest.n_classes_)
        ]
        for tree in forest.estimators_:
            prediction = tree.predict_proba(checked, check_input=False)
            if len(sums) == 1:
                sums[0] += prediction
            else:
                for output, proba in zip(sums, prediction, strict=True):
                    output += proba
        for proba in sums:
            proba /= len(forest.estimators_)
        return sums[0] if len(sums) == 1 else sums


class _ForestLabels:
    """``ForestClassifier.predict``: each output's class of highest mean probability."""

    def __init__(self, forest: Any, probabilities: _ForestProbabilities) -> None:
        self.forest = forest
        self.probabilities = probabilities

    def __call__(self, rows: Any) -> Any:
        import numpy as np

        forest = self.forest
        proba = self.probabilities(rows)
        if forest.n_outputs_ == 1:
            return forest.classes_.take(np.argmax(proba, axis=1), axis=0)
        labels = np.empty((proba[0].shape[0], forest.n_outputs_), dtype=forest.classes_[0].dtype)
        for output in range(forest.n_outputs_):
            labels[:, output] = forest.classes_[output].take(
                np.argmax(proba[output], axis=1), axis=0
            )
        return labels


class _ForestRegression:
    """``ForestRegressor.predict``: the mean of the trees' predictions."""

    def __init__(self, forest: Any) -> None:
        self.forest = forest

    def __call__(self, rows: Any) -> Any:
        import numpy as np

        forest = self.forest
        checked = forest._validate_X_predict(rows)
        rows_count = checked.shape[0]
        shape = (rows_count, forest.n_outputs_) if forest.n_outputs_ > 1 else (rows_count,)
        total = np.zeros(shape, dtype=np.float64)
        for tree in forest.estimators_:
            total += tree.predict(checked, check_input=False)
        total /= len(forest.estimators_)
        return total
