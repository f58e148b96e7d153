"""Transcript -> CTC target ids for the encoder's character head.

Japanese transcripts become their katakana reading (the vocabulary has no kanji or hiragana);
other languages are encoded as written, Latin-1 characters being in the vocabulary.
"""

from __future__ import annotations

import unicodedata

from granite_train.text.japanese import KatakanaConverter
from granite_train.text.vocab import CharVocab


def is_japanese(language: str | None) -> bool:
    """Whether a language tag names Japanese: "ja", "ja-JP", "ja_JP" (case-insensitive)."""
    return language is not None and language.replace("_", "-").split("-")[0].lower() == "ja"


def _is_punct(ch: str) -> bool:
    # the apostrophe is part of words ("don't"); the katakana long-vowel mark is Lm, not P*
    return ch != "'" and unicodedata.category(ch).startswith("P")


class CTCTargetBuilder:
    """Builds the CTC target of one transcript.

    Steps: Japanese text -> katakana reading; optional lowercasing; whitespace runs -> one space,
    ends stripped; :meth:`CharVocab.encode`, whose OOV policy drops, replaces or rejects what is
    left outside the vocabulary (and counts it in ``vocab.oov_counts``).

    Args:
        vocab: the CTC vocabulary (its OOV policy applies).
        japanese: converter for ``language="ja"``; a default :class:`KatakanaConverter` is made
            if None (it loads Sudachi only when the first Japanese text arrives).
        lowercase: lowercase the text before encoding. Katakana has no case, so this only changes
            Latin letters.
        strip_punctuation: replace Unicode punctuation (categories P*) except the apostrophe by
            a space. Small models learn faster without marks that the audio barely signals.
    """

    def __init__(
        self,
        vocab: CharVocab,
        japanese: KatakanaConverter | None = None,
        lowercase: bool = False,
        strip_punctuation: bool = False,
    ) -> None:
        self.vocab = vocab
        self.japanese = japanese if japanese is not None else KatakanaConverter()
        self.lowercase = lowercase
        self.strip_punctuation = strip_punctuation

    def target_text(self, text: str, language: str | None = None) -> str:
        """The string that :meth:`__call__` encodes."""
        if is_japanese(language):
            text = self.japanese(text)
        if self.lowercase:
            text = text.lower()
        if self.strip_punctuation:
            text = "".join(" " if _is_punct(ch) else ch for ch in text)
        return " ".join(text.split())

    def __call__(self, text: str, language: str | None = None) -> list[int]:
        """Target ids of ``text``; may be empty (e.g. a transcript of punctuation only).

        Raises:
            OOVError: if the vocabulary's policy is ``"reject"`` and the text has a character
                outside the vocabulary.
        """
        return self.vocab.encode(self.target_text(text, language))
