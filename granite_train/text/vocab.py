"""CTC character vocabulary of granite-4.0-1b-speech.

The encoder's CTC head has 348 outputs (model card; RECIPE.md "Encoder"):

==========  ======================================  ==========================
ids         symbols                                 mapping
==========  ======================================  ==========================
0           CTC blank                               --
1 .. 255    Latin-1 code points U+0001 .. U+00FF    ``id == ord(char)``
256 .. 347  katakana U+30A1 (ァ) .. U+30FC (ー)     ``id == 256 + ord(char) - 0x30A1``
==========  ======================================  ==========================

The katakana block is a guess: the model card only says "92 katakana", and U+30A1..U+30FC is
exactly 92 code points (small ァ through the prolonged sound mark ー, including ヴ ヵ ヶ and ・).

A new language adds symbols *after* these (ids 348, 349, ...: ``CharVocab(extra_symbols=...)``),
so that every id of the published head keeps its meaning. The whole id -> symbol list travels
with a model as a symbol table (:meth:`CharVocab.to_table`, ``ctc_vocab.json`` beside an export's
``config.json``).
"""

from __future__ import annotations

import functools
import itertools
import operator
import unicodedata
from collections import Counter
from collections.abc import Iterable, Mapping
from enum import Enum
from typing import Any

VOCAB_SIZE = 348  # the base vocabulary (the published head); extra symbols follow it
BLANK_ID = 0

_LATIN1_END = 256  # ids 1..255 are the Latin-1 code points themselves
_KATAKANA_FIRST = 0x30A1  # ァ
_KATAKANA_LAST = 0x30FC  # ー

assert _LATIN1_END + _KATAKANA_LAST - _KATAKANA_FIRST + 1 == VOCAB_SIZE


class OOVPolicy(str, Enum):
    """What :meth:`CharVocab.encode` does with a character outside the vocabulary."""

    DROP = "drop"
    """Leave the character out of the target."""
    REPLACE = "replace"
    """Put ``CharVocab.replacement`` in its place."""
    REJECT = "reject"
    """Raise :class:`OOVError`, so that the caller can skip the utterance."""


class OOVError(ValueError):
    """A text holds characters outside the CTC vocabulary (raised under ``OOVPolicy.REJECT``)."""

    def __init__(self, chars: Iterable[str], text: str | None = None) -> None:
        self.chars: tuple[str, ...] = tuple(sorted(set(chars)))
        self.text = text
        listed = ", ".join(f"{c!r} (U+{ord(c):04X})" for c in self.chars)
        super().__init__(f"out-of-vocabulary characters: {listed}" + (f" in {text!r}" if text else ""))


TABLE_FORMAT = "granite-train/ctc-vocab/v1"
"""``format`` of a symbol table: ``{"blank_id": 0, "size": N, "base_size": 348, "symbols": [...]}``,
where ``symbols[i]`` is the character of id ``i`` ("" for the blank)."""


@functools.cache
def _symbol_table() -> tuple[str, ...]:
    """Characters by id; the blank (id 0) has the empty string."""
    latin1 = (chr(i) for i in range(1, _LATIN1_END))
    katakana = (chr(cp) for cp in range(_KATAKANA_FIRST, _KATAKANA_LAST + 1))
    return ("", *latin1, *katakana)


def _check_extra_symbols(symbols: Iterable[str]) -> tuple[str, ...]:
    """``symbols`` as a tuple, each one NFC-stable code point outside the base vocabulary, once.

    NFC-stable because :meth:`CharVocab.encode` normalizes text first: a symbol that NFC rewrites
    (U+212B ANGSTROM SIGN -> Å) could never be produced.
    """
    if isinstance(symbols, str):
        raise TypeError(f"extra_symbols must be a list of characters, not the string {symbols!r}")
    out = tuple(symbols)
    base = set(_symbol_table())
    seen: set[str] = set()
    for char in out:
        if not isinstance(char, str) or len(char) != 1:
            raise ValueError(f"each extra symbol must be one character, got {char!r}")
        name = f"{char!r} (U+{ord(char):04X})"
        if unicodedata.normalize("NFC", char) != char:
            nfc = unicodedata.normalize("NFC", char)
            raise ValueError(
                f"extra symbol {name} is not NFC-stable (NFC gives {nfc!r}): add {nfc!r} instead"
            )
        if char in base:
            raise ValueError(f"extra symbol {name} is already in the base vocabulary")
        if char in seen:
            raise ValueError(f"extra symbol {name} is listed twice")
        seen.add(char)
    return out


