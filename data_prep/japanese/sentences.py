"""Japanese web text -> speakable sentences: splitting and filtering, every drop counted.

Data flow::

    documents (lines of a text file, paragraphs, or a dataset's text column)
      -> split_sentences: on 。．！？!? and newlines; closing brackets/quotes stay with their sentence,
         and a terminator inside 「...」 (quoted speech) does not end the sentence
      -> SentenceFilter: NFC + collapsed whitespace, then the first failing check names the reason:
           too_short / too_long               length in characters (min_chars, max_chars)
           unspeakable_{email,url,code,markup,emoji,digits}
           not_japanese                       share of kana/kanji among letters < min_japanese_ratio
           duplicate                          64-bit hash of the sentence seen before
           reading_error / reading_empty      KatakanaConverter raised / gave nothing
           reading_oov                        reading has characters outside the CTC vocabulary
           reading_non_katakana               reading keeps Latin words or digits (unless allow_latin)
      -> kept sentences, with their katakana reading (the CTC target)

The checks run cheapest first; the reading (SudachiPy, ~0.25 ms a sentence) only for sentences
that passed everything else, duplicates included. ``FilterStats`` holds the counts and, per
reason, the first few rejected sentences, so that nothing is dropped silently.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

# ------------------------------------------------------------------------------------- splitting

TERMINATORS = frozenset("。．！？!?")
"""Characters that end a sentence (ASCII "." does not: decimals, abbreviations, URLs)."""
OPENING = "「『（(［[｛{【〈《〔〘“‘"
CLOSING = "」』）)］]｝}】〉》〕〙”’"
_CLOSE_TRAILERS = frozenset(CLOSING) | frozenset("\"'")
"""Characters kept with the sentence when they follow its terminator."""
_QUOTATIVE = ("と", "って", "っと", "など")
"""After 「...。」 these continue the sentence (「はい。」と言った。)."""


def _split_line(line: str, respect_brackets: bool) -> tuple[list[str], int]:
    """Sentences of one line (no newlines) and the bracket depth left open at its end."""
    out: list[str] = []
    start = 0
    depth = 0
    i = 0
    n = len(line)
    while i < n:
        ch = line[i]
        if respect_brackets and ch in OPENING:
            depth += 1
        elif respect_brackets and ch in CLOSING:
            depth = max(0, depth - 1)
            # 「...。」 closing the last bracket ends the sentence, unless a quotative follows.
            k = i - 1
            while k >= start and line[k] in _CLOSE_TRAILERS:
                k -= 1
            if depth == 0 and k >= start and line[k] in TERMINATORS:
                j = i + 1
                while j < n and line[j] in _CLOSE_TRAILERS:
                    j += 1
                if not line.startswith(_QUOTATIVE, j):
                    out.append(line[start:j])
                    start = i = j
                    continue
        elif ch in TERMINATORS and depth == 0:
            j = i + 1
            while j < n and (line[j] in TERMINATORS or line[j] in _CLOSE_TRAILERS):
                j += 1
            out.append(line[start:j])
            start = i = j
            continue
        i += 1
    if start < n:
        out.append(line[start:])
    return out, depth


def split_sentences(text: str) -> list[str]:
    """Split Japanese text into sentences (see the module docstring); blank pieces are dropped.

    >>> split_sentences("「はい。」と彼は言った。本当？うん！")
    ['「はい。」と彼は言った。', '本当？', 'うん！']

    A line whose brackets do not balance is split again ignoring brackets, so that one stray
    「 cannot glue the rest of a paragraph into a single over-long "sentence".
    """
    sentences: list[str] = []
    for line in text.splitlines():
        if not line.strip():
            continue
        pieces, open_depth = _split_line(line, respect_brackets=True)
        if open_depth:
            pieces, _ = _split_line(line, respect_brackets=False)
        sentences.extend(p.strip() for p in pieces if p.strip())
    return sentences


def iter_paragraphs(lines: Iterable[str]) -> Iterator[str]:
    """Blank-line separated paragraphs of hard-wrapped text, wrapped lines joined.

    Lines are joined without a space (Japanese), or with one where both sides are ASCII
    ("a\\nword" -> "a word").
    """
    block: list[str] = []
    for raw in lines:
        line = raw.strip()
        if line:
            block.append(line)
            continue
        if block:
            yield _join_wrapped(block)
            block = []
    if block:
        yield _join_wrapped(block)


def _join_wrapped(lines: list[str]) -> str:
    out = lines[0]
    for line in lines[1:]:
        sep = " " if out[-1].isascii() and out[-1].isalnum() and line[0].isascii() else ""
        out += sep + line
    return out


# ----------------------------------------------------------------------------------------- script


def is_japanese_char(ch: str) -> bool:
    """Hiragana, katakana (not the middle dot ・), half-width katakana, kanji, 々 〆 〇 ヶ."""
    cp = ord(ch)
    return (
        0x3041 <= cp <= 0x309F  # hiragana
        or (0x30A0 <= cp <= 0x30FF and cp != 0x30FB)  # katakana, ー included
        or 0x31F0 <= cp <= 0x31FF  # katakana phonetic extensions
        or 0xFF66 <= cp <= 0xFF9F  # half-width katakana
        or 0x4E00 <= cp <= 0x9FFF  # CJK unified ideographs
        or 0x3400 <= cp <= 0x4DBF  # extension A
        or 0xF900 <= cp <= 0xFAFF  # compatibility ideographs
        or 0x20000 <= cp <= 0x3134F  # extensions B..G
        or ch in "々〆〇ヶ"
    )


def japanese_ratio(text: str) -> float:
    """Share of Japanese characters among the letters of ``text`` (digits, punctuation, spaces
    and symbols not counted); 0.0 for text without letters."""
    letters = [c for c in text if unicodedata.category(c)[0] == "L" or is_japanese_char(c)]
    if not letters:
        return 0.0
    return sum(map(is_japanese_char, letters)) / len(letters)


# ---------------------------------------------------------------------------------- unspeakable

# All patterns run on the NFKC form, so full-width ＵＲＬ, ＠ and ｜ are caught too.
_EMAIL = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+")
# ASCII word boundaries: in Python's Unicode regexes kana are word characters, so \b would not
# separate "詳しくはexample.comへ".
_A = r"(?<![A-Za-z0-9_])"
_URL = re.compile(
    r"(?i)(?:https?|ftp)://|" + _A + r"www\.|" + _A + r"[a-z0-9-]+(?:\.[a-z0-9-]+)*"
    r"\.(?:com|net|org|info|biz|jp|io|co|html?|php|cgi|aspx?)(?![a-z0-9-])"
)
_CODE = re.compile(
    r"==|!=|<=|>=|=>|->|::|&&|\|\||\+\+|/\*|\*/|[{}]|;\s*(?:$|[A-Za-z_$])|\$[A-Za-z_{(]|"
    + _A
    + r"[A-Za-z_][A-Za-z0-9_.]*\([A-Za-z0-9_,.'\" ]*\)|"  # f(x), print() -- not NHK(日本放送協会)
    + _A
    + r"(?:def|function|return|import|var|const|class|void|#include)\s"
)
_MARKUP = re.compile(
    r"</?[A-Za-z][^>]*>|&#?[A-Za-z0-9]+;|"  # HTML tags and entities
    r"[|#*_^`\[\]<>=\\\u2190-\u21ff\u2500-\u25ff]"  # tables, wiki/markdown, arrows, box drawing, ■○
)
_EMOJI = re.compile(
    "[\U0001f000-\U0001faff\u2600-\u27bf\u2b00-\u2bff\u2300-\u23ff\ufe0f\u200d\U000e0020-\U000e007f]"
)


@dataclass(frozen=True)
class UnspeakableRules:
    """What makes a sentence unspeakable for TTS (checked in this order; the first match names
    the reason ``unspeakable_<kind>``)."""

    max_digits: int = 8
    """A run of more digits than this (commas inside numbers ignored) is ``digits``."""
    reject_digit_groups: bool = True
    """Three digit groups joined by - or / (phone numbers, dates 2024/01/01) are ``digits``:
    the CTC reading reads each group as a number, which is not what a speaker says."""

    def check(self, text: str) -> str | None:
        """Reason (``email``, ``url``, ``code``, ``markup``, ``emoji``, ``digits``) or None."""
        t = unicodedata.normalize("NFKC", text)
        if _EMAIL.search(t):
            return "email"
        if _URL.search(t):
            return "url"
        if _CODE.search(t):
            return "code"
        if _MARKUP.search(t):
            return "markup"
        if _EMOJI.search(t):
            return "emoji"
        for run in re.findall(r"\d[\d,]*", t):
            if sum(c.isdigit() for c in run) > self.max_digits:
                return "digits"
        if self.reject_digit_groups and re.search(r"\d+[-/]\d+[-/]\d+", t):
            return "digits"
        return None


# ------------------------------------------------------------------------------------- filtering


_KATAKANA_READING = re.compile(r"[\u30a1-\u30fc ]+")  # the vocabulary's katakana block, ー included


def normalize(text: str) -> str:
    """NFC + collapsed whitespace: the form that is checked, stored and synthesised (as in
    ``data_prep.tts.generate.normalize_sentence``)."""
    return " ".join(unicodedata.normalize("NFC", text).split())


def text_hash(text: str) -> int:
    """64-bit hash of a sentence for duplicate detection (8 bytes of BLAKE2b; a collision in
    10 M sentences has a probability of about 3e-6)."""
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "big")


REASONS = (
    "too_short",
    "too_long",
    "unspeakable_email",
    "unspeakable_url",
    "unspeakable_code",
    "unspeakable_markup",
    "unspeakable_emoji",
    "unspeakable_digits",
    "not_japanese",
    "duplicate",
    "reading_error",
    "reading_empty",
    "reading_oov",
    "reading_non_katakana",
)
"""Every filter reason, in the order the checks run."""


@dataclass
class FilterStats:
    """Counts of what the filter saw, kept and dropped (per reason), plus rejected examples."""

    documents: int = 0
    sentences: int = 0
    kept: int = 0
    kept_chars: int = 0
    rejected: Counter = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)
    """reason -> the first ``max_examples`` rejected sentences."""
    max_examples: int = 20

    def reject(self, reason: str, text: str) -> None:
        self.rejected[reason] += 1
        bucket = self.examples.setdefault(reason, [])
        if len(bucket) < self.max_examples:
            bucket.append(text)

    @property
    def total_rejected(self) -> int:
        return sum(self.rejected.values())

    def as_dict(self) -> dict[str, Any]:
        return {
            "documents": self.documents,
            "sentences": self.sentences,
            "kept": self.kept,
            "kept_chars": self.kept_chars,
            "rejected": {r: self.rejected[r] for r in REASONS if self.rejected[r]}
            | {r: n for r, n in sorted(self.rejected.items()) if r not in REASONS},
        }

    def format(self) -> str:
        rej = ", ".join(f"{r}={n}" for r, n in self.as_dict()["rejected"].items()) or "none"
        share = self.kept / self.sentences if self.sentences else 0.0
        return (
            f"text: {self.documents} documents -> {self.sentences} sentences -> {self.kept} kept "
            f"({share:.1%}); rejected: {rej}"
        )


def default_reader() -> Callable[[str], str]:
    """The katakana reading used for CTC targets (``CTCTargetBuilder.target_text(text, "ja")``)."""
    from granite_train.text.japanese import KatakanaConverter

    return KatakanaConverter()


@dataclass
class SentenceFilter:
    """Filters sentences for Japanese TTS (see the module docstring); counts in ``stats``.

    ``__call__(sentence)`` returns ``(normalized sentence, reading)`` or None (rejected, counted).
    """

    min_chars: int = 5
    """Shorter sentences (characters, after normalisation) are ``too_short``."""
    max_chars: int = 120
    """Longer ones are ``too_long`` (about 15-20 s of speech; Kokoro reads at most ~510 phonemes)."""
    min_japanese_ratio: float = 0.6
    """Minimum share of kana/kanji among the letters; below it: ``not_japanese``."""
    allow_latin: bool = False
    """Keep sentences whose reading holds Latin-1 characters besides katakana ("iPhone", "LDK";
    they are in the CTC vocabulary). Off by default: TTS voices spell or skip them (espeak-ng ja
    drops the "V" of "V字", spells "iPhone" in English letters), so audio and target disagree."""
    unspeakable: UnspeakableRules = field(default_factory=UnspeakableRules)
    dedupe: bool = True
    reader: Callable[[str], str] | None = None
    """Text -> katakana reading; default ``KatakanaConverter()`` (created on first use)."""
    stats: FilterStats = field(default_factory=FilterStats)

    def __post_init__(self) -> None:
        if self.min_chars < 1 or self.max_chars < self.min_chars:
            raise ValueError(f"need 1 <= min_chars <= max_chars, got {self.min_chars}, {self.max_chars}")
        if not 0.0 <= self.min_japanese_ratio <= 1.0:
            raise ValueError("min_japanese_ratio must be in [0, 1]")
        from granite_train.text.vocab import CharVocab

        self._vocab = CharVocab()
        self._seen: set[int] = set()

    def _read(self, text: str) -> str:
        if self.reader is None:
            self.reader = default_reader()
        return " ".join(self.reader(text).split())

    def check(self, sentence: str) -> tuple[str, str | None, str | None]:
        """-> (normalized text, reason or None, reading or None); does not count."""
        text = normalize(sentence)
        if len(text) < self.min_chars:
            return text, "too_short", None
        if len(text) > self.max_chars:
            return text, "too_long", None
        kind = self.unspeakable.check(text)
        if kind is not None:
            return text, f"unspeakable_{kind}", None
        if japanese_ratio(text) < self.min_japanese_ratio:
            return text, "not_japanese", None
        if self.dedupe:
            h = text_hash(text)
            if h in self._seen:
                return text, "duplicate", None
            self._seen.add(h)
        try:
            reading = self._read(text)
        except Exception:  # noqa: BLE001 - counted as reading_error
            return text, "reading_error", None
        if not reading.strip():
            return text, "reading_empty", None
        if any(c not in self._vocab for c in reading):
            return text, "reading_oov", None
        if not self.allow_latin and not _KATAKANA_READING.fullmatch(reading):
            return text, "reading_non_katakana", None
        return text, None, reading

    def __call__(self, sentence: str) -> tuple[str, str] | None:
        self.stats.sentences += 1
        text, reason, reading = self.check(sentence)
        if reason is not None:
            self.stats.reject(reason, text)
            return None
        self.stats.kept += 1
        self.stats.kept_chars += len(text)
        return text, reading

    def iter_documents(self, documents: Iterable[str]) -> Iterator[tuple[str, str]]:
        """Split every document into sentences and yield the kept ``(text, reading)`` pairs."""
        for doc in documents:
            self.stats.documents += 1
            for sentence in split_sentences(doc):
                kept = self(sentence)
                if kept is not None:
                    yield kept

    def describe(self) -> dict[str, Any]:
        """Settings, for the dataset card."""
        return {
            "min_chars": self.min_chars,
            "max_chars": self.max_chars,
            "min_japanese_ratio": self.min_japanese_ratio,
            "allow_latin": self.allow_latin,
            "max_digits": self.unspeakable.max_digits,
            "reject_digit_groups": self.unspeakable.reject_digit_groups,
            "dedupe": self.dedupe,
        }
