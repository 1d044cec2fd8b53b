"""scikit-learn estimators from skops files (safe) or joblib/pickle files (trusted or pinned)."""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from loadonce.core.errors import InvalidInputError
from loadonce.core.imports import import_optional
from loadonce.core.inputs import as_typed_batch
from loadonce.core.integrity import file_sha256
from loadonce.core.sparse import dense_if_sparse
from loadonce.core.spec import ModelSpec
from loadonce.runtimes._base import (
    SELECTED_OUTPUTS,
    InputSignature,
    Predictor,
    Runtime,
    model_file,
)
from loadonce.runtimes._columns import Columns, features_in, first_step, named_columns
from loadonce.runtimes._tensors import stack_named_inputs
from loadonce.runtimes.sklearn_encoders import (
    ColumnKind,
    check_known,
    column_kinds,
    encodes_missing,
    is_passthrough,
    nulls_as_none,
    refuse_missing,
)
from loadonce.runtimes.sklearn_forests import forest_in, runs_one_job, tree_by_tree_methods
from loadonce.runtimes.sklearn_outputs import NAMED_OUTPUTS, declared_outputs

logger = logging.getLogger("loadonce")

PICKLE_SUFFIXES = (".joblib", ".pkl", ".pickle")
SKOPS_SUFFIXES = (".skops",)


class UntrustedArtifactError(Exception):
    """The artifact would run code or build types nobody declared as trusted."""


