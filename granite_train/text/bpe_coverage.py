"""Which characters of a new language a BPE tokenizer cannot write: the ``report`` step of
``granite-train add-language`` for a granite-speech-5.0 TurboCTC model.

A 5.0 model's CTC outputs are its tokenizer's BPE units, so "in the vocabulary" means "the
tokenizer writes it without the unknown token". A character is *writable* when tokenizing it alone
gives ids, none of them ``<unk>``, that decode back to the character (a byte-fallback tokenizer
writes everything). The characters that are not are counted over the language's sentences (after the
same target normalisation training applies), and the most frequent ones covering ``coverage`` of
their occurrences are recommended as new tokens (:mod:`granite_train.models.turboctc_vocab`).
"""

from __future__ import annotations

import unicodedata
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["BPECoverage", "bpe_coverage", "writable"]


def writable(tokenizer: Any, char: str) -> bool:
    """Whether ``tokenizer`` writes ``char`` (alone) without its unknown token and reads it back."""
    ids = tokenizer.encode(char, add_special_tokens=False)
    unk = tokenizer.unk_token_id
    if not ids or (unk is not None and unk in ids):
        return False
    return tokenizer.decode(ids).strip() == char


@dataclass
class BPECoverage:
    """The report: characters counted, the unwritable ones by count, and the recommendation.

    Attributes:
        chars: non-space characters of the normalised sentences.
        missing: unwritable character -> occurrences, most frequent first.
        recommended: the characters to add, covering ``coverage`` of the missing occurrences.
        sample_name: where the sentences came from (the report's title).
    """

    chars: int
    missing: Counter[str] = field(default_factory=Counter)
    recommended: tuple[str, ...] = ()
    sample_name: str = "sample"

    @property
    def oov_share(self) -> float:
        """Share of the characters the tokenizer cannot write."""
        return sum(self.missing.values()) / self.chars if self.chars else 0.0

    def to_markdown(self) -> str:
        lines = [
            f"# BPE vocabulary coverage of {self.sample_name}",
            "",
            f"{self.chars} characters; {100 * self.oov_share:.2f}% cannot be written by the tokenizer "
            f"({len(self.missing)} distinct). Recommended new tokens ({len(self.recommended)}): "
            f"{''.join(self.recommended) or '(none)'}",
        ]
        if self.missing:
            total = sum(self.missing.values())
            lines += ["", "| character | code point | count | share of missing |", "|---|---|---:|---:|"]
            for char, n in self.missing.most_common():
                lines.append(f"| {char} | U+{ord(char):04X} | {n} | {100 * n / total:.2f}% |")
        return "\n".join(lines) + "\n"


def bpe_coverage(
    lines: Iterable[str],
    tokenizer: Any,
    *,
    normalize: Callable[[str], str] | None = None,
    coverage: float = 0.999,
    sample_name: str = "sample",
) -> BPECoverage:
    """Count the characters of ``lines`` that ``tokenizer`` cannot write (:func:`writable`).

    Args:
        normalize: the target normalisation training applies (e.g. lowercase, no punctuation);
            None: the text as it is (NFC).
        coverage: share of the missing occurrences the recommendation covers, in (0, 1].
    """
    if not 0.0 < coverage <= 1.0:
        raise ValueError(f"coverage must be in (0, 1], got {coverage}")
    counts: Counter[str] = Counter()
    for line in lines:
        text = unicodedata.normalize("NFC", line)
        counts.update(c for c in (normalize(text) if normalize else text) if not c.isspace())
    cache: dict[str, bool] = {}
    missing = Counter({c: n for c, n in counts.items() if not cache.setdefault(c, writable(tokenizer, c))})
    ordered = sorted(missing.items(), key=lambda cn: (-cn[1], cn[0]))
    total, covered, recommended = sum(missing.values()), 0, []
    for char, n in ordered:
        if total and covered / total >= coverage:
            break
        recommended.append(char)
        covered += n
    return BPECoverage(
        chars=sum(counts.values()),
        missing=Counter(dict(ordered)),
        recommended=tuple(recommended),
        sample_name=sample_name,
    )