class CharVocab:
    """Character <-> id mapping for CTC targets, with a policy for unknown characters.

    Text is NFC-normalized before lookup, so a decomposed "e" + U+0301 becomes the Latin-1 "é"
    and a decomposed "カ" + U+3099 becomes "ガ". Normalization beyond that (case, punctuation,
    Japanese readings) is the job of :mod:`granite_train.text.targets`.

    Every out-of-vocabulary character that :meth:`encode` meets is counted in
    :attr:`oov_counts`, whatever the policy, so that data preparation can report what it lost.
    The counter is per instance: each dataloader worker counts its own share.

    Args:
        oov_policy: what :meth:`encode` does with an unknown character (see :class:`OOVPolicy`).
        replacement: the character put in place of an unknown one under ``OOVPolicy.REPLACE``;
            a single in-vocabulary character.
        extra_symbols: characters of a new language, given ids ``VOCAB_SIZE``, ``VOCAB_SIZE + 1``,
            ... in this order (the base ids never move); each one NFC-stable code point that is
            not in the vocabulary yet.
    """

    def __init__(
        self,
        oov_policy: OOVPolicy | str = OOVPolicy.DROP,
        replacement: str = " ",
        extra_symbols: Iterable[str] = (),
    ) -> None:
        self.oov_policy = OOVPolicy(oov_policy)
        self.extra_symbols: tuple[str, ...] = _check_extra_symbols(extra_symbols)
        self._symbols = _symbol_table() + self.extra_symbols
        self._ids = {char: i for i, char in enumerate(self._symbols) if char}
        replacement = unicodedata.normalize("NFC", replacement)
        if replacement not in self._ids:  # also rejects "" and multi-character strings
            raise ValueError(f"replacement must be one in-vocabulary character, got {replacement!r}")
        self.replacement = replacement
        self.oov_counts: Counter[str] = Counter()

    @property
    def symbols(self) -> tuple[str, ...]:
        """Every symbol by id; the blank (id 0) is the empty string."""
        return self._symbols

    def __len__(self) -> int:
        return len(self._symbols)

    def __contains__(self, char: object) -> bool:
        return isinstance(char, str) and unicodedata.normalize("NFC", char) in self._ids

    def __repr__(self) -> str:
        extra = f", extra_symbols={''.join(self.extra_symbols)!r}" if self.extra_symbols else ""
        return (
            f"{type(self).__name__}(oov_policy={self.oov_policy.value!r}, "
            f"replacement={self.replacement!r}{extra})"
        )

    def char_to_id(self, char: str) -> int:
        """Id of one character (NFC-normalized first); ``KeyError`` if it is not in the vocabulary."""
        try:
            return self._ids[unicodedata.normalize("NFC", char)]
        except KeyError:
            raise KeyError(f"{char!r} is not in the CTC vocabulary") from None

    def id_to_char(self, i: int) -> str:
        """Character of a non-blank id; ``ValueError`` for the blank and for ids out of range."""
        i = operator.index(i)  # accepts numpy / torch integers, rejects floats
        if i == BLANK_ID:
            raise ValueError("the CTC blank (id 0) has no character")
        if not 0 < i < len(self._symbols):
            raise ValueError(f"id {i} is out of range [0, {len(self._symbols)})")
        return self._symbols[i]

    def encode(self, text: str) -> list[int]:
        """Ids of ``text``'s characters, unknown ones handled by :attr:`oov_policy`.

        Raises:
            OOVError: under ``OOVPolicy.REJECT``, naming every unknown character of ``text``.
        """
        text = unicodedata.normalize("NFC", text)
        ids: list[int] = []
        unknown: list[str] = []
        for char in text:
            i = self._ids.get(char)
            if i is not None:
                ids.append(i)
                continue
            unknown.append(char)
            if self.oov_policy is OOVPolicy.REPLACE:
                ids.append(self._ids[self.replacement])
        self.oov_counts.update(unknown)
        if unknown and self.oov_policy is OOVPolicy.REJECT:
            raise OOVError(unknown, text)
        return ids

    def decode(self, ids: Iterable[int]) -> str:
        """Text of ``ids``; blanks are skipped and every id is kept (no CTC collapsing)."""
        return "".join(self.id_to_char(i) for i in ids if operator.index(i) != BLANK_ID)

    def ctc_greedy_decode(self, ids: Iterable[int]) -> str:
        """Text of a frame-level best path: merge repeated ids, then drop blanks.

        The order matters: ``a a _ a`` is "aa", because the blank separates two "a" tokens.
        """
        return self.decode(i for i, _ in itertools.groupby(operator.index(i) for i in ids))

    def reset_counts(self) -> None:
        """Forget the out-of-vocabulary characters counted so far."""
        self.oov_counts.clear()

    def to_table(self) -> dict[str, Any]:
        """The symbol table in JSON types (``ctc_vocab.json``; see :data:`TABLE_FORMAT`)."""
        return {
            "format": TABLE_FORMAT,
            "blank_id": BLANK_ID,
            "size": len(self._symbols),
            "base_size": VOCAB_SIZE,
            "symbols": list(self._symbols),
        }

    @classmethod
    def from_table(cls, table: Mapping[str, Any], where: str = "symbol table", **kwargs: Any) -> CharVocab:
        """The vocabulary a :meth:`to_table` mapping describes (``kwargs``: policy, replacement).

        Raises:
            ValueError: naming ``where`` and what is wrong: another blank id, a size that is not the
                number of symbols, or a first ``VOCAB_SIZE`` symbols other than the base vocabulary.
        """
        symbols = table.get("symbols") if isinstance(table, Mapping) else None
        if not isinstance(symbols, list) or not all(isinstance(c, str) for c in symbols):
            raise ValueError(f"{where}: expected a mapping with a 'symbols' list of strings")
        if table.get("format", TABLE_FORMAT) != TABLE_FORMAT:
            raise ValueError(f"{where}: format is {table['format']!r}; this version reads {TABLE_FORMAT!r}")
        if table.get("blank_id", BLANK_ID) != BLANK_ID:
            raise ValueError(f"{where}: blank_id is {table['blank_id']!r}; only {BLANK_ID} is supported")
        if "size" in table and table["size"] != len(symbols):
            raise ValueError(f"{where}: size is {table['size']!r} but it lists {len(symbols)} symbols")
        base = _symbol_table()
        if len(symbols) < len(base):
            raise ValueError(
                f"{where}: {len(symbols)} symbols, fewer than the {len(base)} of the base vocabulary"
            )
        for i, (want, got) in enumerate(zip(base, symbols)):
            if want != got:
                raise ValueError(
                    f"{where}: id {i} is {got!r}, but the base vocabulary has {want!r} there; "
                    f"new symbols can only follow the first {len(base)} ids"
                )
        return cls(extra_symbols=symbols[len(base) :], **kwargs)
