"""XGBoost and LightGBM files of a booster trained on a pandas DataFrame with ``category``
columns: each column a named input, its categories taken by value, as the libraries' own
scikit-learn estimators are served (``_columns.py``).

Read as one array of numbers, such a model took a category's code (its position in the
training frame's categories, which a client cannot know): the category itself ("Oslo") was
refused, and a code it never had (1.5, -1) answered as a missing value. Both files keep what
the DataFrame's columns were: XGBoost their names and types (``c``: a category, whose values
its model records and re-codes), LightGBM their names and each category column's categories
(``pandas_categorical``, in the training order). A model of numbers only is served as before.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from loadonce.runtimes._columns import Columns, columns_of


def xgboost_columns(booster: Any) -> Columns | None:
    """The named columns of an XGBoost Booster with a categorical feature, else None."""
    names = booster.feature_names
    types = booster.feature_types or []
    if not names or "c" not in types:
        return None
    # Read as XGBoost's scikit-learn estimator is: through get_booster().
    return columns_of(SimpleNamespace(get_booster=lambda: booster), list(names), {})


def lightgbm_columns(booster: Any) -> Columns | None:
    """The named columns of a LightGBM Booster trained with pandas categories, else None."""
    if not getattr(booster, "pandas_categorical", None):
        return None
    # Read as LightGBM's scikit-learn estimator is: through booster_.
    return columns_of(SimpleNamespace(booster_=booster), list(booster.feature_name()), {})
