"""Corpus-level word and character error rates, scored with ``jiwer``.

Conventions (RECIPE.md "Evaluation"; the Open ASR leaderboard scores the same way):

* Both sides are normalized with the same named normalizer first
  (:func:`granite_train.text.normalize.get_normalizer`), and the normalizer's name and package
  version are returned with the rates: a WER is only comparable under the same normalizer.
* Rates are **corpus-level**: total edits (substitutions + deletions + insertions) over the
  total number of reference words (or characters), not the mean of per-utterance rates. A mean
  of per-utterance rates lets a one-word utterance weigh as much as a fifty-word one.
* Words are the whitespace-separated tokens of the normalized text.
* Characters: for space-delimited languages, the normalized text with runs of whitespace
  collapsed to one space and the ends stripped; the space counts as a character (jiwer's and
  the usual convention). For languages written without spaces (:data:`NO_SPACE_LANGUAGES`,
  e.g. Japanese), every whitespace character is removed first, so CER is over the
  characters alone and a stray space in a hypothesis costs nothing. WER is still returned for
  those languages but means little there: read CER.

Empty references (a reference with no words once normalized, e.g. a filler-only "uh" under the
Whisper normalizer) are handled here, not by jiwer (jiwer 3 raises on them, jiwer 4 scores them
silently). The choice: every hypothesis word (character) of such an utterance is counted as an
insertion, and the utterance adds nothing to the denominator. That is exactly the Levenshtein
distance to an empty string, so corpus WER stays "all edits over all reference words" with
nothing left out: a model that hallucinates on silence is charged for it, and one that outputs
nothing there is not rewarded. The number of such utterances is returned as
``num_empty_refs``. If the whole corpus has no reference words the rate is undefined and is
returned as ``None``, whatever the number of insertions.

``merge_compounds=True`` is the Open ASR leaderboard's word scoring (kaldialign's
``batch_error_rate(merge_compounds=True)``): a compound split on one side and joined on the other
("white paper" / "whitepaper") costs nothing in either direction. Character rates are unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jiwer
import kaldialign

from granite_train.text.normalize import get_normalizer, normalizer_info

NO_SPACE_LANGUAGES = frozenset({"ja", "zh", "th"})
"""Languages whose CER is computed on the characters alone, every whitespace removed."""

_COUNTS = ("hits", "substitutions", "deletions", "insertions")


def _score(refs: list[str], hyps: list[str], chars: bool, merge_compounds: bool = False) -> dict[str, int]:
    """Edit counts over the pairs; empty references give insertions only (see module doc)."""
    counts = dict.fromkeys(_COUNTS, 0)
    tokenize = list if chars else str.split
    pairs = [(r, h) for r, h in zip(refs, hyps) if r]
    counts["insertions"] += sum(len(tokenize(h)) for r, h in zip(refs, hyps) if not r)
    if pairs and merge_compounds and not chars:
        out = kaldialign.batch_error_rate(
            [tuple(r.split()) for r, _ in pairs], [tuple(h.split()) for _, h in pairs], merge_compounds=True
        )
        counts["insertions"] += int(out["ins"])
        counts["deletions"] += int(out["del"])
        counts["substitutions"] += int(out["sub"])
        counts["hits"] += int(out["ref_len"]) - int(out["sub"]) - int(out["del"])
    elif pairs:
        process = jiwer.process_characters if chars else jiwer.process_words
        out = process([r for r, _ in pairs], [h for _, h in pairs])
        for key in _COUNTS:
            counts[key] += int(getattr(out, key))
    counts["ref_len"] = sum(len(tokenize(r)) for r in refs)
    counts["hyp_len"] = sum(len(tokenize(h)) for h in hyps)
    return counts


def _rate(counts: dict[str, int]) -> float | None:
    if counts["ref_len"] == 0:
        return None
    return (counts["substitutions"] + counts["deletions"] + counts["insertions"]) / counts["ref_len"]


def error_rates(
    references: Sequence[str],
    hypotheses: Sequence[str],
    normalizer: str = "whisper_english",
    language: str = "en",
    merge_compounds: bool = False,
) -> dict[str, Any]:
    """Corpus WER and CER of ``hypotheses`` against ``references`` (see the module doc).

    Args:
        references: reference transcripts, one per utterance.
        hypotheses: hypotheses, aligned with ``references``.
        normalizer: "whisper_english" (Open ASR leaderboard), "basic" or "none".
        language: a code in :data:`NO_SPACE_LANGUAGES` (e.g. "ja") scores CER without spaces.
        merge_compounds: the leaderboard's word alignment (see the module doc).

    Returns:
        A dict with ``wer`` and ``cer`` (fractions, ``None`` if the corpus has no reference
        words), the word-level ``hits``, ``substitutions``, ``deletions``, ``insertions``,
        ``ref_words`` and ``hyp_words``, the same with a ``char_`` prefix for characters,
        ``num_utts``, ``num_empty_refs``, ``language`` and ``normalizer``
        (:func:`~granite_train.text.normalize.normalizer_info`).

    >>> r = error_rates(["the cat sat on the mat"], ["the cat sit on mat"])
    >>> r["wer"], r["substitutions"], r["deletions"], r["insertions"]
    (0.3333333333333333, 1, 1, 0)
    """
    if isinstance(references, str) or isinstance(hypotheses, str):
        raise TypeError("references and hypotheses must be sequences of strings, not strings")
    if len(references) != len(hypotheses):
        raise ValueError(f"{len(references)} references but {len(hypotheses)} hypotheses")
    norm = get_normalizer(normalizer)
    refs = [" ".join(norm(r).split()) for r in references]
    hyps = [" ".join(norm(h).split()) for h in hypotheses]
    if language in NO_SPACE_LANGUAGES:
        char_refs = [r.replace(" ", "") for r in refs]
        char_hyps = [h.replace(" ", "") for h in hyps]
    else:
        char_refs, char_hyps = refs, hyps

    words = _score(refs, hyps, chars=False, merge_compounds=merge_compounds)
    chars = _score(char_refs, char_hyps, chars=True)
    result: dict[str, Any] = {"wer": _rate(words), "cer": _rate(chars)}
    result.update({key: words[key] for key in _COUNTS})
    result.update(ref_words=words["ref_len"], hyp_words=words["hyp_len"])
    result.update({f"char_{key}": chars[key] for key in _COUNTS})
    result.update(ref_chars=chars["ref_len"], hyp_chars=chars["hyp_len"])
    result.update(
        num_utts=len(refs),
        num_empty_refs=sum(not r for r in refs),
        # hallucination signals: hypotheses over twice their reference's length (in words)
        overlong_hyps=sum(len(h.split()) > 2 * len(r.split()) for r, h in zip(refs, hyps)),
        merge_compounds=merge_compounds,
        language=language,
        normalizer=normalizer_info(normalizer),
    )
    return result


def hallucination_summary(metrics: dict[str, Any]) -> dict[str, Any]:
    """What :func:`error_rates` says about invented words: insertions per reference word, and the
    share (and count) of hypotheses more than twice their reference's length in words (any output
    for an empty reference counts). ``None`` where the denominator is zero."""
    ref_words, utts = metrics["ref_words"], metrics["num_utts"]
    return {
        "insertions_per_ref_word": metrics["insertions"] / ref_words if ref_words else None,
        "overlong_share": metrics["overlong_hyps"] / utts if utts else None,
        "overlong_hyps": metrics["overlong_hyps"],
    }
