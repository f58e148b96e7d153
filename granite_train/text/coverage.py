"""How well a new language's text fits the CTC vocabulary and the LLM tokenizer (before any data).

``granite-train coverage sample=el.txt`` reads a text sample (one sentence a line) and reports:

(a) the characters outside the CTC vocabulary, with counts, as the targets would see them (the
    same NFC, whitespace and optional lowercasing as :class:`~granite_train.text.targets.CTCTargetBuilder`);
(b) which of them a normaliser could map into the vocabulary: compatibility forms by NFKC
    ("ﬁ" -> "fi"), or by dropping combining marks of an NFD decomposition, keeping as many marks
    as an in-vocabulary character has ("ậ" -> "â");
(c) with a tokenizer folder, the LLM tokenizer's tokens per character on the sample against an
    English reference sample (a tokenizer that splits the new script into bytes makes stage 2 see
    sequences several times longer), and how many unknown tokens it produced;
(d) a recommendation: the letters, marks and digits to add to the CTC vocabulary, by count, until
    they cover ``coverage`` of those OOV occurrences, and whether the tokenizer needs attention.
    Compatibility forms are left out (NFKC loses nothing: normalise them), and so are punctuation
    and symbols (listed to normalise or drop); characters whose marks a normaliser could drop are
    kept in, marked, as dropping them loses what the marks distinguish.

Everything is in :class:`CoverageReport`, as markdown (:meth:`~CoverageReport.to_markdown`) and
JSON types (:meth:`~CoverageReport.to_json`).
"""

from __future__ import annotations

import itertools
import unicodedata
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from granite_train.text.targets import CTCTargetBuilder
from granite_train.text.vocab import CharVocab

__all__ = [
    "CharCount",
    "CoverageReport",
    "TokenizerStats",
    "coverage_report",
    "normaliser_mapping",
    "read_lines",
    "recommend_symbols",
    "tokenizer_stats",
]

_ADDABLE = ("L", "M", "N")  # Unicode categories worth a CTC symbol: letters, marks, digits
_MAX_MARKS = 4  # combining marks tried in subsets (2^4 candidates at most)


@dataclass(frozen=True)
class CharCount:
    """One out-of-vocabulary character of the sample."""

    char: str
    count: int
    share: float
    """of all OOV occurrences."""
    codepoint: str
    name: str
    category: str
    maps_to: str | None = None
    """what a normaliser could write instead (in the vocabulary), or None."""
    mapping: str | None = None
    """how: ``nfkc`` (compatibility form) or ``drop_marks`` (NFD, combining marks left out)."""


@dataclass(frozen=True)
class TokenizerStats:
    """LLM tokens per character of the sample against the English reference."""

    tokenizer: str
    sample_tokens: int
    sample_chars: int
    reference_tokens: int
    reference_chars: int
    unknown_tokens: int
    """tokens of the sample that are the tokenizer's unknown token (its content is lost)."""
    limit: float
    """the ratio above which the tokenizer needs attention."""

    @property
    def sample_tokens_per_char(self) -> float:
        return self.sample_tokens / max(self.sample_chars, 1)

    @property
    def reference_tokens_per_char(self) -> float:
        return self.reference_tokens / max(self.reference_chars, 1)

    @property
    def ratio(self) -> float:
        """sample tokens/char over reference tokens/char."""
        return self.sample_tokens_per_char / max(self.reference_tokens_per_char, 1e-12)

    @property
    def needs_attention(self) -> bool:
        return self.ratio > self.limit or self.unknown_tokens > 0

    def reason(self) -> str:
        reasons = []
        if self.ratio > self.limit:
            reasons.append(
                f"{self.ratio:.2f}x the English tokens per character (limit {self.limit:g}x): "
                "extend the tokenizer (new merges / tokens) or expect much longer stage-2 targets"
            )
        if self.unknown_tokens:
            reasons.append(f"{self.unknown_tokens} unknown tokens: the tokenizer cannot spell the language")
        return "; ".join(reasons) or f"{self.ratio:.2f}x the English tokens per character: fine"


