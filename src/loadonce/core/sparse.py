"""SciPy's sparse matrices among a model's outputs (a OneHotEncoder's or a TfidfVectorizer's
``transform``): made dense before they are cut into examples. Iterated, a sparse matrix gives
1 x n sparse matrices, which JSON and the Open Inference Protocol cannot carry (the JSON route
answered 500, /v2 the matrix's printed description)."""

from __future__ import annotations

from typing import Any


def dense_if_sparse(value: Any) -> Any:
    """``value`` as a dense NumPy array if it is a SciPy sparse matrix or array, else as is.
    Found by its module, so SciPy is never imported for it."""
    module = type(value).__module__
    if module.startswith("scipy.sparse") and hasattr(value, "toarray"):
        return value.toarray()
    return value
