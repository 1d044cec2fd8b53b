"""What a fitted scikit-learn estimator's method answers: its outputs' names, dtypes and
shapes, told from what the estimator recorded when it was fitted.

Never by calling it: a trial on a mapped file would read its pages in, which prefault =
false promises not to do. The protocol's metadata lists these outputs from startup, and
every answer is sent as they say (``protocols/v2/outputs.py`` converts a number to the
declared dtype: a KMeans' int32 labels travel as the int64 its metadata says). Where the
estimator records nothing loadonce can read (a method it does not know, a regressor of
another library that keeps no count of its targets), nothing is declared, and the protocol
describes the model by its first answer."""

from __future__ import annotations

from typing import Any

from loadonce.core.signature import DEFAULT_OUTPUT, TensorInfo

# A classifier's methods, each a named output of one loaded copy; a request picks them
# (``outputs`` on the JSON route, requested outputs under /v2).
NAMED_OUTPUTS = (
    ("label", "predict"),
    ("probabilities", "predict_proba"),
    ("decision_function", "decision_function"),
    ("transform", "transform"),
)

# Estimators whose predict answers one integer per row: a cluster's index, a mixture's
# component, an outlier detector's 1 or -1 (int32 or int64 by estimator: int64 for all).
_LABELLING = ("clusterer", "density_estimator", "outlier_detector")
# The scores of a row, one number: an outlier detector's or a density's.
_SCORING = {"score_samples", "decision_function"}


def declared_outputs(estimator: Any, method: str, named: list[str]) -> list[TensorInfo]:
    """The outputs of ``method`` (the configured one, which a request that picks none gets),
    then, for a classifier, its other named methods (``named``); empty when not known."""
    import numpy as np

    kind = _estimator_type(estimator)
    # CatBoost's regressor has classes_ too (empty): a regressor is never described by them.
    classes = None if kind == "regressor" else getattr(estimator, "classes_", None)
    if isinstance(classes, np.ndarray) and classes.ndim == 1:
        return _classifier_outputs(classes, method, named)
    if isinstance(classes, list):
        # Several target columns: a row's labels, one per column.
        if not classes:
            return []
        if method == "predict":
            return [_output(_labels_dtype(classes), (None, len(classes)))]
        if method in ("predict_proba", "predict_log_proba"):
            # A row's probabilities, one array per column: a [columns, classes] tensor where
            # every column has as many classes, else one JSON document per row. Declared
            # from the classes (metadata listed no output until a first answer).
            counts = {len(c) for c in classes}
            if len(counts) == 1:
                return [_output("float64", (None, len(classes), counts.pop()))]
            return [_output("object", (None,))]
        return []
    if method == "predict" and kind == "regressor":
        shape = target_shape(estimator)
        return [] if shape is None else [_output("float64", (None, *shape))]
    if method == "predict" and kind in _LABELLING:
        return [_output("int64", (None,))]
    if method in _SCORING and kind in _LABELLING:
        return [_output("float64", (None,))]
    return []


def _output(dtype: str, shape: tuple[int | None, ...]) -> TensorInfo:
    # A model's one output keeps the protocol's name for an output the model names not.
    return TensorInfo(name=DEFAULT_OUTPUT, dtype=dtype, shape=shape)


def _classifier_outputs(classes: Any, method: str, named: list[str]) -> list[TensorInfo]:
    """A classifier's outputs, from its fitted classes: the configured method's first, then
    its other named methods."""
    count = len(classes)
    kinds = {
        "label": TensorInfo(name="label", dtype=_labels_dtype([classes]), shape=(None,)),
        "probabilities": TensorInfo(name="probabilities", dtype="float64", shape=(None, count)),
        "decision_function": TensorInfo(
            name="decision_function",
            dtype="float64",
            shape=(None,) if count == 2 else (None, count),
        ),
        "transform": TensorInfo(name="transform", dtype="float64", shape=(None, None)),
    }
    first = {attribute: name for name, attribute in NAMED_OUTPUTS}.get(method)
    if first is None:
        # Another method, the model's only output: predict_log_proba is known.
        return [_output("float64", (None, count))] if method == "predict_log_proba" else []
    return [kinds[first]] + [kinds[name] for name in named if name != first]


def _labels_dtype(classes: list[Any]) -> str:
    """Text when any target's classes are text, else the numbers' common dtype."""
    import numpy as np

    if any(c.dtype.kind in "OSU" for c in classes):
        return "string"
    return str(np.result_type(*classes).name)