class EstimatorPredictor(Predictor):
    """Calls one method (``predict`` unless configured) of a fitted estimator on a batch; for a
    classifier, a request may ask for several of its methods' results by name instead.

    With ``columns`` (an estimator fitted on a DataFrame), each column is a named input: a
    batch is one array per column, merged across requests like any multi-input batch, and
    the estimator gets it as a DataFrame of the fitted columns."""

    def __init__(
        self,
        estimator: Any,
        *,
        method: str,
        signature: InputSignature | None,
        columns: Columns | None = None,
        known_in_rows: Mapping[int, frozenset[Any]] | None = None,
        no_missing_in_rows: frozenset[int] = frozenset(),
        none_in_rows: frozenset[int] = frozenset(),
        tree_by_tree: bool = True,
    ) -> None:
        # A forest's predictions, tree by tree without joblib's per-tree wrapper and whatever
        # jobs it kept from training (sklearn_forests.py); any other estimator's methods, and
        # a forest's with ``tree_by_tree`` off, as they are.
        faster = tree_by_tree_methods(estimator, whatever_its_jobs=True) if tree_by_tree else {}
        bound = faster.get(method) or getattr(estimator, method, None)
        if not callable(bound):
            offered = ", ".join(
                m for m in _SERVABLE_METHODS if callable(getattr(estimator, m, None))
            )
            raise TypeError(
                f"{type(estimator).__name__} has no method {method!r}; options.method names "
                f"the one served, among {offered or 'none of ' + ', '.join(_SERVABLE_METHODS)}"
            )
        self.estimator = estimator
        self._method = bound
        # Whether a forest's trees are summed here rather than through scikit-learn's methods.
        self.tree_by_tree = bool(faster)
        # scikit-learn's predict methods compute each row on its own (trees, neighbours,
        # linear models through BLAS, whose last bits may vary with the batch's size).
        self.batches_exactly = True
        self.signature = None if columns is not None else signature
        self._columns = columns
        # The values an encoder refusing unknown ones knows, by position in a row.
        self._known_in_rows = dict(known_in_rows or {})
        # The columns, by position in a row, where the model fails on a missing value.
        self._no_missing_in_rows = no_missing_in_rows
        # The columns, by position in a row, where the model learnt None as a value.
        self._none_in_rows = none_in_rows
        if columns is not None:
            self.inputs = list(columns.inputs)
        self._allows_nan = _allows_nan(estimator)
        # Named columns whose missing values the model takes care of (an imputer in its
        # ColumnTransformer), when not all do.
        self._nan_columns = frozenset() if self._allows_nan else nan_columns(estimator)
        self.missing_as_nan = self._allows_nan or bool(self._nan_columns)
        # Nulls are read as missing values (NaN) where the model takes NaN, or learnt None
        # somewhere (those become None again; a null anywhere else is still refused).
        self._reads_nulls = (
            self.missing_as_nan
            or bool(none_in_rows)
            or (columns is not None and bool(columns.learnt_none))
        )
        self._float32 = _computes_in_float32(estimator)
        # scikit-learn hides a method an estimator cannot offer (available_if): SVC without
        # probability=True has no predict_proba here.
        self._named = {
            name: found
            for name, attribute in NAMED_OUTPUTS
            if callable(found := faster.get(attribute) or getattr(estimator, attribute, None))
        }
        self.outputs = declared_outputs(estimator, method, list(self._named))
        if self.outputs and self.outputs[0].name in self._named:
            # A classifier's methods: a request picks the ones computed for it.
            self.request_parameters = frozenset({SELECTED_OUTPUTS})
        # A classifier of several outputs (a forest fitted on several target columns):
        # predict_proba answers a list of one array per output, each of every row.
        self._per_output = isinstance(getattr(estimator, "classes_", None), list)

    def prepare(self, examples: list[Any]) -> Any:
        import numpy as np

        if self._columns is not None:
            return self._prepare_columns(examples, self._columns)
        batch = (
            as_typed_batch(examples, self.signature, missing_as_nan=self._reads_nulls)
            if self.signature is not None and self.signature.dtype is not None
            else examples
        )
        if isinstance(batch, np.ndarray) and batch.ndim == 2:
            for position in self._none_in_rows:
                batch[:, position] = nulls_as_none(batch[:, position])
            if self._reads_nulls and not self.missing_as_nan and batch.dtype == object:
                # Nulls were read only for the columns that learnt None: in any other text
                # column, refused as before (a number's column: _refuse_missing_in_rows).
                kinds = self.signature.columns if self.signature is not None else None
                text = [
                    position
                    for position in range(batch.shape[1])
                    if position not in self._none_in_rows
                    and (kinds is None or kinds[position] == "string")
                ]
                refuse_missing(batch, text, type(self.estimator).__name__)
            refuse_missing(batch, self._no_missing_in_rows, type(self.estimator).__name__)
            for position, known in self._known_in_rows.items():
                check_known(f"column {position}", batch[:, position].tolist(), known)
        if self.signature is not None and self.signature.columns is not None:
            self._refuse_missing_in_rows(batch, self.signature.columns)
        if not isinstance(batch, np.ndarray) or batch.dtype.kind not in "fiu":
            return batch  # text: the model's own checks answer
        if self.signature is not None and not self._allows_nan and not np.isfinite(batch).all():
            raise InvalidInputError(
                f"{type(self.estimator).__name__} does not accept NaN or infinity; "
                "send finite numbers"
            )
        # Compared value by value: a NaN (which a model that takes missing values lets
        # through) made the batch's maximum NaN, never over, and hid an infinity or 1e300
        # beside it (the model's 500, and a traceback per request).
        if self._float32 and batch.size and bool((np.abs(batch) > _FLOAT32_MAX).any()):
            # Its trees compare float32 values: scikit-learn refuses what float32 cannot hold
            # (the model's 500 for the client's number).
            raise InvalidInputError(
                f"a value is outside the range of float32, in which "
                f"{type(self.estimator).__name__} computes"
            )
        return batch

    def _refuse_missing_in_rows(self, batch: Any, dtypes: tuple[str | None, ...]) -> None:
        """In rows of several kinds, NaN or infinity in a column whose missing values the
        model does not take care of (null, and a number's text "nan", reached it: its 500)."""
        if self._allows_nan:
            return
        for position, dtype in enumerate(dtypes):
            if dtype is None or str(position) in self._nan_columns:
                continue
            if position in self._none_in_rows:
                continue
            for value in batch[:, position].tolist():
                if isinstance(value, float) and not math.isfinite(value):
                    raise InvalidInputError(
                        f"column {position}: {type(self.estimator).__name__} does not accept "
                        "a missing value (null), NaN or infinity here"
                    )

    def _prepare_columns(self, examples: list[Any], columns: Columns) -> dict[str, Any]:
        import numpy as np

        if len(self.inputs) == 1:
            # One column: the Open Inference Protocol's rows are its values, not objects.
            name = self.inputs[0].name
            examples = [e if isinstance(e, Mapping) else {name: e} for e in examples]
        typed, examples = columns.request_inputs(examples)
        batch = stack_named_inputs(examples, typed, missing_as_nan=self._reads_nulls)
        for name in columns.learnt_none:
            batch[name] = nulls_as_none(batch[name])
        if not self._allows_nan:
            for tensor in self.inputs:
                if tensor.name in self._nan_columns or tensor.name in columns.learnt_none:
                    continue
                values = batch[tensor.name]
                if values.dtype.kind == "f" and not np.isfinite(values).all():
                    raise InvalidInputError(
                        f"column '{tensor.name}': {type(self.estimator).__name__} does not "
                        "accept a missing value (null), NaN or infinity; send finite numbers"
                    )
                # A null reaches a text column as NaN only when some column takes it (else it
                # was refused as not text): only then is each value looked at.
                nulls_made_nan = self._reads_nulls and values.dtype.kind == "O"
                if nulls_made_nan and any(v is None or v != v for v in values):
                    raise InvalidInputError(
                        f"column '{tensor.name}': {type(self.estimator).__name__} does not "
                        "accept a missing value (null) here"
                    )
        columns.check_known(batch)
        return batch

    def _model_input(self, batch: Any) -> Any:
        # The DataFrame is built on the merged batch, once per call to the model.
        return batch if self._columns is None else self._columns.frame(batch)

    def predict(self, batch: Any) -> Sequence[Any]:
        model_input = self._model_input(batch)
        rows: Sequence[Any] = self._rows(self._method(model_input), len(model_input))
        return rows

    def _rows(self, result: Any, rows: int) -> Any:
        """One entry per row: a multi-output classifier's list of per-output arrays (each of
        every row) becomes, for each row, its list of per-output values. Handed out as it
        was, each row got one output's answer for every row (with batching, other requests'
        rows), or a 500 when the counts differed."""
        if self._per_output and isinstance(result, list) and _one_per_output(result, rows):
            return [[output[row] for output in result] for row in range(rows)]
        return result

    def predict_with(self, batch: Any, parameters: Mapping[str, Any]) -> Sequence[Any]:
        """``outputs``: the names picked; each example's output is then ``{name: value}``."""
        names = parameters.get(SELECTED_OUTPUTS)
        if not names:
            return self.predict(batch)
        unknown = [name for name in names if name not in self._named]
        if unknown:
            raise InvalidInputError(
                f"unknown output '{unknown[0]}'; the model's outputs are {', '.join(self._named)}"
            )
        model_input = self._model_input(batch)
        rows = len(model_input)
        results = {
            name: self._rows(dense_if_sparse(self._named[name](model_input)), rows)
            for name in names
        }
        return [{name: results[name][row] for name in names} for row in range(rows)]


