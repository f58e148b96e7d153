"""Keyword-biased ASR data: ``python -m data_prep.keywords {generate,testset} --help``.

- ``select``: which words of a transcript become its bias words (rare, names, acronyms, digits)
  and how distractors are drawn; the ``Keywords: kw1, kw2, ...`` prompt suffix.
- ``generate``: any ASR dataset (hub id, parquet, audiofolder, JSONL; streamed) -> the same
  examples + ``keywords``, ``bias_words``, ``prompt_suffix`` as resumable parquet shards + card.
- ``testset``: a synthetic biasing test set (template sentences full of names and acronyms,
  spoken by the TTS generator) with per-utterance bias words and distractors.

Scoring: :mod:`granite_train.eval.biasing` (B-WER, U-WER, keyword recall).
"""

from data_prep.keywords.select import (
    KEYWORDS_PREFIX,
    KeywordConfig,
    KeywordSelector,
    Selection,
    Vocabulary,
    count_words,
    format_prompt_suffix,
)

__all__ = [
    "KEYWORDS_PREFIX",
    "KeywordConfig",
    "KeywordSelector",
    "Selection",
    "Vocabulary",
    "count_words",
    "format_prompt_suffix",
]