@dataclass
class CoverageReport:
    """What :func:`coverage_report` found (see the module doc)."""

    sample: str
    language: str | None
    lines: int
    chars: int
    """characters of the sample's CTC target texts (spaces included)."""
    oov_occurrences: int
    oov: list[CharCount]
    """every OOV character, most frequent first."""
    oov_after_mapping: int
    """OOV occurrences left if every mappable character were mapped."""
    recommended: list[str]
    """letters / marks / digits to add, most frequent first (compatibility forms left out)."""
    recommended_coverage: float
    """share of the addable OOV occurrences that ``recommended`` covers."""
    coverage_target: float
    not_addable: list[str]
    """OOV punctuation, symbols, separators: normalise or drop rather than add."""
    tokenizer: TokenizerStats | None = None
    vocab_size: int = 0
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def oov_share(self) -> float:
        return self.oov_occurrences / max(self.chars, 1)

    @property
    def mappable(self) -> list[CharCount]:
        return [c for c in self.oov if c.maps_to is not None]

    def to_json(self) -> dict[str, Any]:
        """The report in JSON types (derived numbers included)."""
        out = asdict(self)
        out["oov_share"] = self.oov_share
        out["oov_share_after_mapping"] = self.oov_after_mapping / max(self.chars, 1)
        if self.tokenizer is not None:
            t = self.tokenizer
            out["tokenizer"].update(
                sample_tokens_per_char=t.sample_tokens_per_char,
                reference_tokens_per_char=t.reference_tokens_per_char,
                ratio=t.ratio,
                needs_attention=t.needs_attention,
                reason=t.reason(),
            )
        return out

    def to_markdown(self) -> str:
        """A human-readable report (sections a-d of the module doc)."""
        lang = f" ({self.language})" if self.language else ""
        md = [
            f"# CTC vocabulary coverage of `{self.sample}`{lang}",
            "",
            f"{self.lines} lines, {self.chars} target characters; vocabulary of {self.vocab_size} symbols.",
            "",
            "## (a) Characters outside the CTC vocabulary",
            "",
            f"{self.oov_occurrences} of {self.chars} characters ({100 * self.oov_share:.2f}%) are outside "
            f"the vocabulary, {len(self.oov)} distinct.",
        ]
        if self.oov:
            md += [
                "",
                "| char | code point | name | count | share of OOV | could map to |",
                "|---|---|---|---:|---:|---|",
            ]
            for c in self.oov:
                maps = f"`{c.maps_to}` ({c.mapping})" if c.maps_to is not None else ""
                md.append(
                    f"| `{_show(c.char)}` | {c.codepoint} | {c.name} | {c.count} | {100 * c.share:.2f}% | {maps} |"
                )
        md += ["", "## (b) What a normaliser could map into the vocabulary", ""]
        if self.mappable:
            md += [f"- `{_show(c.char)}` -> `{c.maps_to}` ({c.mapping}, {c.count}x)" for c in self.mappable]
            md += [
                "",
                f"Mapped, {self.oov_after_mapping} OOV occurrences would remain "
                f"({100 * self.oov_after_mapping / max(self.chars, 1):.2f}%). Mapping loses what the "
                "marks distinguish: adding the characters keeps it.",
            ]
        else:
            md.append("Nothing: no OOV character has a compatibility form or base letter in the vocabulary.")
        md += ["", "## (c) LLM tokenizer", ""]
        if self.tokenizer is None:
            md.append("Not checked (no tokenizer given).")
        else:
            t = self.tokenizer
            md += [
                f"Tokenizer `{t.tokenizer}`:",
                "",
                "| text | tokens | characters | tokens / char |",
                "|---|---:|---:|---:|",
                f"| sample | {t.sample_tokens} | {t.sample_chars} | {t.sample_tokens_per_char:.3f} |",
                f"| English reference | {t.reference_tokens} | {t.reference_chars} | "
                f"{t.reference_tokens_per_char:.3f} |",
                "",
                f"Ratio {t.ratio:.2f}x; unknown tokens: {t.unknown_tokens}.",
            ]
        md += ["", "## (d) Recommendation", ""]
        if self.recommended:
            md.append(
                f"Add {len(self.recommended)} characters to the CTC vocabulary (they cover "
                f"{100 * self.recommended_coverage:.2f}% of the OOV letter / mark / digit occurrences; "
                f"target {100 * self.coverage_target:g}%), most frequent first:"
            )
            md += ["", "    " + "".join(self.recommended), ""]
            md.append(
                f"e.g. `granite-train extend-vocab model_path=DIR out=NEW_DIR symbols_from={self.sample}` "
                "(or `model.extra_symbols` of a stage-1 recipe)."
            )
        else:
            md.append("The CTC vocabulary covers the sample's letters: nothing to add.")
        if self.not_addable:
            md += [
                "",
                "Punctuation / symbols outside the vocabulary (normalise or drop, e.g. "
                f"`strip_punctuation`): {' '.join(f'`{_show(c)}`' for c in self.not_addable)}",
            ]
        if self.tokenizer is not None:
            verdict = "needs attention" if self.tokenizer.needs_attention else "is fine"
            md += ["", f"The tokenizer {verdict}: {self.tokenizer.reason()}."]
        return "\n".join(md) + "\n"


