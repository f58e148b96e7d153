"""The bundled sentence lists (data_prep/texts/<lang>.txt) are clean and varied."""

from __future__ import annotations

import re
import unicodedata

import pytest

from data_prep.tts.generate import DEFAULT_TEXTS_DIR, normalize_sentence

LANGUAGES = ["en", "fr", "de", "es", "pt", "it", "ja", "zh", "el"]
MIN_SENTENCES = {"en": 500}
CJK = re.compile(r"[\u3040-\u30ff\u4e00-\u9fff]")


def _lines(language: str) -> list[str]:
    raw = (DEFAULT_TEXTS_DIR / f"{language}.txt").read_bytes().decode("utf-8")  # must be UTF-8
    assert raw.endswith("\n") and "\r" not in raw
    return raw.splitlines()


@pytest.mark.parametrize("language", LANGUAGES)
def test_sentences_are_unique_and_clean(language: str) -> None:
    lines = _lines(language)
    assert len(lines) >= MIN_SENTENCES.get(language, 300)
    assert all(line and line == normalize_sentence(line) for line in lines), "blank, padded or non-NFC line"
    assert len(set(lines)) == len(lines), "duplicate sentences"
    assert all(unicodedata.normalize("NFC", line) == line for line in lines)


@pytest.mark.parametrize("language", ["en", "fr", "de", "es", "pt", "it"])
def test_latin_script_sentence_lengths(language: str) -> None:
    lengths = [len(line.split()) for line in _lines(language)]
    assert min(lengths) >= 3 and max(lengths) <= 22
    assert not any(CJK.search(line) for line in _lines(language))


@pytest.mark.parametrize("language", ["ja", "zh"])
def test_cjk_sentences_are_in_native_script(language: str) -> None:
    lines = _lines(language)
    assert all(CJK.search(line) for line in lines)
    assert all(5 <= len(line) <= 60 for line in lines)
    if language == "ja":
        assert sum(bool(re.search(r"[\u3040-\u309f]", line)) for line in lines) == len(lines)  # hiragana


def test_english_vocabulary_is_wide() -> None:
    words = {w for line in _lines("en") for w in re.findall(r"[a-z']+", line.lower())}
    assert len(words) >= 1500
    assert any(re.search(r"\d|hundred|thousand|million", line) for line in _lines("en"))
    assert sum(line.endswith("?") for line in _lines("en")) >= 50
