"""``granite-train add-language`` on a granite-speech-5.0 TurboCTC folder: the BPE coverage report,
new tokens appended (old outputs unchanged), the continued training with replay, before / after."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from transformers import AutoModelForCTC, AutoTokenizer

from granite_train.add_language import AddLanguageConfig, run_add_language
from granite_train.models.turboctc import turboctc_targets
from granite_train.text.bpe_coverage import bpe_coverage, writable
from tests.corpus import make_corpus
from tests.test_add_language import old_test_hypotheses

ROOT = Path(__file__).resolve().parents[1]
WORDS = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel"]  # tests.corpus's
TINY = dict(vocab_size=30, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=2, num_key_value_heads=2, head_dim=16)  # fmt: skip
FAST = [
    "data.num_workers=0",
    "trainer.threads=1",
    "trainer.precision=32-true",
    "data.train.max_frames=600",
    "data.train.shuffle_buffer=8",
    "data.train.num_buckets=1",
]


@pytest.fixture(scope="module")
def english(tmp_path_factory) -> Path:
    from granite_train.models.turboctc_new import new_turboctc_folder

    texts = [" ".join(WORDS[i:] + WORDS[:i]) for i in range(8)] * 3
    return new_turboctc_folder(texts, tmp_path_factory.mktemp("turbo") / "en", **TINY)


def test_bpe_coverage_counts_what_the_tokenizer_cannot_write(english):
    tokenizer = AutoTokenizer.from_pretrained(english)
    assert writable(tokenizer, "a") and not writable(tokenizer, "λ")
    rep = bpe_coverage(["Αλφα alpha", "λάμδα"], tokenizer, normalize=str.lower, coverage=1.0)
    # hand count, lowercased: α λ φ α | λ ά μ δ α -> α 3, λ 2, ά φ μ δ 1; "alpha" is written
    assert dict(rep.missing) == {"α": 3, "λ": 2, "ά": 1, "δ": 1, "μ": 1, "φ": 1}
    assert rep.chars == 4 + 5 + 5 and rep.oov_share == pytest.approx(9 / 14)
    assert rep.recommended == ("α", "λ", "ά", "δ", "μ", "φ")  # by count, then by code point
    assert bpe_coverage(
        ["Αλφα alpha", "λάμδα"], tokenizer, normalize=str.lower, coverage=0.5
    ).recommended == ("α", "λ")
    assert "| λ | U+03BB | 2 |" in rep.to_markdown()
    with pytest.raises(ValueError, match="coverage must be in"):
        bpe_coverage(["x"], tokenizer, coverage=0.0)


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng not installed")
def test_add_language_grows_a_turboctc_model_and_scores_before_and_after(english, tmp_path):
    old = tmp_path / "old"
    make_corpus(old, "train", n=12, durations=(1.0, 2.0), seed=1)
    make_corpus(old, "test", n=4, num_shards=1, durations=(1.0, 2.0), seed=2)
    greek = (ROOT / "data_prep" / "texts" / "el.txt").read_text().splitlines()[:16]
    (tmp_path / "el.txt").write_text("\n".join(greek) + "\n")
    out = tmp_path / "add_el"
    config = dict(language="el", texts=str(tmp_path / "el.txt"), encoder=str(english), old_corpus=str(old),
                  reference=str(ROOT / "data_prep" / "texts" / "en.txt"), output_dir=str(out),
                  test_fraction=0.25, num_workers=1, replay_share=0.5, coverage=1.0,
                  stage1={"steps": 6, "lr": 1e-3, "overrides": FAST})  # fmt: skip
    table = run_add_language(config)

    # report: every Greek letter (lowercased, as the targets are) is recommended
    from granite_train.data.prompts import normalize_target

    letters = {c for line in greek for c in normalize_target(line) if c.isalpha() and not c.isascii()}
    report = json.loads((out / "report" / "done.json").read_text())
    assert set(report["symbols"]) == letters
    assert (out / "report" / "coverage.md").is_file()
    # extend: one token per letter, then the multi-letter pieces, after the old ids; English
    # tokenizes as before
    extend = json.loads((out / "extend" / "done.json").read_text())
    pieces = extend["pieces"]
    assert set(extend["added"]) == letters and len(pieces) > 20
    assert all(len(p) > 1 and set(p) <= letters for p in pieces)
    extended = out / "extend" / "turboctc_hf"
    old_tok, new_tok = AutoTokenizer.from_pretrained(english), AutoTokenizer.from_pretrained(extended)
    assert len(new_tok) == len(old_tok) + len(letters) + len(pieces)
    # ... learnt from the training split only, and they shorten its targets: fewer tokens than letters
    from granite_train.models.turboctc_new import corpus_texts

    corpus = Path(json.loads((out / "data" / "done.json").read_text())["corpus"])
    train_texts = [normalize_target(t) for t in corpus_texts(corpus, "train")]
    tokens = sum(len(turboctc_targets(new_tok, t)) for t in train_texts)
    assert tokens < 0.6 * sum(len(t) for t in train_texts)
    for text in train_texts:
        assert new_tok.decode(turboctc_targets(new_tok, text)) == text
    assert AutoModelForCTC.from_pretrained(extended).config.vocab_size == len(new_tok)
    for text in (" ".join(WORDS), "golf hotel echo"):
        assert turboctc_targets(new_tok, text) == turboctc_targets(old_tok, text)
    assert all(new_tok.convert_tokens_to_ids(c) >= len(old_tok) for c in letters)
    # ... and decodes the old language exactly as the original model does
    original, grown = old_test_hypotheses(old, tmp_path, english, extended)
    assert original == grown and len(original) == 4
    # stage 1: both languages served, no Greek target lost to <unk>, exported in the released layout
    counters = json.loads((out / "stage1" / "summary.json").read_text())["counters"]
    assert counters["seen/new_el"] > 0 and counters["seen/replay"] > 0, counters
    assert counters.get("skipped/target_has_unk", 0) == 0, counters
    assert counters.get("skipped/too_many_targets", 0) <= counters["seen/new_el"] // 4, counters
    stage1 = json.loads((out / "stage1" / "done.json").read_text())
    assert stage1["steps"] == 6 and stage1["encoder"].endswith("turboctc_hf")
    assert len(AutoTokenizer.from_pretrained(stage1["encoder"])) == len(new_tok)
    # eval: both test sets, before and after
    rows = json.loads((out / "results.json").read_text())["rows"]
    assert {(r["model"], r["test set"]) for r in rows} == {
        ("TurboCTC (greedy CTC)", "old_en_test"), ("TurboCTC (greedy CTC)", "new_el_test")}  # fmt: skip
    assert "| TurboCTC (greedy CTC) | new_el_test |" in table


def test_turboctc_targets_with_unknown_characters_are_counted_not_learnt(english):
    from transformers import AutoProcessor

    from granite_train.training.turboctc_module import TurboCTCCollator

    collator = TurboCTCCollator(AutoProcessor.from_pretrained(english))
    assert collator.targets("alpha λ", 16000) == (None, "target_has_unk")
    ids, why = collator.targets("alpha", 16000)
    assert why is None and ids == turboctc_targets(collator.tokenizer, "alpha")


def test_refusals_name_the_fix(english, tmp_path):
    base = dict(language="el", encoder=str(english), old_corpus=str(tmp_path), reference="en.txt",
                output_dir=str(tmp_path / "o"))  # fmt: skip
    with pytest.raises(ValueError, match="CTC only: no LLM.*stage2.speech_llm"):
        run_add_language({**base, "stage2": {"speech_llm": str(tmp_path)}})
    with pytest.raises(ValueError, match="all or nothing.*set both alike"):
        run_add_language({**base, "lowercase": True, "strip_punctuation": False})
    assert AddLanguageConfig(**base).stage1.recipe is None  # chosen by the model's family
