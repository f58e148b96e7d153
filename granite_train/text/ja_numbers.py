"""Katakana readings of Japanese numbers and of the counters that follow them.

Sudachi's readings of numerals are unusable as CTC targets: it reads Arabic digits one by one
("2024" -> ニレイニシ, "10" -> イチレイ) and builds kanji numerals without sound changes
("三百" -> サンヒャク, "八百" -> ハチヒャク). Numbers are therefore re-read with num2words, whose
Japanese module applies the rendaku and gemination of the number itself (サンビャク, ハッピャク,
サンゼン, イッチョウ).

A number's reading also changes with the counter after it (4時 ヨジ, 10分 ジュップン, 3日
ミッカ). :func:`read_counted` covers the counters that are frequent in speech: days, months,
hours, years, people, yen, and the common Sino-Japanese counters that geminate (回, 個, 歳, ...)
or take p/b sounds (分, 本, 杯, 匹). Other counters keep Sudachi's reading of the counter word
after the num2words reading of the number, which is right for most of them (5倍 ゴバイ).
"""

from __future__ import annotations

import re
from decimal import Decimal

from num2words import num2words

_DIGITS = {
    **{str(d): d for d in range(10)},
    **dict(zip("〇一二三四五六七八九", range(10), strict=True)),
    "零": 0,
}
_SMALL_UNITS = {"十": 10, "百": 100, "千": 1000}
_LARGE_UNITS = {"万": 10**4, "億": 10**8, "兆": 10**12}
_ARABIC = re.compile(r"[0-9]+(?:\.[0-9]+)?")

_HIRAGANA_TO_KATAKANA = str.maketrans({chr(cp): chr(cp + 0x60) for cp in range(0x3041, 0x3097)})


def to_katakana(text: str) -> str:
    """Hiragana (U+3041..U+3096) to katakana; everything else unchanged."""
    return text.translate(_HIRAGANA_TO_KATAKANA)


def parse_number(surface: str) -> int | Decimal | None:
    """Value of a numeral: "1,234", "3.14", "二千二十四", "二〇二四", "2万5000"; else None."""
    s = surface.replace(",", "")
    if not s:
        return None
    if _ARABIC.fullmatch(s):
        return Decimal(s) if "." in s else int(s)
    total = section = digits = 0
    for char in s:
        if char in _DIGITS:  # positional digits, so that 二〇二四 reads as 2024
            digits = digits * 10 + _DIGITS[char]
        elif char in _SMALL_UNITS:  # 十 百 千 without a multiplier mean 1 x unit
            section += (digits or 1) * _SMALL_UNITS[char]
            digits = 0
        elif char in _LARGE_UNITS:
            total += ((section + digits) or 1) * _LARGE_UNITS[char]
            section = digits = 0
        else:
            return None
    return total + section + digits


def _cardinal(value: int | Decimal) -> str:
    return to_katakana(num2words(value, lang="ja", reading=True))


def read_number(surface: str) -> str | None:
    """Katakana reading of a numeral token, or None if ``surface`` is not a plain number.

    Digit strings with a leading zero ("0120", "007") are read digit by digit, as phone numbers
    and codes are spoken; numbers too large for num2words are read digit by digit as well.
    """
    value = parse_number(surface)
    if value is None:
        return None
    digits = surface.replace(",", "")
    if digits.isascii() and digits.isdigit() and len(digits) > 1 and digits.startswith("0"):
        return "".join(_cardinal(int(d)) for d in digits)
    try:
        return _cardinal(value)
    except OverflowError:
        return "".join(_cardinal(int(d)) for d in str(value) if d.isdigit())


# Days of the month that have native readings; others are <number> + ニチ.
_DAYS = {
    1: "ツイタチ",
    2: "フツカ",
    3: "ミッカ",
    4: "ヨッカ",
    5: "イツカ",
    6: "ムイカ",
    7: "ナノカ",
    8: "ヨウカ",
    9: "ココノカ",
    10: "トオカ",
    14: "ジュウヨッカ",
    20: "ハツカ",
    24: "ニジュウヨッカ",
}

