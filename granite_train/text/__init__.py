"""Text front-end: CTC character vocabulary, Japanese readings, CTC targets, WER normalizers."""

from granite_train.text.japanese import KatakanaConverter
from granite_train.text.normalize import (
    NORMALIZER_NAMES,
    basic_normalizer,
    english_normalizer,
    get_normalizer,
    normalizer_info,
)
from granite_train.text.targets import CTCTargetBuilder, is_japanese
from granite_train.text.vocab import BLANK_ID, VOCAB_SIZE, CharVocab, OOVError, OOVPolicy

__all__ = [
    "BLANK_ID",
    "NORMALIZER_NAMES",
    "VOCAB_SIZE",
    "CTCTargetBuilder",
    "CharVocab",
    "KatakanaConverter",
    "OOVError",
    "OOVPolicy",
    "basic_normalizer",
    "english_normalizer",
    "get_normalizer",
    "is_japanese",
    "normalizer_info",
]
