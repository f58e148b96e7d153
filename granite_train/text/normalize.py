"""Transcript normalizers for scoring WER, taken from the ``whisper-normalizer`` package.

The Open ASR leaderboard and the granite-speech fine-tuning notebook score with Whisper's
``EnglishTextNormalizer`` (RECIPE.md "Evaluation"), so published numbers are only comparable
under the same normalizer, and under the same version of it: :func:`normalizer_info` gives what
to record next to every WER.

``whisper-normalizer`` ships the English spelling table (British -> American) that Whisper's
normalizer needs; the copy in ``transformers`` reads it from a tokenizer download instead, which
does not work offline.
"""

from __future__ import annotations

import functools
import importlib.metadata
from collections.abc import Callable

from whisper_normalizer.basic import BasicTextNormalizer
from whisper_normalizer.english import EnglishTextNormalizer

Normalizer = Callable[[str], str]

_PACKAGE = "whisper-normalizer"
_CLASSES: dict[str, type] = {"whisper_english": EnglishTextNormalizer, "basic": BasicTextNormalizer}
NORMALIZER_NAMES = ("whisper_english", "basic", "none")


@functools.cache
def english_normalizer() -> Normalizer:
    """Whisper's English normalizer: lowercases, removes punctuation and fillers ("uh", "um"),
    expands contractions and titles ("won't" -> "will not", "Dr." -> "doctor"), turns spelled-out
    numbers into digits ("twenty five" -> "25") and British spellings into American ones."""
    return EnglishTextNormalizer()


@functools.cache
def basic_normalizer() -> Normalizer:
    """Whisper's language-independent normalizer: lowercases and replaces punctuation and symbols
    with spaces, keeping letters of every script (Whisper's scoring for non-English text)."""
    return BasicTextNormalizer()


def _identity(text: str) -> str:
    return text


def get_normalizer(name: str) -> Normalizer:
    """Normalizer by name: "whisper_english", "basic" or "none" (text unchanged)."""
    if name == "whisper_english":
        return english_normalizer()
    if name == "basic":
        return basic_normalizer()
    if name == "none":
        return _identity
    raise ValueError(f"unknown normalizer {name!r}; expected one of {NORMALIZER_NAMES}")


def normalizer_info(name: str) -> dict[str, str | None]:
    """What to record with a WER: normalizer name, class, package and its installed version.

    >>> normalizer_info("none")
    {'name': 'none', 'class': None, 'package': None, 'version': None}
    """
    get_normalizer(name)  # validates the name
    cls = _CLASSES.get(name)
    if cls is None:
        return {"name": name, "class": None, "package": None, "version": None}
    return {
        "name": name,
        "class": f"{cls.__module__}.{cls.__qualname__}",
        "package": _PACKAGE,
        "version": importlib.metadata.version(_PACKAGE),
    }
