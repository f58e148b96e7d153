import math

import pytest

from granite_train.eval.metrics import error_rates


def test_hand_computed_wer_and_cer():
    r = error_rates(["the cat sat on the mat"], ["the cat sit on mat"], normalizer="none")
    # sat -> sit (substitution), "the" dropped (deletion): 2 errors over 6 words
    assert (r["substitutions"], r["deletions"], r["insertions"], r["hits"]) == (1, 1, 0, 4)
    assert r["ref_words"] == 6 and r["hyp_words"] == 5
    assert r["wer"] == pytest.approx(2 / 6)
    # characters (spaces included): a -> i, and "the " deleted: 5 edits over 22 characters
    assert r["ref_chars"] == 22
    assert (r["char_substitutions"], r["char_deletions"], r["char_insertions"]) == (1, 4, 0)
    assert r["cer"] == pytest.approx(5 / 22)
    assert r["num_utts"] == 1 and r["num_empty_refs"] == 0


def test_insertions_counted():
    r = error_rates(["a b"], ["a x b c"], normalizer="none")
    assert (r["substitutions"], r["deletions"], r["insertions"]) == (0, 0, 2)
    assert r["wer"] == pytest.approx(1.0)


def test_perfect_and_empty_hypothesis():
    assert error_rates(["hello world"], ["hello world"])["wer"] == 0.0
    r = error_rates(["hello world"], [""])
    assert r["deletions"] == 2 and r["wer"] == 1.0 and r["cer"] == 1.0


def test_whisper_normalizer_makes_title_and_case_match():
    ref, hyp = ["Mr. Smith"], ["mister smith"]
    r = error_rates(ref, hyp, normalizer="whisper_english")
    assert r["wer"] == 0.0 and r["cer"] == 0.0
    none = error_rates(ref, hyp, normalizer="none")
    assert none["wer"] == 1.0  # both words differ
    assert none["cer"] > 0
    assert r["normalizer"]["name"] == "whisper_english"
    assert r["normalizer"]["package"] == "whisper-normalizer" and r["normalizer"]["version"]
    assert none["normalizer"]["version"] is None


def test_basic_normalizer_strips_punctuation_and_case():
    assert error_rates(["Hello, World!"], ["hello world"], normalizer="basic")["wer"] == 0.0
    assert error_rates(["Hello, World!"], ["hello world"], normalizer="none")["wer"] == 1.0


def test_corpus_level_is_not_mean_of_utterance_rates():
    refs = ["a", "one two three four five six seven eight nine ten"]
    hyps = ["b", "one two three four five six seven eight nine ten"]
    corpus = error_rates(refs, hyps, normalizer="none")
    per_utt = [error_rates([r], [h], normalizer="none")["wer"] for r, h in zip(refs, hyps)]
    assert per_utt == [1.0, 0.0]
    assert corpus["wer"] == pytest.approx(1 / 11)  # one error over eleven words
    assert not math.isclose(corpus["wer"], sum(per_utt) / len(per_utt))  # mean would be 0.5


def test_empty_reference_counts_insertions_without_denominator():
    # "uh" is a filler that the Whisper normalizer removes: the reference becomes empty
    refs = ["the cat sat", "uh", ""]
    hyps = ["the cat sat", "hello there", ""]
    r = error_rates(refs, hyps)
    assert r["num_empty_refs"] == 2
    assert r["num_utts"] == 3
    assert r["ref_words"] == 3
    assert r["insertions"] == 2  # "hello there" on the empty reference
    assert r["wer"] == pytest.approx(2 / 3)
    assert r["char_insertions"] == len("hello there")
    assert r["cer"] == pytest.approx(len("hello there") / len("the cat sat"))


def test_silence_correctly_left_empty_costs_nothing():
    r = error_rates(["hello", ""], ["hello", ""], normalizer="none")
    assert r["wer"] == 0.0 and r["num_empty_refs"] == 1


def test_all_references_empty_is_undefined():
    r = error_rates(["", "  "], ["", "x"], normalizer="none")
    assert r["wer"] is None and r["cer"] is None
    assert r["insertions"] == 1 and r["num_empty_refs"] == 2


def test_whitespace_is_collapsed_before_scoring():
    r = error_rates(["  a   b "], ["a b"], normalizer="none")
    assert r["wer"] == 0.0 and r["cer"] == 0.0


def test_japanese_cer_ignores_spaces():
    ref, hyp = ["きょうは いい てんき"], ["きょうはいいてんき"]
    ja = error_rates(ref, hyp, normalizer="none", language="ja")
    assert ja["cer"] == 0.0
    assert ja["ref_chars"] == 9
    en = error_rates(ref, hyp, normalizer="none", language="en")
    assert en["cer"] == pytest.approx(2 / 11)  # two spaces deleted
    one_wrong = error_rates(["テスト"], ["テスド"], normalizer="none", language="ja")
    assert one_wrong["cer"] == pytest.approx(1 / 3)


def test_input_validation():
    with pytest.raises(ValueError):
        error_rates(["a", "b"], ["a"])
    with pytest.raises(TypeError):
        error_rates("a b", "a b")
    with pytest.raises(ValueError):
        error_rates(["a"], ["a"], normalizer="nope")
