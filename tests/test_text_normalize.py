import re

import pytest

from granite_train.text.normalize import (
    NORMALIZER_NAMES,
    basic_normalizer,
    english_normalizer,
    get_normalizer,
    normalizer_info,
)


@pytest.mark.parametrize(
    ("text", "normalized"),
    [
        ("Mr. Smith bought his 2nd car for twenty-five dollars.", "mister smith bought his 2nd car for $25"),
        ("The colour of the theatre was grey.", "the color of the theater was gray"),
        ("Um, I think it is, uh, okay", "i think it is okay"),
        ("Dr. Brown won't come", "doctor brown will not come"),
        ("I've got one hundred and twenty three apples", "i have got 123 apples"),
    ],
)
def test_whisper_english_normalizer(text, normalized):
    assert english_normalizer()(text) == normalized


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("Ça va? Très BIEN, merci!", ["ça", "va", "très", "bien", "merci"]),
        ("Größe: 5 Äpfel.", ["größe", "5", "äpfel"]),
        ("Él dijo: «¡Hola!»", ["él", "dijo", "hola"]),
        ("ここは[注]東京(とうきょう)です。", ["ここは東京です"]),  # bracketed asides removed
    ],
)
def test_basic_normalizer_lowercases_and_strips_punctuation_in_any_script(text, words):
    assert basic_normalizer()(text).split() == words


def test_english_normalizer_is_english_specific():
    text = "The colour, Mr. Smith"
    assert get_normalizer("basic")(text).split() == ["the", "colour", "mr", "smith"]
    assert get_normalizer("whisper_english")(text) == "the color mister smith"


def test_none_leaves_text_unchanged():
    text = "  Mixed CASE, punctuation! "
    assert get_normalizer("none")(text) == text


def test_unknown_name_raises():
    with pytest.raises(ValueError, match="unknown normalizer"):
        get_normalizer("whisper")
    with pytest.raises(ValueError, match="unknown normalizer"):
        normalizer_info("whisper")


@pytest.mark.parametrize(
    ("name", "cls"),
    [
        ("whisper_english", "whisper_normalizer.english.EnglishTextNormalizer"),
        ("basic", "whisper_normalizer.basic.BasicTextNormalizer"),
    ],
)
def test_normalizer_info_names_the_class_that_get_normalizer_uses(name, cls):
    info = normalizer_info(name)
    assert info["name"] == name
    assert info["class"] == cls
    normalizer = get_normalizer(name)
    assert f"{type(normalizer).__module__}.{type(normalizer).__qualname__}" == cls
    assert info["package"] == "whisper-normalizer"
    assert re.fullmatch(r"\d+\.\d+(\.\d+)?\S*", info["version"])


def test_normalizer_info_for_none():
    assert normalizer_info("none") == {"name": "none", "class": None, "package": None, "version": None}


def test_every_name_resolves():
    for name in NORMALIZER_NAMES:
        assert callable(get_normalizer(name))
        assert normalizer_info(name)["name"] == name
