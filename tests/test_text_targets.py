import pickle

import pytest

from granite_train.text import CharVocab, CTCTargetBuilder, KatakanaConverter, OOVError, is_japanese


@pytest.fixture(scope="module")
def japanese():
    return KatakanaConverter()


def test_non_japanese_text_is_encoded_as_written_with_whitespace_collapsed(japanese):
    builder = CTCTargetBuilder(CharVocab(), japanese)
    text = "  Très   bien,\tmerci!\n"
    assert builder.target_text(text, "fr") == "Très bien, merci!"
    assert builder(text, "fr") == [ord(c) for c in "Très bien, merci!"]


def test_lowercase_only_changes_latin_letters(japanese):
    builder = CTCTargetBuilder(CharVocab(), japanese, lowercase=True)
    assert builder.target_text("ÇA VA", "fr") == "ça va"
    assert builder.target_text("NHKのニュース", "ja") == "nhkノニュース"


@pytest.mark.parametrize("language", ["ja", "ja-JP", "ja_JP", "JA"])
def test_japanese_becomes_its_katakana_reading(japanese, language):
    vocab = CharVocab("reject")
    builder = CTCTargetBuilder(vocab, japanese)
    assert builder.target_text("今日はいい天気ですね。", language) == "キョウハイイテンキデスネ"
    ids = builder("今日はいい天気ですね。", language)
    assert vocab.decode(ids) == "キョウハイイテンキデスネ"
    assert min(ids) >= 256  # all katakana


def test_japanese_text_without_the_language_is_not_converted(japanese):
    vocab = CharVocab("drop")
    builder = CTCTargetBuilder(vocab, japanese)
    assert builder("東京です", None) == []  # kanji and hiragana are not in the vocabulary
    assert vocab.oov_counts == {"東": 1, "京": 1, "で": 1, "す": 1}


def test_reject_policy_raises_through_the_builder(japanese):
    builder = CTCTargetBuilder(CharVocab("reject"), japanese)
    with pytest.raises(OOVError, match="€"):
        builder("costs 5 €", "en")
    with pytest.raises(OOVError, match="한"):
        builder("これは한국어です", "ja")


def test_replace_policy_applies_after_conversion(japanese):
    builder = CTCTargetBuilder(CharVocab("replace", replacement="?"), japanese)
    assert builder.vocab.decode(builder("これは한국어です", "ja")) == "コレハ???デス"


def test_default_japanese_converter():
    builder = CTCTargetBuilder(CharVocab())
    assert isinstance(builder.japanese, KatakanaConverter)
    assert builder.target_text("ありがとう", "ja") == "アリガトウ"


def test_builder_pickles_for_dataloader_workers(japanese):
    builder = CTCTargetBuilder(CharVocab(), japanese)
    expected = builder("4月4日の午前9時", "ja")
    assert pickle.loads(pickle.dumps(builder))("4月4日の午前9時", "ja") == expected


@pytest.mark.parametrize(
    ("language", "expected"),
    [
        ("ja", True),
        ("ja-JP", True),
        ("JA_jp", True),
        ("jav", False),
        ("en", False),
        (None, False),
        ("", False),
    ],
)
def test_is_japanese(language, expected):
    assert is_japanese(language) is expected
