"""Agreement filter: keep a machine translation only where two independent MT systems agree.

granite-4.0-1b-speech kept an AST target only where the translations of two MT systems were
close: WER <= 0.3, or CER <= 0.4 for Japanese (RECIPE.md "Projector + LLM stage"). Here the
primary backend's output is the training target and the reference of the score; the secondary's
output is the hypothesis. Both are normalised with Whisper's basic normaliser first (lowercase,
punctuation and symbols removed, every script kept), so "Hallo, Welt!" and "hallo welt" agree
exactly. Targets written without spaces (``ja``, ``zh``) are scored by CER over the characters
alone (whitespace removed), with the conventions of :func:`granite_train.eval.metrics.error_rates`
(computed here with jiwer directly: ``error_rates`` also records the normaliser's package version,
which costs a millisecond per call).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import jiwer

from granite_train.eval.metrics import NO_SPACE_LANGUAGES
from granite_train.text.normalize import get_normalizer

DEFAULT_MAX_WER = 0.3
DEFAULT_MAX_CER = 0.4
CER_LANGUAGES = frozenset({"ja", "zh"})


@dataclass(frozen=True)
class AgreementConfig:
    """Thresholds of the agreement filter."""

    max_wer: float = DEFAULT_MAX_WER
    """Keep when WER(primary -> secondary) <= this (targets written with spaces)."""
    max_cer: float = DEFAULT_MAX_CER
    """Keep when CER(primary -> secondary) <= this (targets in ``cer_languages``)."""
    cer_languages: frozenset[str] = field(default_factory=lambda: CER_LANGUAGES)
    """Target languages scored by CER instead of WER."""
    normalizer: str = "basic"
    """Normaliser applied to both outputs before scoring: "basic", "whisper_english" or "none"."""

    def __post_init__(self) -> None:
        if self.max_wer < 0 or self.max_cer < 0:
            raise ValueError("agreement thresholds must be >= 0")
        object.__setattr__(self, "cer_languages", frozenset(self.cer_languages))
        get_normalizer(self.normalizer)  # validates the name

    def metric(self, target_language: str) -> str:
        return "cer" if target_language in self.cer_languages else "wer"

    def threshold(self, target_language: str) -> float:
        return self.max_cer if target_language in self.cer_languages else self.max_wer

    def describe(self) -> dict:
        return {
            "max_wer": self.max_wer,
            "max_cer": self.max_cer,
            "cer_languages": sorted(self.cer_languages),
            "normalizer": self.normalizer,
        }


@dataclass(frozen=True)
class Agreement:
    """The score of one pair of translations."""

    metric: str
    """"wer" or "cer"."""
    score: float
    """Edits over the primary's normalised length (``inf`` when only the primary is empty)."""
    threshold: float
    agree: bool


def is_empty(text: str | None, config: AgreementConfig = AgreementConfig()) -> bool:
    """True when nothing is left of ``text`` once normalised (e.g. "", "...", "  ")."""
    return not text or not get_normalizer(config.normalizer)(text).split()


def agreement(
    primary: str, secondary: str, target_language: str, config: AgreementConfig = AgreementConfig()
) -> Agreement:
    """Score ``secondary`` against ``primary`` (the reference) in ``target_language``.

    >>> a = agreement("Wo ist der Bahnhof?", "Wo ist der Hauptbahnhof?", "de")
    >>> a.metric, a.score, a.agree
    ('wer', 0.25, True)
    """
    metric = config.metric(target_language)
    norm = get_normalizer(config.normalizer)
    ref, hyp = " ".join(norm(primary).split()), " ".join(norm(secondary).split())
    if metric == "cer":
        if target_language in NO_SPACE_LANGUAGES:
            ref, hyp = ref.replace(" ", ""), hyp.replace(" ", "")
        ref_len, hyp_len = len(ref), len(hyp)
    else:
        ref_len, hyp_len = len(ref.split()), len(hyp.split())
    if ref_len == 0:  # empty primary: agreement only with an empty secondary
        score = 0.0 if hyp_len == 0 else float("inf")
    elif hyp_len == 0:
        score = 1.0  # every reference unit deleted
    else:
        out = (jiwer.process_characters if metric == "cer" else jiwer.process_words)(ref, hyp)
        score = (out.substitutions + out.deletions + out.insertions) / ref_len
    threshold = config.threshold(target_language)
    return Agreement(metric, float(score), threshold, score <= threshold)
