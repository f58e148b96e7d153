"""Japanese text -> katakana reading, the form of granite-speech's Japanese CTC targets.

Pipeline of :class:`KatakanaConverter`:

1. NFKC: full-width ASCII becomes ASCII ("ＡＢＣ１２３" -> "ABC123"), half-width katakana
   becomes full-width, and compatibility characters are spelled out ("㈱" -> "(株)").
2. SudachiPy (mode C, dictionary sudachidict_core) splits the text into morphemes.
3. Each morpheme becomes its reading:

   - words: ``reading_form()``, which Sudachi gives in katakana. It is the dictionary reading,
     not the pronunciation: particles stay as written (は ハ, へ ヘ, を ヲ) and long vowels as
     spelled (東京 トウキョウ, not トーキョー). The katakana middle dot is dropped
     (ドナルド・トランプ -> ドナルドトランプ).
   - numbers: re-read with num2words plus counter rules (:mod:`.ja_numbers`), because Sudachi
     reads digits one by one ("2024" -> ニレイニシ). Single-character numerals outside a counter
     rule keep Sudachi's reading, which depends on context (3つ ミッツ, 1つ ヒトツ).
   - Latin words ("iPhone", "New York", "don't") stay as written: Latin-1 is in the vocabulary,
     and the English spelling is what the model is trained to output for English words.
   - punctuation and symbols (。、「」！？・… and their ASCII forms) are dropped; they only
     separate words.
   - anything else Sudachi cannot read (a reading that is not katakana: emoji, hangul, rare
     kanji) is kept as written, hiragana turned into katakana, so that the vocabulary's
     out-of-vocabulary policy decides, and counts, what happens to it.

4. Spaces survive only between two Latin-1 characters ("Apple、Google" -> "Apple Google");
   Japanese is written without them.

Known gaps: Sudachi picks a wrong reading now and then (富士山 -> フジヤマ in "富士山に登った");
digit groups of phone numbers are read as numbers ("0120-123" -> ゼロイチニゼロヒャクニジュウサン);
"%" is read パーセント but "&" and "$" are dropped as symbols; counters without a rule in
:mod:`.ja_numbers` keep Sudachi's reading of the counter word.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from granite_train.text.ja_numbers import read_counted, read_number, to_katakana

if TYPE_CHECKING:
    from sudachipy import Tokenizer

_KATAKANA = re.compile(r"[\u30A1-\u30FC]+")  # the vocabulary's katakana block, ー included
# A space is dropped unless a Latin-1 character sits on both sides of it.
_SPACE_NEXT_TO_NON_LATIN1 = re.compile(r" (?=[^\x00-\xff])|(?<=[^\x00-\xff]) ")
_SYMBOL_CATEGORIES = ("P", "S", "Z", "C")  # punctuation, symbols, separators, controls
# Sudachi rejects inputs longer than about 49 kB; 4096 characters are at most 16 kB of UTF-8.
_MAX_CHUNK_CHARS = 4096


@dataclass(frozen=True)
class Morpheme:
    """One Sudachi morpheme: surface form, katakana reading and part of speech (6 levels)."""

    surface: str
    reading: str
    pos: tuple[str, ...]

    @property
    def is_numeral(self) -> bool:
        return self.pos[:2] == ("名詞", "数詞")

    @property
    def is_symbol(self) -> bool:
        return self.pos[0] in ("補助記号", "空白")


def _strip_symbols(text: str) -> str:
    return "".join(c for c in text if not unicodedata.category(c).startswith(_SYMBOL_CATEGORIES))


def _is_latin_word(text: str) -> bool:
    return all(ord(c) < 256 for c in text) and any(c.isalpha() for c in text)


def _word_reading(m: Morpheme) -> str:
    if _is_latin_word(m.surface):
        return m.surface  # Latin word: keep the spelling (Sudachi would give アイフォーン)
    if _KATAKANA.fullmatch(m.reading):
        return m.reading.replace("・", "")
    return to_katakana(m.surface)  # unknown to Sudachi: leave it to the vocabulary's OOV policy


def _chunks(text: str) -> Iterator[str]:
    """Split text longer than Sudachi accepts, preferably after a sentence end."""
    start = 0
    while len(text) - start > _MAX_CHUNK_CHARS:
        end = start + _MAX_CHUNK_CHARS
        cut = max(text.rfind(c, start, end) for c in "。！？!?\n ")
        end = cut + 1 if cut > start else end
        yield text[start:end]
        start = end
    yield text[start:]


def _readings(morphemes: list[Morpheme]) -> Iterator[str]:
    """Reading of each morpheme (or of a number + counter pair); " " where words are separated."""
    i = 0
    while i < len(morphemes):
        m = morphemes[i]
        if m.is_numeral and i + 1 < len(morphemes):
            after_month = i > 0 and morphemes[i - 1].surface.endswith("月")
            counted = read_counted(m.surface, morphemes[i + 1].surface, after_month=after_month)
            if counted is not None:
                yield counted
                i += 2
                continue
        if m.is_numeral and len(m.surface) > 1:
            yield read_number(m.surface) or _word_reading(m)
        elif m.is_symbol:
            # Keep what is not punctuation ("〜ー" -> "ー", hangul), else mark a word boundary.
            yield to_katakana(_strip_symbols(m.surface)) or " "
        else:
            yield _word_reading(m)
        i += 1


class KatakanaConverter:
    """Japanese text -> katakana reading for CTC targets (see the module docstring).

    The Sudachi tokenizer is built on first use (loading the dictionary takes about half a
    second) and is not pickled, so the converter can be sent to dataloader worker processes,
    each of which builds its own. A tokenizer must not be shared between threads.

    Args:
        split_mode: Sudachi split mode; "C" (longest units) keeps compounds and names whole, so
            that their dictionary reading is used (東京タワー, 二十歳 ハタチ).
        dict_type: Sudachi dictionary package: "core" (sudachidict_core), "small" or "full".
    """

    def __init__(self, split_mode: str = "C", dict_type: str = "core") -> None:
        self.split_mode = split_mode
        self.dict_type = dict_type
        self._tokenizer: Tokenizer | None = None

    def __repr__(self) -> str:
        return f"{type(self).__name__}(split_mode={self.split_mode!r}, dict_type={self.dict_type!r})"

    @property
    def tokenizer(self) -> Tokenizer:
        """The Sudachi tokenizer, built on first access."""
        if self._tokenizer is None:
            from sudachipy import Dictionary  # imported here: only Japanese data needs it

            self._tokenizer = Dictionary(dict=self.dict_type).tokenizer(mode=self.split_mode)
        return self._tokenizer

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_tokenizer": None}  # Sudachi's tokenizer cannot be pickled

    def morphemes(self, text: str) -> list[Morpheme]:
        """Sudachi's analysis of NFKC-normalized ``text`` (for debugging the readings)."""
        text = unicodedata.normalize("NFKC", text)
        return [
            Morpheme(m.surface(), m.reading_form(), tuple(m.part_of_speech()))
            for chunk in _chunks(text)
            for m in self.tokenizer.tokenize(chunk)
        ]

    def __call__(self, text: str) -> str:
        """Katakana reading of ``text``; Latin words kept, punctuation dropped, spaces squeezed."""
        joined = " ".join("".join(_readings(self.morphemes(text))).split())
        return _SPACE_NEXT_TO_NON_LATIN1.sub("", joined)
