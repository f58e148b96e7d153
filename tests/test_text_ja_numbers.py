from decimal import Decimal

import pytest

from granite_train.text.ja_numbers import parse_number, read_counted, read_number, to_katakana


@pytest.mark.parametrize(
    ("surface", "value"),
    [
        ("7", 7),
        ("1,234,567", 1234567),
        ("3.14", Decimal("3.14")),
        ("十", 10),
        ("二十五", 25),
        ("三百三十三", 333),
        ("二千二十四", 2024),
        ("二〇二四", 2024),
        ("千二百", 1200),
        ("一万", 10_000),
        ("三千万", 30_000_000),
        ("2万5000", 25_000),
        ("1億2000万", 120_000_000),
        ("十万", 100_000),
    ],
)
def test_parse_number(surface, value):
    assert parse_number(surface) == value


@pytest.mark.parametrize("surface", ["", "数", "三つ", "1.2.3", "abc", ","])
def test_parse_number_rejects_non_numbers(surface):
    assert parse_number(surface) is None


@pytest.mark.parametrize(
    ("surface", "reading"),
    [
        ("2024", "ニセンニジュウヨン"),
        ("10", "ジュウ"),
        ("300", "サンビャク"),  # rendaku that Sudachi misses
        ("600", "ロッピャク"),
        ("八百", "ハッピャク"),
        ("3000", "サンゼン"),
        ("8000", "ハッセン"),
        ("1,000,000", "ヒャクマン"),
        ("3.14", "サンテンイチヨン"),
        ("0.5", "レイテンゴ"),
        ("0120", "ゼロイチニゼロ"),  # leading zero: digit by digit
        ("1" + "0" * 60, "イチ" + "ゼロ" * 60),  # beyond num2words: digit by digit
    ],
)
def test_read_number(surface, reading):
    assert read_number(surface) == reading


@pytest.mark.parametrize(
    ("number", "counter", "reading"),
    [
        ("1", "日", "イチニチ"),  # "one day"
        ("2", "日", "フツカ"),
        ("4", "日", "ヨッカ"),
        ("7", "日", "ナノカ"),
        ("10", "日", "トオカ"),
        ("20", "日", "ハツカ"),
        ("24", "日", "ニジュウヨッカ"),
        ("25", "日", "ニジュウゴニチ"),
        ("3", "日間", "ミッカカン"),
        ("4", "月", "シガツ"),
        ("7", "月", "シチガツ"),
        ("9", "月", "クガツ"),
        ("12", "月", "ジュウニガツ"),
        ("4", "時", "ヨジ"),
        ("9", "時", "クジ"),
        ("14", "時", "ジュウヨジ"),
        ("4", "時間", "ヨジカン"),
        ("2024", "年", "ニセンニジュウヨネン"),
        ("40", "年", "ヨンジュウネン"),
        ("4", "人", "ヨニン"),
        ("400", "円", "ヨンヒャクエン"),
        ("1", "回", "イッカイ"),
        ("6", "回", "ロッカイ"),
        ("100", "回", "ヒャッカイ"),
        ("6", "歳", "ロクサイ"),  # 6 geminates before k only
        ("8", "歳", "ハッサイ"),
        ("20", "歳", "ハタチ"),
        ("30", "歳", "サンジュッサイ"),
        ("11", "か月", "ジュウイッカゲツ"),
        ("1", "分", "イップン"),
        ("2", "分", "ニフン"),
        ("3", "分", "サンプン"),
        ("4", "分", "ヨンプン"),
        ("10", "分", "ジュップン"),
        ("3", "本", "サンボン"),
        ("4", "本", "ヨンホン"),
        ("6", "杯", "ロッパイ"),
        ("千", "本", "センボン"),
    ],
)
def test_read_counted(number, counter, reading):
    assert read_counted(number, counter) == reading


def test_first_of_the_month_after_a_month():
    assert read_counted("1", "日", after_month=True) == "ツイタチ"


@pytest.mark.parametrize(("number", "counter"), [("5", "倍"), ("3.5", "時"), ("数", "日"), ("3", "メートル")])
def test_read_counted_without_a_rule(number, counter):
    assert read_counted(number, counter) is None


def test_to_katakana():
    assert to_katakana("ひらがな、カタカナ abc ゔ") == "ヒラガナ、カタカナ abc ヴ"
