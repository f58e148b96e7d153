"""Japanese text -> katakana reading, so that espeak-ng can speak it.

espeak-ng 1.51's Japanese voice only knows kana: every kanji is spoken as the English words
"Chinese letter", and a voiced kana that follows a kanji or a Latin letter in the same word loses its
dakuten (it is read as the unvoiced kana plus "Japanese letter"). Pure katakana, in contrast, is
read well, including long vowels (ー), geminates (ッ) and digits (123 -> hyaku nijuu san).

``to_kana`` therefore rewrites a sentence into its katakana reading with SudachiPy (a project
dependency): morphemes -> ``reading_form()``, the particles は/へ -> ワ/エ as pronounced, digit runs
kept as digits (espeak-ng reads numbers itself; Sudachi would read 2024 digit by digit), punctuation
kept as pauses and a space between kana and any other script. Only the audio uses the reading; the
transcript stays in the original script.
"""

from __future__ import annotations

import functools
import re
import unicodedata

_DIGIT_RUN = re.compile(r"[0-9][0-9,.]*[0-9]|[0-9]")
_KANA = r"\u3041-\u309f\u30a0-\u30ff"
# A boundary between a kana and a non-kana, non-space character (either order).
_PAUSE = "、。?"
_SCRIPT_BOUNDARY = re.compile(
    rf"(?<=[{_KANA}])(?=[^{_KANA}\s{_PAUSE}])|(?<=[^{_KANA}\s{_PAUSE}])(?=[{_KANA}])"
)
_SENTENCE_END = set("。．.！!？?")
_COMMA = set("、，,・;；:：")
_PARTICLE_READING = {"は": "ワ", "へ": "エ"}


@functools.lru_cache(maxsize=1)
def _tokenizer():
    try:
        from sudachipy import Dictionary
    except ImportError as e:  # pragma: no cover - sudachipy is a hard dependency of granite-train
        raise ImportError(
            "Japanese text for espeak-ng needs SudachiPy: pip install sudachipy sudachidict-core"
        ) from e
    return Dictionary(dict="core").tokenizer()


def available() -> bool:
    try:
        import sudachidict_core  # noqa: F401
        import sudachipy  # noqa: F401
    except ImportError:
        return False
    return True


def _morpheme_reading(m) -> str:
    surface = m.surface()
    pos = m.part_of_speech()[0]
    if pos == "助詞" and surface in _PARTICLE_READING:
        return _PARTICLE_READING[surface]
    if pos in ("補助記号", "空白"):
        if any(c in "？?" for c in surface):
            return "?"  # keeps the question intonation
        if any(c in _SENTENCE_END for c in surface):
            return "。"
        if any(c in _COMMA for c in surface):
            return "、"
        return " "  # brackets, quotes, ...: a word boundary is enough
    return m.reading_form() or surface


def _reading(text: str) -> str:
    """Katakana reading of ``text``, digit runs kept as digits."""
    from sudachipy import SplitMode

    out = []
    for m in _tokenizer().tokenize(text, SplitMode.C):
        surface = m.surface()
        if not any(c.isdigit() for c in surface):
            out.append(_morpheme_reading(m))
            continue
        # A morpheme with digits (2024, 123億, 1,250万...): keep the digit runs, read the rest alone.
        pos = 0
        for d in _DIGIT_RUN.finditer(surface):
            if d.start() > pos:
                out.append(_reading(surface[pos : d.start()]))
            out.append(f" {d.group()} ")
            pos = d.end()
        if pos < len(surface):
            out.append(_reading(surface[pos:]))
    return "".join(out)


def to_kana(text: str) -> str:
    """Katakana reading of Japanese ``text`` for espeak-ng (digits kept as digits)."""
    text = unicodedata.normalize("NFKC", text)  # full-width digits/Latin -> ASCII
    reading = _SCRIPT_BOUNDARY.sub(" ", _reading(text))
    return " ".join(reading.split())
