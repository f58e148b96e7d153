"""B-WER / U-WER / keyword recall: hand-computed examples for every attribution rule."""

from __future__ import annotations

import pytest

from granite_train.eval.biasing import biasing_error_rates, biasing_markdown, compare_biasing
from granite_train.eval.metrics import error_rates


def test_substitution_of_a_bias_word():
    # ref: meet anna in oslo (bias: anna, oslo); hyp misspells anna -> 1 bias error of 2 bias words
    r = biasing_error_rates(["Meet Anna in Oslo."], ["meet ana in oslo"], [["Anna", "Oslo"]])
    assert r["bias_ref_words"] == 2 and r["unbiased_ref_words"] == 2
    assert r["bias_substitutions"] == 1 and r["bias_hits"] == 1
    assert r["b_wer"] == 0.5
    assert r["u_wer"] == 0.0
    assert r["wer"] == 0.25
    assert r["recall"] == 0.5
    assert r["precision"] == 1.0  # the one bias word in the hypothesis (oslo) is right


def test_deletions_count_for_the_reference_word_class():
    # "anna met bob" -> "met": both bias words deleted
    r = biasing_error_rates(["anna met bob"], ["met"], [["Anna", "Bob"]], normalizer="basic")
    assert (r["bias_deletions"], r["unbiased_deletions"]) == (2, 0)
    assert r["b_wer"] == 1.0 and r["u_wer"] == 0.0 and r["recall"] == 0.0
    assert r["wer"] == pytest.approx(2 / 3)
    assert r["precision"] is None  # no bias word in the hypothesis


def test_insertion_of_a_bias_word_is_a_bias_error():
    # "call bob now" -> "call bob anna now": the inserted word is a bias word
    r = biasing_error_rates(["call bob now"], ["call bob anna now"], [["Bob", "Anna"]], normalizer="basic")
    assert r["bias_insertions"] == 1 and r["unbiased_insertions"] == 0
    assert r["b_wer"] == 1.0  # 1 error / 1 bias reference word (bob)
    assert r["u_wer"] == 0.0
    assert r["recall"] == 1.0
    assert r["precision"] == 0.5  # bob right, anna hallucinated


def test_insertion_of_an_ordinary_word_is_an_unbiased_error():
    r = biasing_error_rates(["call bob now"], ["call bob anna now"], [["Bob"]], normalizer="basic")
    assert r["bias_insertions"] == 0 and r["unbiased_insertions"] == 1
    assert r["b_wer"] == 0.0
    assert r["u_wer"] == 0.5  # 1 error / 2 unbiased reference words (call, now)


def test_ordinary_word_replaced_by_a_bias_word_is_an_unbiased_error():
    r = biasing_error_rates(["the cat"], ["the anna"], [["Anna"]], normalizer="basic")
    assert r["b_wer"] is None  # no bias word in the reference: undefined, not 0
    assert r["unbiased_substitutions"] == 1 and r["u_wer"] == 0.5
    assert r["recall"] is None
    assert r["hyp_bias_words"] == 1 and r["precision"] == 0.0


def test_corpus_level_sums_and_consistency_with_wer():
    refs = ["Priya flew to Reykjavik to meet the NASA team.", "The bus was late.", "Call IBM about GPT-4."]
    hyps = ["priya flew to rakovic to meet nasa team", "the bus is late", "call ibm about gpt for"]
    bias = [["Priya", "Reykjavik", "NASA"], [], ["IBM", "GPT-4"]]
    r = biasing_error_rates(refs, hyps, bias)
    # Whisper-normalised: gpt-4 -> "gpt 4" (two bias words), ibm; errors: reykjavik (sub),
    # "the" (deleted, unbiased), was -> is (unbiased), 4 -> for (bias sub)
    assert r["bias_ref_words"] == 6  # priya reykjavik nasa ibm gpt 4
    assert r["bias_substitutions"] == 2 and r["bias_deletions"] == 0 and r["bias_insertions"] == 0
    assert r["unbiased_substitutions"] == 1 and r["unbiased_deletions"] == 1
    assert r["b_wer"] == pytest.approx(2 / 6)
    assert r["u_wer"] == pytest.approx(2 / r["unbiased_ref_words"])
    assert r["recall"] == pytest.approx(4 / 6)
    plain = error_rates(refs, hyps)
    assert r["ref_words"] == plain["ref_words"]
    assert r["wer"] == pytest.approx(plain["wer"])


def test_bias_words_are_normalised_like_the_transcripts():
    # Whisper's normaliser lowercases and splits "New York" into two bias words
    r = biasing_error_rates(["I moved to New York."], ["i moved to new work"], [["New York"]])
    assert r["bias_ref_words"] == 2
    assert r["bias_substitutions"] == 1 and r["recall"] == 0.5


def test_empty_reference_counts_insertions_only():
    r = biasing_error_rates(["", "hello anna"], ["anna hi", "hello anna"], [["Anna"], ["Anna"]], "basic")
    assert r["bias_insertions"] == 1 and r["unbiased_insertions"] == 1
    assert r["bias_ref_words"] == 1 and r["unbiased_ref_words"] == 1
    assert r["b_wer"] == 1.0 and r["u_wer"] == 1.0
    assert r["wer"] == 1.0  # 2 insertions / 2 reference words


def test_input_validation():
    with pytest.raises(ValueError):
        biasing_error_rates(["a"], ["a", "b"], [[]])
    with pytest.raises(TypeError):
        biasing_error_rates("a b", "a b", [[]])
    with pytest.raises(TypeError):
        biasing_error_rates(["a b"], ["a b"], ["a"])  # a bias list must be a list, not a word


def test_compare_biasing_markdown_table():
    refs = ["meet anna in oslo", "call bob now"]
    without = ["meet ana in oslo", "call rob now"]  # 2 of 3 bias words wrong
    with_kw = ["meet anna in oslo", "call bob bob now"]  # all right, one bias insertion
    bias = [["Anna", "Oslo"], ["Bob"]]
    table = compare_biasing(refs, without, with_kw, bias, normalizer="basic")
    lines = table.splitlines()
    assert lines[0] == "| condition | WER % | B-WER % | U-WER % | keyword recall % |"
    # without: 2 errors / 7 words; B-WER 2/3; U-WER 0/4; recall 1/3
    assert lines[2] == "| without keywords | 28.57 | 66.67 | 0.00 | 33.33 |"
    # with: 1 insertion / 7 words; B-WER 1/3 (inserted "bob" is a bias word); recall 3/3
    assert lines[3] == "| with keywords | 14.29 | 33.33 | 0.00 | 100.00 |"
    assert (
        lines[4] == "| delta (with keywords - without keywords, points) | -14.29 | -33.33 | +0.00 | +66.67 |"
    )
    assert "2 utterances, 7 reference words of which 3 bias words; normalizer: basic" in table


def test_markdown_handles_undefined_rates():
    r = biasing_error_rates(["the cat"], ["the cat"], [[]], normalizer="basic")
    table = biasing_markdown({"a": r, "b": r})
    assert "| a | 0.00 | n/a | 0.00 | n/a |" in table
    assert "| delta (b - a, points) | +0.00 | n/a | +0.00 | n/a |" in table