# The methods of a fitted estimator that answer one result per row, which options.method may
# name (the error for one it lacks lists those it has).
_SERVABLE_METHODS = (
    "predict",
    "predict_proba",
    "predict_log_proba",
    "decision_function",
    "score_samples",
    "transform",
)


def default_method(estimator: Any) -> str:
    """``predict``; ``transform`` for a fitted transformer that has no ``predict`` (a scaler,
    PCA, an encoder, a text vectorizer, or a pipeline of them): what such a model is used
    for. (It failed its load, "has no method 'predict'", unless options.method said so.)"""
    if not callable(getattr(estimator, "predict", None)) and callable(
        getattr(estimator, "transform", None)
    ):
        return "transform"
    return "predict"


def _one_per_output(result: list[Any], rows: int) -> bool:
    """Whether ``result`` is a list of arrays that each hold every row."""
    return bool(result) and all(
        getattr(output, "ndim", 0) >= 1 and output.shape[0] == rows for output in result
    )


def _signature_of(estimator: Any, kinds: Mapping[int, ColumnKind]) -> InputSignature | None:
    """What one example is, from what the estimator recorded when it was fitted: a row of
    ``n_features_in_`` numbers; a row of text where every column reaches an encoder of text
    categories (a OneHotEncoder fitted on an array of strings, also behind an imputer or in a
    ColumnTransformer); a row of columns of their own kinds where only some do (``kinds``,
    by position: sklearn_encoders.py); one text where it begins with a text vectorizer
    (which records no count). None: unknown, and the model's own checks answer."""
    n_features = features_in(estimator)
    if n_features is None:
        if hasattr(first_step(estimator), "build_analyzer"):  # CountVectorizer, Tfidf...
            return InputSignature(shape=(), dtype="string")
        return None
    # A column no encoder reads is a number: what scikit-learn's other steps convert to.
    dtypes = tuple(
        kinds[position].dtype if position in kinds else "float64" for position in range(n_features)
    )
    if all(dtype == "string" for dtype in dtypes):
        return InputSignature(shape=(n_features,), dtype="string")
    # An encoder fitted on an object array of numbers takes them as Python numbers only
    # (NumPy's are its 500): such a row is one of several kinds too.
    objects = any(kind.objects for kind in kinds.values())
    if objects or any(dtype in ("string", None) for dtype in dtypes):
        return InputSignature(shape=(n_features,), dtype="object", columns=dtypes)
    return InputSignature(shape=(n_features,), dtype="float64")