def _estimator_type(estimator: Any) -> str | None:
    """The estimator's kind as scikit-learn's tags say it (a pipeline's are its last step's):
    "regressor", "classifier", "clusterer", "outlier_detector", "density_estimator"...; None
    for an estimator without tags."""
    try:
        kind = estimator.__sklearn_tags__().estimator_type
    except Exception:  # an estimator of another library, without scikit-learn's tags
        kind = getattr(estimator, "_estimator_type", None)
    return kind if isinstance(kind, str) else None


def target_shape(regressor: Any) -> tuple[int, ...] | None:
    """One row's prediction: ``()`` for one target, ``(k,)`` for k targets (a regressor
    fitted on a column of k targets predicts rows of k, on a 1-D target single numbers).
    None where the regressor records it in nothing read here."""
    import numpy as np
    from sklearn.multioutput import MultiOutputRegressor, RegressorChain

    final = _final_step(regressor)
    if isinstance(final, MultiOutputRegressor | RegressorChain):
        return (len(final.estimators_),)
    one_d = getattr(final, "_predict_1d", None)  # PLS: a 1-D target predicts single numbers
    if one_d is True:
        return ()
    outputs = getattr(final, "n_outputs_", None)  # trees, forests, neural networks
    if isinstance(outputs, int) and not isinstance(outputs, bool):
        return () if outputs == 1 else (outputs,)
    training_dim = getattr(final, "_training_dim", None)  # TransformedTargetRegressor
    if training_dim == 1:
        return ()
    # Meta-estimators answer as the fitted estimator they end with, or as their members
    # (bagging, voting, boosting); ``estimator_`` last: in a bagging or boosting ensemble it
    # is the template, never fitted (RANSAC's is the fitted one).
    for attribute in ("regressor_", "final_estimator_", "estimators_", "estimator_"):
        inner = getattr(final, attribute, None)
        if attribute == "estimators_":
            # A list of fitted members; gradient boosting's array of trees per stage is not.
            inner = inner[0] if isinstance(inner, list) and inner else None
        if inner is not None:
            found = target_shape(inner)
            # A 2-D target of one column stays a column through TransformedTargetRegressor.
            return (1,) if found == () and training_dim == 2 else found
    targets = _booster_targets(final)
    if targets is not None:
        return () if targets == 1 else (targets,)
    if _single_output_only(final):
        return ()
    for attribute in ("coef_", "_y", "dual_coef_", "y_train_"):
        # Linear models' coefficients (k, features) or (features,); nearest neighbours'
        # training targets; kernel ridge's dual coefficients (samples, k); a Gaussian
        # process's targets (which answers one column of a 2-D target as single numbers).
        recorded = getattr(final, attribute, None)
        if isinstance(recorded, np.ndarray) and recorded.ndim in (1, 2):
            if recorded.ndim == 1:
                return ()
            count = recorded.shape[0] if attribute == "coef_" else recorded.shape[1]
            return () if count == 1 and attribute == "y_train_" else (count,)
    return None


def _booster_targets(estimator: Any) -> int | None:
    """How many targets an XGBoost or CatBoost scikit-learn regressor was fitted on (what
    their tags do not say: CatBoost's say one target even for MultiRMSE); it predicts single
    numbers for one. XGBoost's booster configuration counts them; CatBoost keeps a bias per
    target (a number for one, a list for several)."""
    import json

    try:
        booster = getattr(estimator, "get_booster", None)
        if callable(booster):
            learner = json.loads(booster().save_config())["learner"]["learner_model_param"]
            return int(learner["num_target"])
        scale_and_bias = getattr(estimator, "get_scale_and_bias", None)
        if callable(scale_and_bias):
            bias = scale_and_bias()[1]
            return len(bias) if isinstance(bias, list) else 1
    except Exception:  # not fitted, or a version that words its configuration otherwise
        return None
    return None


def _single_output_only(estimator: Any) -> bool:
    """Whether scikit-learn's tags say it takes one target only (a histogram booster, a
    support vector regressor, LightGBM's): it then predicts single numbers. Read after the
    counts a multi-target estimator records, since some that take several say otherwise."""
    try:
        targets = estimator.__sklearn_tags__().target_tags
    except Exception:
        return False
    return targets.multi_output is False


def _final_step(estimator: Any) -> Any:
    """The step of a Pipeline (nested or not) that answers; the estimator itself else."""
    steps = getattr(estimator, "steps", None)
    while isinstance(steps, list) and steps and isinstance(steps[-1], tuple):
        estimator = steps[-1][1]
        steps = getattr(estimator, "steps", None)
    return estimator
