"""Audio sent to a Transformers speech model: a clip of samples at the model's sampling rate.

An example is the clip's samples at the model's sampling rate (a list of numbers; under
``/v2`` a row of an FP32 tensor); loadonce does not resample. A clip too short for the model's
convolutions is a 400: the shortest clip the model answers is measured at load.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from loadonce.core.errors import InvalidInputError
from loadonce.core.inputs import as_typed_batch
from loadonce.core.signature import InputSignature

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

CLIP = InputSignature(shape=(None,), dtype="float32")
# The longest clip a request may send unless the operator says otherwise (options.max_seconds):
# Whisper-style models read 30 s at a time.
DEFAULT_MAX_SECONDS = 30.0


def clip_samples(example: Any, index: int) -> npt.NDArray[np.float32]:
    """One example's samples, as float32, checked: one dimension, finite numbers."""
    import numpy as np

    samples = example
    if isinstance(samples, np.ndarray) and samples.ndim != 1:
        raise InvalidInputError(f"example {index}: a clip is one row of samples")
    try:
        clip: npt.NDArray[np.float32] = as_typed_batch([samples], CLIP)[0]
    except InvalidInputError as exc:
        raise InvalidInputError(f"example {index}: {exc}") from None
    if not np.isfinite(clip).all():
        raise InvalidInputError(f"example {index}: samples must be finite numbers")
    return clip


def shortest_clip(answers: Any, sampling_rate: int) -> int | None:
    """The fewest samples ``answers(samples)`` succeeds on, from 1 to one second's worth
    (a model's convolutions need a few): None when even a second fails."""

    def works(length: int) -> bool:
        import numpy as np

        try:
            answers(np.zeros(length, dtype=np.float32))
        except Exception:  # what a model raises for too short an input varies
            return False
        return True

    low, high = 1, max(1, sampling_rate)
    # A model that pads every clip itself (Whisper: to 30 s, each call costly) answers one
    # sample: found in one call.
    if works(low):
        return low
    if not works(high):
        return None
    while low < high:
        middle = (low + high) // 2
        if works(middle):
            high = middle
        else:
            low = middle + 1
    return low
