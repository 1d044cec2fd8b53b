"""Resolving ``"package.module:attribute"`` strings from config files."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from typing import Any


def import_object(reference: str) -> Any:
    """Import ``package.module:attribute`` (dots allowed after the colon) and return it."""
    module_name, sep, attribute_path = reference.partition(":")
    if not sep or not module_name or not attribute_path:
        raise ImportError(f"expected 'package.module:attribute', got {reference!r}")
    obj: Any = importlib.import_module(module_name)
    for part in attribute_path.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ImportError(
                f"module {module_name!r} has no attribute {attribute_path!r}"
            ) from None
    return obj


def import_optional(module: str, *, extra: str) -> Any:
    """Import a model library that comes with an optional extra, or say which extra to install."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ImportError(
            f"{module.split('.')[0]} is not installed ({exc}); install it with: "
            f"pip install 'loadonce[{extra}]'"
        ) from None


def importable_from(directory: Path) -> None:
    """Let ``pkg.module`` references resolve from ``directory`` (the current one, or a config
    file's), in this process and in the workers (the fork server starts with this sys.path)."""
    entry = str(directory.resolve())
    if entry not in sys.path:
        sys.path.insert(0, entry)


def is_reference(target: str) -> bool:
    """``package.module:attribute``, not a file path."""
    module, colon, attribute = target.partition(":")
    return bool(colon and module and attribute) and "/" not in target and not Path(target).exists()