_FLOAT32_MAX = 3.4028234663852886e38
# scikit-learn's estimators of trees, which convert their input to float32 (its trees'
# dtype) before anything else.
_FLOAT32_BASES = ("BaseDecisionTree", "BaseForest", "BaseGradientBoosting", "IsolationForest")


def _computes_in_float32(estimator: Any) -> bool:
    return any(
        kind.__name__ in _FLOAT32_BASES and kind.__module__.startswith("sklearn.")
        for kind in type(estimator).__mro__
    )


def _allows_nan(estimator: Any) -> bool:
    """Whether NaN (a missing value) in any input is taken care of: an imputer takes it, or
    reaches a step that takes NaN (scikit-learn's own ``allow_nan`` tag: a histogram
    booster) through steps that pass it on (a scaler), never a step that refuses it. For a
    ColumnTransformer, each of its transformers, followed by the pipeline's later steps."""
    return _handles_missing(_steps_of(estimator))


def nan_columns(estimator: Any) -> frozenset[str]:
    """The named columns whose missing values are taken care of, where the model's first
    step is a ColumnTransformer: each by its own transformer (an imputer), then the
    pipeline's later steps. Empty for any other model."""
    steps = _steps_of(estimator)
    transformers = getattr(steps[0], "transformers_", None) if steps else None
    if not isinstance(transformers, list):
        return frozenset()
    taking: set[str] = set()
    for entry in transformers:
        if not (isinstance(entry, tuple) and len(entry) == 3):
            continue
        _, step, columns = entry
        if not isinstance(columns, list | tuple) or step == "drop":
            continue
        if _handles_missing([*_steps_of(step), *steps[1:]]):
            taking.update(str(column) for column in columns)
    return frozenset(taking)


def _steps_of(estimator: Any) -> list[Any]:
    """A pipeline's steps in order (nested pipelines flattened); any other estimator alone."""
    steps = getattr(estimator, "steps", None)
    if isinstance(steps, list) and steps and isinstance(steps[0], tuple):
        return [inner for _, step in steps for inner in _steps_of(step)]
    return [estimator]


def _handles_missing(steps: list[Any]) -> bool:
    for index, step in enumerate(steps):
        if is_passthrough(step):
            continue
        if type(step).__module__.startswith("sklearn.impute"):
            return True  # SimpleImputer, KNNImputer, IterativeImputer, MissingIndicator
        if encodes_missing(step):
            return True  # an encoder that turns it into numbers itself
        transformers = getattr(step, "transformers_", None)
        if isinstance(transformers, list):
            rest = steps[index + 1 :]
            branches = [
                entry[1] for entry in transformers if isinstance(entry, tuple) and len(entry) == 3
            ]
            return all(
                branch == "drop" or _handles_missing([*_steps_of(branch), *rest])
                for branch in branches
            )
        try:
            takes_nan = bool(step.__sklearn_tags__().input_tags.allow_nan)
        except AttributeError:
            return False
        if not takes_nan:
            return False
        if not hasattr(step, "transform"):
            return True  # an estimator that takes NaN as a missing value (a booster)
        # A transformer that passes NaN on (a scaler, an encoder): the next step decides.
    return True  # passed on to the answer


