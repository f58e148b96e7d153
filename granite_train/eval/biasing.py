"""Keyword-biasing metrics: B-WER, U-WER and keyword recall, and a with/without-keywords table.

The split of WER into a biased and an unbiased part follows the contextual-biasing literature
(Le et al. 2021, "Contextualized streaming end-to-end speech recognition with trie-based deep
biasing and shallow fusion", whose LibriSpeech biasing benchmark defines them this way):

* Every utterance has a list of bias words (the ``bias_words`` column of the keyword datasets:
  the keywords that occur in the reference). They are normalized with the same normalizer as the
  transcripts and split into words; a reference word is a *bias word* if it is one of those words
  (a multi-word keyword such as "New York" makes both "new" and "york" bias words of that
  utterance). All other reference words are *unbiased*.
* References and hypotheses are aligned word by word (``jiwer.process_words``, Levenshtein), and
  each error is attributed to one class:

  - a substitution or deletion counts for the class of its **reference** word (a bias word
    recognised as anything else is a bias error; an ordinary word replaced by a bias word is an
    unbiased error: what was said decides);
  - an insertion has no reference word: it counts as a **bias** error if the inserted word is a
    bias word of the utterance, else as an unbiased error (a model that sprays keywords into the
    transcript pays for it in B-WER).

* ``B-WER = bias errors / bias reference words``, ``U-WER = unbiased errors / unbiased reference
  words``; the two numerators add up to the edits of the ordinary WER (same alignment).
* Keyword recall: the share of bias-word occurrences in the references that the alignment matches
  to the same word in the hypothesis (hits on bias words / bias reference words). Keyword
  precision: those hits over the bias words found anywhere in the hypotheses.

Rates are corpus-level (summed edits over summed reference words), as in
:mod:`granite_train.eval.metrics`; an empty reference contributes its hypothesis words as
insertions and nothing to the denominators. A rate with an empty denominator is ``None``.

>>> r = biasing_error_rates(["meet anna in oslo"], ["meet ana in oslo"], [["Anna", "Oslo"]])
>>> r["b_wer"], r["u_wer"], r["recall"]
(0.5, 0.0, 0.5)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jiwer

from granite_train.text.normalize import get_normalizer, normalizer_info

_KEYS = (
    "bias_hits",
    "bias_substitutions",
    "bias_deletions",
    "bias_insertions",
    "unbiased_hits",
    "unbiased_substitutions",
    "unbiased_deletions",
    "unbiased_insertions",
    "bias_ref_words",
    "unbiased_ref_words",
    "hyp_bias_words",
)


def _rate(num: int, den: int) -> float | None:
    return num / den if den else None


def biasing_error_rates(
    references: Sequence[str],
    hypotheses: Sequence[str],
    bias_words: Sequence[Sequence[str]],
    normalizer: str = "whisper_english",
) -> dict[str, Any]:
    """WER, B-WER, U-WER, keyword recall and precision (see the module doc for the rules).

    Args:
        references: reference transcripts.
        hypotheses: hypotheses, aligned with ``references``.
        bias_words: per utterance, its bias words (keywords present in the reference).
        normalizer: "whisper_english", "basic" or "none", applied to all three.

    Returns:
        ``wer``, ``b_wer``, ``u_wer``, ``recall``, ``precision`` (fractions or ``None``), the
        counts behind them (``bias_hits``, ``bias_substitutions``, ``bias_deletions``,
        ``bias_insertions``, the same with ``unbiased_``, ``bias_ref_words``,
        ``unbiased_ref_words``, ``hyp_bias_words``), ``ref_words``, ``num_utts`` and
        ``normalizer`` (:func:`~granite_train.text.normalize.normalizer_info`).
    """
    for name, value in (("references", references), ("hypotheses", hypotheses), ("bias_words", bias_words)):
        if isinstance(value, str):
            raise TypeError(f"{name} must be a sequence, not a string")
    if not len(references) == len(hypotheses) == len(bias_words):
        raise ValueError(
            f"{len(references)} references, {len(hypotheses)} hypotheses, {len(bias_words)} bias lists"
        )
    norm = get_normalizer(normalizer)
    refs = [norm(r).split() for r in references]
    hyps = [norm(h).split() for h in hypotheses]
    biases = []
    for words in bias_words:
        if isinstance(words, str):
            raise TypeError("each bias_words entry must be a list of words, not a string")
        biases.append({tok for w in words for tok in norm(w).split()})

    c = dict.fromkeys(_KEYS, 0)
    nonempty = [i for i, r in enumerate(refs) if r]
    for ref, hyp, bias in zip(refs, hyps, biases):
        c["hyp_bias_words"] += sum(w in bias for w in hyp)
        c["bias_ref_words"] += sum(w in bias for w in ref)
        c["unbiased_ref_words"] += sum(w not in bias for w in ref)
        if not ref:  # every hypothesis word is an insertion (metrics.py's convention)
            for w in hyp:
                c["bias_insertions" if w in bias else "unbiased_insertions"] += 1
    if nonempty:
        out = jiwer.process_words(
            [" ".join(refs[i]) for i in nonempty], [" ".join(hyps[i]) for i in nonempty]
        )
        for j, i in enumerate(nonempty):
            ref, hyp, bias = out.references[j], out.hypotheses[j], biases[i]
            for chunk in out.alignments[j]:
                if chunk.type == "insert":
                    for w in hyp[chunk.hyp_start_idx : chunk.hyp_end_idx]:
                        c["bias_insertions" if w in bias else "unbiased_insertions"] += 1
                    continue
                kind = {"equal": "hits", "substitute": "substitutions", "delete": "deletions"}[chunk.type]
                for w in ref[chunk.ref_start_idx : chunk.ref_end_idx]:
                    c[f"{'bias' if w in bias else 'unbiased'}_{kind}"] += 1

    def errors(cls: str) -> int:
        return c[f"{cls}_substitutions"] + c[f"{cls}_deletions"] + c[f"{cls}_insertions"]

    ref_words = c["bias_ref_words"] + c["unbiased_ref_words"]
    return {
        "wer": _rate(errors("bias") + errors("unbiased"), ref_words),
        "b_wer": _rate(errors("bias"), c["bias_ref_words"]),
        "u_wer": _rate(errors("unbiased"), c["unbiased_ref_words"]),
        "recall": _rate(c["bias_hits"], c["bias_ref_words"]),
        "precision": _rate(c["bias_hits"], c["hyp_bias_words"]),
        **c,
        "ref_words": ref_words,
        "num_utts": len(refs),
        "normalizer": normalizer_info(normalizer),
    }


def _pct(rate: float | None) -> str:
    return "n/a" if rate is None else f"{100 * rate:.2f}"


def _delta(a: float | None, b: float | None) -> str:
    if a is None or b is None:
        return "n/a"
    return f"{100 * (b - a):+.2f}"


_COLUMNS = (("wer", "WER %"), ("b_wer", "B-WER %"), ("u_wer", "U-WER %"), ("recall", "keyword recall %"))


def biasing_markdown(results: Mapping[str, Mapping[str, Any]], delta: bool = True) -> str:
    """Markdown table of :func:`biasing_error_rates` results, one row per condition; with
    ``delta`` and exactly two conditions, a last row with second minus first in points."""
    lines = [
        "| condition | " + " | ".join(title for _, title in _COLUMNS) + " |",
        "| --- |" + " ---: |" * len(_COLUMNS),
    ]
    for name, r in results.items():
        lines.append(f"| {name} | " + " | ".join(_pct(r[key]) for key, _ in _COLUMNS) + " |")
    if delta and len(results) == 2:
        (name_a, a), (name_b, b) = results.items()
        lines.append(
            f"| delta ({name_b} - {name_a}, points) | "
            + " | ".join(_delta(a[key], b[key]) for key, _ in _COLUMNS)
            + " |"
        )
    first = next(iter(results.values()), None)
    if first is not None:
        info = first["normalizer"]
        norm = info["name"] + (f" {info['version']}" if info.get("version") else "")
        lines += [
            "",
            f"{first['num_utts']} utterances, {first['ref_words']} reference words of which "
            f"{first['bias_ref_words']} bias words; normalizer: {norm}.",
        ]
    return "\n".join(lines) + "\n"


def compare_biasing(
    references: Sequence[str],
    hypotheses_without: Sequence[str],
    hypotheses_with: Sequence[str],
    bias_words: Sequence[Sequence[str]],
    normalizer: str = "whisper_english",
    labels: tuple[str, str] = ("without keywords", "with keywords"),
) -> str:
    """Markdown table: WER, B-WER, U-WER and keyword recall of hypotheses decoded without and with
    the keyword list in the prompt, and the change (with minus without, in percentage points;
    negative is better for the error rates, positive for recall).

    >>> print(compare_biasing(["call anna"], ["call ana"], ["call anna"], [["Anna"]], "basic"), end="")  # doctest: +ELLIPSIS
    | condition | WER % | B-WER % | U-WER % | keyword recall % |
    | --- | ---: | ---: | ---: | ---: |
    | without keywords | 50.00 | 100.00 | 0.00 | 0.00 |
    | with keywords | 0.00 | 0.00 | 0.00 | 100.00 |
    | delta (with keywords - without keywords, points) | -50.00 | -100.00 | +0.00 | +100.00 |
    <BLANKLINE>
    1 utterances, 2 reference words of which 1 bias words; normalizer: basic ...
    """
    return biasing_markdown(
        {
            labels[0]: biasing_error_rates(references, hypotheses_without, bias_words, normalizer),
            labels[1]: biasing_error_rates(references, hypotheses_with, bias_words, normalizer),
        }
    )
