"""Language names by ISO 639-1 code: the one table prompts, dataset cards and generators share.

Stage-2 AST instructions say "translate the speech to {name}", so a name here is part of the
prompt format a released model was trained on: change one only with the prompts in mind.
"""

from __future__ import annotations

LANGUAGE_NAMES: dict[str, str] = {
    "en": "English",
    "fr": "French",
    "de": "German",
    "es": "Spanish",
    "pt": "Portuguese",
    "it": "Italian",
    "ja": "Japanese",
    "zh": "Chinese",
    "hi": "Hindi",
    "el": "Greek",
}


def language_name(code: str) -> str:
    """The English name of ``code`` (the code itself when the table has no entry)."""
    return LANGUAGE_NAMES.get(code, code)


__all__ = ["LANGUAGE_NAMES", "language_name"]
