"""OpenAPI entries loadonce's own routes share."""

from __future__ import annotations

from typing import Any

# The {name} in the paths of the predict and generate routes.
MODEL_NAME_PARAMETER: dict[str, Any] = {
    "name": "name",
    "in": "path",
    "required": True,
    "schema": {"type": "string"},
    "description": "The model's name, as declared.",
}