def _show(char: str) -> str:
    """A character as markdown can show it (control and space-like characters by code point)."""
    return char if char.isprintable() and not char.isspace() and char != "`" else f"U+{ord(char):04X}"


def read_lines(path: str | Path, limit: int | None = None) -> list[str]:
    """The non-empty lines of a UTF-8 text file (at most ``limit``), without line ends."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no text sample at {path}: expected a UTF-8 file, one sentence a line")
    with path.open(encoding="utf-8") as f:
        lines = (line.rstrip("\r\n") for line in f)
        return list(itertools.islice((line for line in lines if line.strip()), limit))


def normaliser_mapping(char: str, vocab: CharVocab) -> tuple[str, str] | None:
    """What a normaliser could write for an OOV ``char`` so that it is in ``vocab``, and how.

    ``("fi", "nfkc")`` for "ﬁ": its compatibility form, every character in the vocabulary.
    ``("â", "drop_marks")`` for "ậ": the base letter of its NFKD decomposition with the largest
    set of its combining marks that still composes to one in-vocabulary character. None if neither.
    """
    nfkc = unicodedata.normalize("NFKC", char)
    if nfkc != char and nfkc and all(c in vocab for c in nfkc):
        return nfkc, "nfkc"
    decomposed = unicodedata.normalize("NFKD", char)
    base, marks = decomposed[:1], decomposed[1:]
    if not marks or not all(unicodedata.category(m).startswith("M") for m in marks):
        return None
    if len(marks) > _MAX_MARKS:
        marks = marks[:_MAX_MARKS]
    for size in range(len(marks) - 1, -1, -1):  # keep as many marks as possible
        for kept in itertools.combinations(marks, size):
            candidate = unicodedata.normalize("NFC", base + "".join(kept))
            if len(candidate) == 1 and candidate in vocab:
                return candidate, "drop_marks"
    return None


def recommend_symbols(oov: Counter[str], coverage: float = 0.999) -> tuple[list[str], float]:
    """The addable OOV characters (letters, marks, digits) to add, most frequent first (ties by
    code point), until they cover ``coverage`` of the addable occurrences; and the share covered.
    """
    if not 0.0 < coverage <= 1.0:
        raise ValueError(f"coverage must be in (0, 1], got {coverage}")
    addable = sorted(
        ((c, n) for c, n in oov.items() if unicodedata.category(c).startswith(_ADDABLE)),
        key=lambda cn: (-cn[1], cn[0]),
    )
    total = sum(n for _, n in addable)
    chosen: list[str] = []
    covered = 0
    for char, n in addable:
        if total and covered / total >= coverage:
            break
        chosen.append(char)
        covered += n
    return chosen, (covered / total if total else 1.0)


def tokenizer_stats(
    tokenizer: Any,
    sample: Sequence[str],
    reference: Sequence[str],
    limit: float = 2.0,
    name: str | None = None,
) -> TokenizerStats:
    """Tokens per character of ``sample`` and ``reference`` lines (no special tokens).

    Args:
        tokenizer: a transformers tokenizer, or a local folder to load one from (never the hub).
        limit: a sample/reference ratio above this needs attention.
    """
    if isinstance(tokenizer, str | Path):
        from transformers import AutoTokenizer

        if not Path(tokenizer).is_dir():
            raise FileNotFoundError(
                f"no tokenizer folder at {tokenizer}: expected a local folder with tokenizer files "
                "(e.g. the LLM's); nothing is downloaded"
            )
        name = name or str(tokenizer)
        tokenizer = AutoTokenizer.from_pretrained(str(tokenizer), local_files_only=True)
    if not reference:
        raise ValueError("the English reference sample is empty")
    unk = getattr(tokenizer, "unk_token_id", None)

    def count(lines: Sequence[str]) -> tuple[int, int, int]:
        ids = tokenizer(list(lines), add_special_tokens=False)["input_ids"]
        tokens = sum(len(row) for row in ids)
        unknown = sum(row.count(unk) for row in ids) if unk is not None else 0
        return tokens, sum(len(line) for line in lines), unknown

    s_tokens, s_chars, s_unk = count([unicodedata.normalize("NFC", line) for line in sample])
    r_tokens, r_chars, _ = count(list(reference))
    return TokenizerStats(
        tokenizer=name or type(tokenizer).__name__,
        sample_tokens=s_tokens,
        sample_chars=s_chars,
        reference_tokens=r_tokens,
        reference_chars=r_chars,
        unknown_tokens=s_unk,
        limit=limit,
    )


def coverage_report(
    lines: Iterable[str],
    vocab: CharVocab | None = None,
    *,
    language: str | None = None,
    lowercase: bool = False,
    strip_punctuation: bool = False,
    coverage: float = 0.999,
    tokenizer: Any = None,
    reference: Sequence[str] | None = None,
    tokens_per_char_limit: float = 2.0,
    sample_name: str = "sample",
) -> CoverageReport:
    """Coverage of ``lines`` (one sentence each) by ``vocab`` (default: the base vocabulary).

    Args:
        language: the sample's language tag (``ja`` turns text into its katakana reading first, as
            the targets do).
        lowercase / strip_punctuation: as the recipe's data pipeline builds its targets.
        coverage: share of the addable OOV occurrences the recommendation must cover.
        tokenizer: a transformers tokenizer or local folder; with ``reference`` (English lines)
            adds section (c).
    """
    vocab = vocab if vocab is not None else CharVocab()
    lines = list(lines)
    targets = CTCTargetBuilder(vocab, lowercase=lowercase, strip_punctuation=strip_punctuation)
    texts = [
        unicodedata.normalize("NFC", targets.target_text(unicodedata.normalize("NFC", line), language))
        for line in lines
    ]
    chars = sum(len(t) for t in texts)
    oov: Counter[str] = Counter(c for t in texts for c in t if c not in vocab)
    total = sum(oov.values())
    rows = []
    for char, n in sorted(oov.items(), key=lambda cn: (-cn[1], cn[0])):
        mapped = normaliser_mapping(char, vocab)
        rows.append(
            CharCount(
                char=char,
                count=n,
                share=n / total,
                codepoint=f"U+{ord(char):04X}",
                name=unicodedata.name(char, "?"),
                category=unicodedata.category(char),
                maps_to=mapped[0] if mapped else None,
                mapping=mapped[1] if mapped else None,
            )
        )
    compatibility = {r.char for r in rows if r.mapping == "nfkc"}
    recommended, covered = recommend_symbols(
        Counter({c: n for c, n in oov.items() if c not in compatibility}), coverage
    )
    stats = None
    if tokenizer is not None:
        if reference is None:
            raise ValueError("a tokenizer check needs an English reference sample")
        stats = tokenizer_stats(tokenizer, lines, reference, tokens_per_char_limit)
    return CoverageReport(
        sample=sample_name,
        language=language,
        lines=len(lines),
        chars=chars,
        oov_occurrences=total,
        oov=rows,
        oov_after_mapping=sum(r.count for r in rows if r.maps_to is None),
        recommended=recommended,
        recommended_coverage=covered,
        coverage_target=coverage,
        not_addable=[r.char for r in rows if not r.category.startswith(_ADDABLE)],
        tokenizer=stats,
        vocab_size=len(vocab),
        options={"lowercase": lowercase, "strip_punctuation": strip_punctuation},
    )
