"""Coverage of a new language's text by the CTC vocabulary and the LLM tokenizer (numbers by hand)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from granite_train.text.coverage import coverage_report, normaliser_mapping, read_lines, recommend_symbols
from granite_train.text.vocab import CharVocab
from tests.test_cli import run_cli

ROOT = Path(__file__).resolve().parents[1]
EN = ROOT / "data_prep" / "texts" / "en.txt"

# 32 characters, 26 of them Greek letters (every Greek letter is outside the vocabulary):
#   "Καλημέρα σας."        13 = 8 letters + space + 3 letters + "."
#   "Το νερό είναι κρύο."  19 = 2 + 1 + 4 + 1 + 5 + 1 + 4 letters / spaces + "."
GREEK = ["Καλημέρα σας.", "Το νερό είναι κρύο."]
GREEK_COUNTS = {"α": 4, "ρ": 3, "ε": 2, "ν": 2, "ο": 2}  # the rest (13 letters) once each
GREEK_ORDER = "αρενοΚΤέίηικλμςσόύ"  # by count, ties by code point (capitals, accented, then plain)


def test_greek_every_letter_is_out_and_counted():
    report = coverage_report(GREEK, language="el", sample_name="el.txt")
    assert (report.lines, report.chars, report.oov_occurrences) == (2, 32, 26)
    assert report.oov_share == pytest.approx(26 / 32)
    counts = {c.char: c.count for c in report.oov}
    assert len(counts) == 18 and sum(counts.values()) == 26
    assert {c: counts[c] for c in GREEK_COUNTS} == GREEK_COUNTS
    assert all(n == 1 for c, n in counts.items() if c not in GREEK_COUNTS)
    assert "".join(c.char for c in report.oov) == GREEK_ORDER
    alpha = report.oov[0]
    assert (alpha.codepoint, alpha.name, alpha.share) == ("U+03B1", "GREEK SMALL LETTER ALPHA", 4 / 26)
    # an accented Greek letter has no base letter in the vocabulary: nothing to map
    assert report.mappable == [] and report.oov_after_mapping == 26
    assert "".join(report.recommended) == GREEK_ORDER and report.recommended_coverage == 1.0
    assert report.not_addable == []


def test_recommendation_stops_at_the_coverage_target():
    # 26 x 0.9 = 23.4 occurrences: α ρ ε ν ο (13) + 11 single letters (24) is the first prefix past it
    chosen, covered = recommend_symbols(
        Counter(c for line in GREEK for c in line if c not in CharVocab()), 0.9
    )
    assert "".join(chosen) == GREEK_ORDER[:16] and covered == pytest.approx(24 / 26)
    with pytest.raises(ValueError, match="coverage must be in"):
        recommend_symbols(Counter("α"), 0.0)


def test_lowercase_targets_fold_greek_capitals():
    report = coverage_report(GREEK, lowercase=True)
    counts = {c.char: c.count for c in report.oov}
    assert "Κ" not in counts and "Τ" not in counts
    assert counts["κ"] == 2 and counts["τ"] == 1 and report.oov_occurrences == 26


def test_spanish_and_german_fit_latin1():
    lines = ["¿El niño comió pingüino en España?", "Die Straße ist schön, Äpfel sind süß.", "nin\u0303o"]
    report = coverage_report(lines)
    assert report.chars == 34 + 37 + 4  # the decomposed "ñ" is one character after NFC
    assert report.oov_occurrences == 0 and report.oov == [] and report.recommended == []
    assert "nothing to add" in report.to_markdown()


def test_vietnamese_marks_a_normaliser_could_drop():
    # 19 characters; ế ệ ấ ẹ decompose onto in-vocabulary letters, đ (a letter of its own) does not
    report = coverage_report(["Tiếng Việt rất đẹp."])
    assert (report.chars, report.oov_occurrences) == (19, 5)
    maps = {c.char: (c.maps_to, c.mapping) for c in report.oov}
    assert maps == {
        "ế": ("ê", "drop_marks"),  # e + circumflex + acute: the circumflex is kept
        "ệ": ("ê", "drop_marks"),  # e + dot below + circumflex: ẹ is not in Latin-1, ê is
        "ấ": ("â", "drop_marks"),
        "ẹ": ("e", "drop_marks"),
        "đ": (None, None),
    }
    assert report.oov_after_mapping == 1
    assert report.recommended == ["đ", "ấ", "ẹ", "ế", "ệ"]  # tones matter: adding keeps them


def test_compatibility_forms_map_by_nfkc_and_are_not_recommended():
    vocab = CharVocab()
    assert normaliser_mapping("ﬁ", vocab) == ("fi", "nfkc")
    assert normaliser_mapping("Ａ", vocab) == ("A", "nfkc")
    assert normaliser_mapping("α", vocab) is None
    assert normaliser_mapping("ά", vocab) is None
    assert normaliser_mapping("ά", CharVocab(extra_symbols=["α"])) == ("α", "drop_marks")
    report = coverage_report(["ﬁne … Ａ “ok”"])
    assert report.oov_occurrences == 5 and report.oov_after_mapping == 2  # “ and ” stay
    assert report.recommended == [] and report.not_addable == ["“", "”", "…"]  # by code point


def test_an_extended_vocabulary_covers_what_it_added():
    vocab = CharVocab(extra_symbols=sorted(set(GREEK_ORDER)))
    report = coverage_report(GREEK, vocab)
    assert report.oov_occurrences == 0 and report.vocab_size == 348 + 18


def _bpe(tmp_path: Path) -> Path:
    from granite_train.models.tiny_llm import train_bpe_tokenizer

    tokenizer = train_bpe_tokenizer(read_lines(EN, 2000), vocab_size=600)
    tokenizer.save_pretrained(tmp_path / "tok")
    return tmp_path / "tok"


def test_tokenizer_that_never_saw_greek_needs_attention(tmp_path):
    folder = _bpe(tmp_path)
    reference = read_lines(EN, 500)
    greek = coverage_report(GREEK, tokenizer=str(folder), reference=reference)
    t = greek.tokenizer
    assert t is not None and t.sample_chars == 32 and t.unknown_tokens == 0  # byte-level: no unknowns
    assert t.sample_tokens >= 2 * 26  # each Greek letter is two UTF-8 bytes no merge has joined
    assert t.ratio > 2 and t.needs_attention and "extend the tokenizer" in t.reason()
    english = coverage_report(read_lines(EN, 3000)[2500:], tokenizer=str(folder), reference=reference)
    assert 0.7 < english.tokenizer.ratio < 1.5 and not english.tokenizer.needs_attention


def test_tokenizer_unknown_tokens_need_attention_whatever_the_ratio():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = {"[UNK]": 0, **{w: i + 1 for i, w in enumerate(["the", "a", "."])}}
    tok = Tokenizer(models.WordLevel(words, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]")
    report = coverage_report(GREEK, tokenizer=fast, reference=["the a the ."])
    t = report.tokenizer
    assert t.unknown_tokens == 6  # the 6 Greek words; the 2 "." are known
    assert t.ratio < 2 and t.needs_attention and "unknown tokens" in t.reason()


def test_markdown_and_json_hold_every_section():
    report = coverage_report(["Tiếng Việt rất đẹp.", *GREEK], sample_name="mix.txt")
    md = report.to_markdown()
    for heading in (
        "(a) Characters outside",
        "(b) What a normaliser",
        "(c) LLM tokenizer",
        "(d) Recommendation",
    ):
        assert heading in md
    assert "| `α` | U+03B1 | GREEK SMALL LETTER ALPHA | 4 |" in md and "`ế` -> `ê`" in md
    data = json.loads(json.dumps(report.to_json(), ensure_ascii=False))
    assert data["oov_occurrences"] == 31 and data["oov_share"] == pytest.approx(31 / 51)
    assert data["oov_share_after_mapping"] == pytest.approx(27 / 51)
    assert data["oov"][0] == {
        "char": "α", "count": 4, "share": 4 / 31, "codepoint": "U+03B1", "name": "GREEK SMALL LETTER ALPHA",
        "category": "Ll", "maps_to": None, "mapping": None,
    }  # fmt: skip


def test_coverage_command_writes_markdown_and_json(tmp_path):
    sample = tmp_path / "el.txt"
    sample.write_text("\n".join(GREEK) + "\n\n", encoding="utf-8")  # the empty line is skipped
    folder = _bpe(tmp_path)
    out = run_cli(
        "coverage", f"sample={sample}", "language=el", f"tokenizer={folder}", "reference_lines=300",
        f"output_dir={tmp_path / 'report'}", f"hydra.run.dir={tmp_path / 'run'}",
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "26 of 32 characters (81.25%)" in out.stdout and "needs attention" in out.stdout
    data = json.loads((tmp_path / "report" / "coverage.json").read_text(encoding="utf-8"))
    assert data["chars"] == 32 and "".join(data["recommended"]) == GREEK_ORDER
    assert data["tokenizer"]["needs_attention"] is True
    assert (tmp_path / "report" / "coverage.md").read_text(encoding="utf-8").startswith("# CTC vocabulary")

    missing = run_cli("coverage", f"sample={tmp_path / 'nope.txt'}", f"hydra.run.dir={tmp_path / 'run2'}")
    assert missing.returncode == 2 and "no text sample at" in missing.stderr
    no_tokenizer = run_cli(
        "coverage", f"sample={sample}", f"tokenizer={tmp_path / 'nope'}", f"hydra.run.dir={tmp_path}"
    )
    assert no_tokenizer.returncode == 2 and "no tokenizer folder at" in no_tokenizer.stderr


def test_coverage_command_help():
    out = run_cli("coverage", "--help")
    assert out.returncode == 0 and "granite-train coverage sample=FILE" in out.stdout
    assert "reference_lines" in out.stdout