def _load_skops(path: Path, spec: ModelSpec) -> Any:
    skops_io = import_optional("skops.io", extra="sklearn")
    allowed = set(spec.options.get("trusted_types", []))
    untrusted = skops_io.get_untrusted_types(file=path)
    refused = sorted(set(untrusted) - allowed)
    if refused:
        raise UntrustedArtifactError(
            f"the skops file holds types that are not trusted: {', '.join(refused)}; "
            "if you trust them, list them in the model's options.trusted_types"
        )
    return skops_io.load(path, trusted=list(untrusted))


def _load_pickle(path: Path, spec: ModelSpec, *, mapped: bool = True) -> Any:
    if not (spec.trust or spec.sha256):
        raise UntrustedArtifactError(
            "refusing to unpickle: loading a pickle or joblib file runs code from the file. "
            f'If this file is the one you expect, pin it with sha256 = "{file_sha256(path)}" '
            "in the model's config, or pass --trust (trust = true) if you trust its origin; "
            "or save the model with skops instead"
        )
    joblib = import_optional("joblib", extra="sklearn")
    if mapped and spec.share == "mmap" and path.suffix.lower() == ".joblib":
        compression = compression_of(path)
        if compression is None:
            # NumPy arrays in the file are mapped read-only: every worker shares them.
            try:
                return joblib.load(path, mmap_mode="r")
            except ValueError as exc:
                if "mmap length is greater than file size" in str(exc):
                    # An array it maps runs past the file's end (NumPy's own words).
                    raise ValueError(
                        "the joblib file is truncated: an array runs past its end"
                    ) from None
                raise
        logger.warning(
            "model '%s': %s is %s-compressed, so each worker holds its own copy of its "
            "arrays; 'loadonce convert %s NEW.joblib --trust' rewrites it to be shared",
            spec.name,
            path,
            compression,
            path,
        )
    return joblib.load(path)


# The first bytes of the compressed files joblib writes (joblib.dump(..., compress=...)).
_COMPRESSION_MAGIC = (
    (b"\x1f\x8b", "gzip"),
    (b"BZh", "bz2"),
    (b"\xfd7zXZ\x00", "xz"),
    (b"\x5d\x00\x00", "lzma"),
    (b"\x04\x22\x4d\x18", "lz4"),
    (b"\x78", "zlib"),
)


def compression_of(path: Path) -> str | None:
    """How a joblib file is compressed, or None: only an uncompressed one can be mapped.
    (An uncompressed joblib file is a pickle stream, which starts with the opcode 0x80.)"""
    with path.open("rb") as stream:
        head = stream.read(6)
    if head.startswith(b"\x80"):
        return None
    for magic, name in _COMPRESSION_MAGIC:
        if head.startswith(magic):
            return name
    return None


def mapped_array_bytes(value: Any, depth: int = 4, seen: set[int] | None = None) -> int:
    """The bytes of the arrays mapped from its file that an estimator (or a pipeline of
    them) holds, each counted once."""
    import numpy as np

    seen = set() if seen is None else seen
    if isinstance(value, np.memmap):
        if id(value) in seen:
            return 0
        seen.add(id(value))
        return int(value.nbytes)
    if depth == 0:
        return 0
    if isinstance(value, dict):
        children: Any = value.values()
    elif isinstance(value, list | tuple):
        children = value
    elif hasattr(value, "__dict__"):
        children = vars(value).values()
    else:
        return 0
    return sum(mapped_array_bytes(child, depth - 1, seen) for child in children)


# What loading a pickle imports besides joblib: the modules of the estimator it holds. These
# families hold most fitted models (together 18 MiB of imports, measured); an estimator from
# elsewhere is imported by each worker at its load.
_ESTIMATOR_FAMILIES = tuple(
    f"sklearn.{family}"
    for family in (
        "compose",
        "decomposition",
        "ensemble",
        "impute",
        "linear_model",
        "neighbors",
        "pipeline",
        "preprocessing",
        "svm",
        "tree",
    )
)


