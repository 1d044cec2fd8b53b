"""What a local Transformers model directory must hold, checked before transformers reads it."""

from __future__ import annotations

from pathlib import Path

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json")
PICKLED_WEIGHT_FILES = ("pytorch_model.bin", "pytorch_model.bin.index.json")
# Any one of these holds a tokenizer's vocabulary. Without one, transformers builds an empty
# tokenizer without a word of warning, and every text becomes [UNK].
TOKENIZER_FILES = (
    "tokenizer.json",
    "vocab.txt",
    "vocab.json",
    "spiece.model",
    "sentencepiece.bpe.model",
    "tokenizer.model",
)


def has_tokenizer(path: Path) -> bool:
    return any((path / name).is_file() for name in TOKENIZER_FILES)


def weights_are_pickled(path: Path) -> bool:
    """Whether the weights transformers would read are a pickle (it prefers safetensors)."""
    if any((path / name).is_file() for name in WEIGHT_FILES):
        return False
    return any((path / name).is_file() for name in PICKLED_WEIGHT_FILES)


# An image or speech model's preprocessing (an image's size and normalisation, audio's sampling
# rate): transformers would improvise without it.
# (A processor saved whole, such as a speech model's feature extractor and tokenizer, writes
# processor_config.json instead.)
PREPROCESSOR_FILES = ("preprocessor_config.json", "processor_config.json")


def check_model_directory(
    path: Path, *, trust: bool, needs_tokenizer: bool, needs_preprocessor: bool = False
) -> None:
    """Name the missing file before transformers would look elsewhere or improvise."""
    if not path.is_dir():
        raise FileNotFoundError(f"no such model directory: {path}")
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"missing file: {path / 'config.json'}")
    if needs_tokenizer and not has_tokenizer(path):
        raise FileNotFoundError(
            f"missing file: {path / 'tokenizer.json'} (or another vocabulary file: "
            f"{', '.join(TOKENIZER_FILES[1:])}); without it every text would become [UNK]"
        )
    if needs_preprocessor and not any((path / name).is_file() for name in PREPROCESSOR_FILES):
        raise FileNotFoundError(
            f"missing file: {path / PREPROCESSOR_FILES[0]} (how this model's images or audio "
            "are prepared)"
        )
    if any((path / name).is_file() for name in WEIGHT_FILES):
        return
    pickled = [name for name in PICKLED_WEIGHT_FILES if (path / name).is_file()]
    if pickled and not trust:
        raise PermissionError(
            f"{path / pickled[0]} is a pickle, which runs code when loaded; convert the "
            "weights to model.safetensors, or set trust = true if you trust its origin"
        )
    if not pickled:
        raise FileNotFoundError(f"missing file: {path / 'model.safetensors'} (the weights)")