# Counters that only change the last digit's reading: counter -> {number ending: replacement}.
_HOUR = {"ヨン": "ヨ", "ナナ": "シチ", "キュウ": "ク"}
_ENDING_RULES: dict[str, tuple[str, dict[str, str]]] = {
    "時": ("ジ", _HOUR),
    "時間": ("ジカン", _HOUR),
    "年": ("ネン", {"ヨン": "ヨ"}),
    "年間": ("ネンカン", {"ヨン": "ヨ"}),
    "年生": ("ネンセイ", {"ヨン": "ヨ"}),
    "人": ("ニン", {"ヨン": "ヨ"}),
    "円": ("エン", {"ヨン": "ヨ"}),
}
_MONTH = {"ヨン": "シ", "ナナ": "シチ", "キュウ": "ク"}

# Sino-Japanese counters starting with k/s/t: 1, 8 and 10 geminate before all of them
# (イッカイ, ハッサイ, ジュッテン), 6 and 100 only before k (ロッコ, ヒャッカイ, but ロクサイ).
_GEMINATING = {
    "回": "カイ",
    "個": "コ",
    "歳": "サイ",
    "才": "サイ",
    "冊": "サツ",
    "件": "ケン",
    "点": "テン",
    "週": "シュウ",
    "週間": "シュウカン",
    "か月": "カゲツ",
    "カ月": "カゲツ",
    "ヶ月": "カゲツ",
    "ケ月": "カゲツ",
    "箇月": "カゲツ",
    "通": "ツウ",
    "頭": "トウ",
    "曲": "キョク",
    "社": "シャ",
    "勝": "ショウ",
    "校": "コウ",
    "試合": "シアイ",
    "周": "シュウ",
    "期": "キ",
}
_GEMINATE_ALWAYS = {"イチ": "イッ", "ハチ": "ハッ", "ジュウ": "ジュッ"}
_GEMINATE_BEFORE_K = {"ロク": "ロッ", "ヒャク": "ヒャッ"}

# Counters starting with h: after a geminated number they take p (イッポン, ジュップン); after
# a number ending in ン they take b (サンボン, センボン), except 分, which takes p (サンプン, ヨンプン).
_H_ROW = {"分": "フン", "本": "ホン", "杯": "ハイ", "匹": "ヒキ"}
_TO_P = str.maketrans("ハヒフヘホ", "パピプペポ")
_TO_B = str.maketrans("ハヒフヘホ", "バビブベボ")


def _replace_ending(reading: str, rules: dict[str, str]) -> str:
    for ending, replacement in rules.items():
        if reading.endswith(ending):
            return reading[: -len(ending)] + replacement
    return reading


def read_counted(number: str, counter: str, *, after_month: bool = False) -> str | None:
    """Reading of ``number`` + ``counter`` (two adjacent tokens) if the pair has a rule, else None.

    Args:
        number: the numeral token ("14", "十", "2024").
        counter: the token after it ("日", "時", "分").
        after_month: whether the number follows a month ("5月1日" is ゴガツツイタチ, while
            "1日" alone is イチニチ, "one day").
    """
    value = parse_number(number)
    if not isinstance(value, int):  # no counter rules for decimals
        return None
    reading = read_number(number)
    if reading is None:
        return None
    if counter in ("日", "日間"):
        suffix = "カン" if counter == "日間" else ""
        if value == 1 and not after_month:
            return "イチニチ" + suffix
        return _DAYS.get(value, reading + "ニチ") + suffix
    if counter == "月" and value <= 12:
        return _replace_ending(reading, _MONTH) + "ガツ"
    if counter in ("歳", "才") and value == 20:
        return "ハタチ"
    if counter in _ENDING_RULES:
        counter_reading, rules = _ENDING_RULES[counter]
        return _replace_ending(reading, rules) + counter_reading
    if counter in _GEMINATING:
        counter_reading = _GEMINATING[counter]
        rules = _GEMINATE_ALWAYS
        if counter_reading[0] in "カキクケコ":
            rules = {**_GEMINATE_ALWAYS, **_GEMINATE_BEFORE_K}
        return _replace_ending(reading, rules) + counter_reading
    if counter in _H_ROW:
        counter_reading = _H_ROW[counter]
        geminated = _replace_ending(reading, {**_GEMINATE_ALWAYS, **_GEMINATE_BEFORE_K})
        if geminated != reading:
            return geminated + counter_reading.translate(_TO_P)
        if reading.endswith("ン"):
            if counter == "分":
                return reading + counter_reading.translate(_TO_P)
            if not reading.endswith("ヨン"):  # ヨンホン, ヨンハイ: no voicing after 4
                return reading + counter_reading.translate(_TO_B)
        return reading + counter_reading
    return None