class SklearnRuntime(Runtime):
    name = "sklearn"
    reads_input_shape = False
    options = frozenset({"trusted_types", "method", "columns", "tree_by_tree"})
    suffixes = SKOPS_SUFFIXES + PICKLE_SUFFIXES
    # A fitted estimator only reads its attributes in predict, and NumPy releases the GIL, so
    # one instance serves concurrent calls.
    default_concurrency = "shared"

    def libraries_for(self, spec: ModelSpec) -> tuple[str, ...]:
        # skops.io imports every module of scikit-learn to list the types it trusts (with
        # PyTorch when installed, through scikit-learn's array API support: 211 MiB measured):
        # imported for a skops file only, never for a pickle, which does not use it.
        if _is_skops(spec):
            return ("sklearn", "skops.io")
        return ("sklearn", "joblib", *_ESTIMATOR_FAMILIES)

    def runs_code(self, spec: ModelSpec) -> bool:
        # Anything but skops is read as a pickle (see load).
        return spec.artifact is not None and not _is_skops(spec)

    def load(self, spec: ModelSpec) -> Predictor:
        if spec.artifact is None:
            raise ValueError("the sklearn runtime needs an artifact path")
        path = spec.artifact
        model_file(path)
        if path.suffix.lower() in SKOPS_SUFFIXES:
            estimator = _load_skops(path, spec)
        else:
            estimator = _load_pickle(path, spec)
            if mapped_array_bytes(estimator) and _needs_writable_arrays(estimator):
                # libsvm's predict_proba takes only writable arrays ("buffer source array is
                # read-only"): every request for an SVC's probabilities failed on the mapped
                # file. Its arrays (support vectors) are this worker's own copy instead.
                logger.info(
                    "model '%s': %s computes only from writable arrays: each worker loads its "
                    "own copy",
                    spec.name,
                    type(estimator).__name__,
                )
                estimator = _load_pickle(path, spec, mapped=False)
        columns = named_columns(estimator, spec.options.get("columns", {}))
        n_features = features_in(estimator)
        kinds = column_kinds(estimator, n_features) if columns is None and n_features else {}
        signature = _signature_of(estimator, kinds)
        method = spec.options.get("method")
        method = default_method(estimator) if method is None else str(method)
        tree_by_tree = spec.options.get("tree_by_tree", True)
        if not isinstance(tree_by_tree, bool):
            raise ValueError("options.tree_by_tree must be true or false")
        predictor = EstimatorPredictor(
            estimator,
            method=method,
            signature=signature,
            columns=columns,
            known_in_rows={p: k.known for p, k in kinds.items() if k.known is not None},
            no_missing_in_rows=frozenset(p for p, k in kinds.items() if not k.missing),
            none_in_rows=frozenset(p for p, k in kinds.items() if k.learnt_none),
            tree_by_tree=tree_by_tree,
        )
        forest = forest_in(estimator)
        if predictor.tree_by_tree and not runs_one_job(forest):
            logger.info(
                "model '%s': %s(n_jobs=%s, verbose=%s) is called tree by tree in the model's "
                "thread as with n_jobs=1 (the same answers, without joblib's threads, which cost "
                "more than they give on a served batch); options.tree_by_tree = false keeps "
                "scikit-learn's own methods",
                spec.name,
                type(forest).__name__,
                getattr(forest, "n_jobs", None),
                getattr(forest, "verbose", 0),
            )
        # Shared when the arrays it holds mapped are most of the file: a forest maps its
        # small classes_ but copies its trees (the process's mappings of the file say less:
        # numpy maps from the page before each array, and a copied array's mapping lingers).
        predictor.shares_weights = 2 * mapped_array_bytes(estimator) >= path.stat().st_size
        return predictor


def _needs_writable_arrays(estimator: Any) -> bool:
    """Whether a step of the model is one of scikit-learn's libsvm estimators (SVC, NuSVC,
    SVR, NuSVR, OneClassSVM), whose native code refuses read-only arrays. Told from the
    classes, not by trying the methods: a trial on a mapped file would read its pages in,
    which prefault = false promises not to do."""
    steps = [estimator, *(step for _, step in getattr(estimator, "steps", None) or [])]
    return any(type(step).__module__.startswith("sklearn.svm") for step in steps)


def _is_skops(spec: ModelSpec) -> bool:
    return spec.artifact is not None and spec.artifact.suffix.lower() in SKOPS_SUFFIXES
