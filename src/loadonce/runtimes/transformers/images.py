"""Images sent to a Transformers vision model: encoded bytes, decoded here within bounds.

An example is the file's bytes: a ``BYTES`` element under ``/v2``, ``{"base64": "..."}`` on the
JSON route (as loadonce answers bytes). Never a string: a pipeline given one would read that
path or download that URL. An image's header is read before its pixels, so a small file that
claims a huge canvas (a decompression bomb) is refused before anything is allocated for it.
"""

from __future__ import annotations

import base64
import binascii
import io
from collections.abc import Mapping
from typing import Any

from loadonce.core.errors import InvalidInputError
from loadonce.core.imports import import_optional

# The most pixels one image may hold unless the operator says otherwise (options.max_pixels):
# 4096 x 4096, 48 MiB as RGB.
DEFAULT_MAX_PIXELS = 4096 * 4096


def image_bytes(example: Any, index: int) -> bytes:
    """The encoded image an example carries."""
    if isinstance(example, bytes):
        return example
    if isinstance(example, Mapping) and set(example) == {"base64"}:
        encoded = example["base64"]
        if isinstance(encoded, str):
            try:
                return base64.b64decode(encoded, validate=True)
            except (binascii.Error, ValueError):
                raise InvalidInputError(f"example {index}: base64 is not valid") from None
    raise InvalidInputError(
        f'example {index}: an image is its file\'s bytes, sent as {{"base64": "..."}} (under '
        "/v2: a BYTES element); a path or URL is never read"
    )


def decode_image(data: bytes, index: int, max_pixels: int) -> Any:
    """A PIL image in RGB, its size checked before its pixels are decoded."""
    image_module = import_optional("PIL.Image", extra="transformers")
    try:
        image = image_module.open(io.BytesIO(data))
        width, height = image.size
    except image_module.DecompressionBombError:
        # PIL's own guard (over twice its MAX_IMAGE_PIXELS), met before ours when PIL's
        # limit is the lower one: the same refusal, said as ours says it.
        raise InvalidInputError(
            f"example {index}: the image claims more pixels than this model takes "
            f"({max_pixels}, options.max_pixels)"
        ) from None
    except Exception:  # PIL raises many types for a file it cannot read
        raise InvalidInputError(
            f"example {index}: not an image file PIL can read (PNG, JPEG, ...)"
        ) from None
    if width * height > max_pixels:
        raise InvalidInputError(
            f"example {index}: the image is {width} x {height} pixels; this model takes at "
            f"most {max_pixels} pixels (options.max_pixels)"
        )
    try:
        return image.convert("RGB")
    except Exception:
        raise InvalidInputError(f"example {index}: the image's data is damaged") from None
