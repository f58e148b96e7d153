"""Hallucination probes and the hallucination columns of a generation eval."""

from __future__ import annotations

import io
import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import soundfile as sf

from granite_train.eval.generate import evaluate_speech_llm, generation_markdown
from granite_train.eval.metrics import error_rates, hallucination_summary
from granite_train.eval.probes import PROBE_WORDS, probe_report, write_probe_set
from tests.test_eval_speculative import MAX_NEW, speech  # noqa: F401  (the module-scoped tiny model)


def _dbfs(wave: np.ndarray) -> float:
    return 20 * np.log10(np.sqrt(np.mean(wave.astype(np.float64) ** 2)))


def test_probe_set(tmp_path):
    table = pq.read_table(write_probe_set(tmp_path) / "test-00000.parquet").to_pylist()
    kinds = [r["probe"] for r in table]
    assert kinds.count("silence") == 3 and kinds.count("noise") == 6
    assert [r["text"] for r in table if r["probe"] == "word"] == list(PROBE_WORDS)
    levels = {}
    for r in table:
        wave, sr = sf.read(io.BytesIO(r["audio"]["bytes"]), dtype="float32")
        levels.setdefault(r["probe"], []).append(_dbfs(wave))
        assert (r["text"] == "") == (r["probe"] != "word")
    assert all(-82 < db < -78 for db in levels["silence"])
    assert sorted(round(db) for db in levels["noise"])[::3] == [-35, -20]
    assert all(db > -40 for db in levels["word"])  # speech, well above the silence


def test_probe_report_by_hand():
    rows = [
        {"id": "p/silence_0", "reference": "", "hypothesis": ""},
        {"id": "p/silence_1", "reference": "", "hypothesis": "Hello there."},
        {"id": "p/word_0_yes", "reference": "yes", "hypothesis": "Yes."},
        {"id": "p/word_1_no", "reference": "no", "hypothesis": "no I do not think so"},
    ]
    report = probe_report(rows)
    assert set(report) == {"silence", "word"}
    assert report["silence"]["non_empty_share"] == 0.5 and report["silence"]["overlong_share"] == 0.5
    assert report["silence"]["mean_words"] == 1.0
    assert report["word"]["non_empty_share"] == 1.0 and report["word"]["overlong_share"] == 0.5
    assert report["word"]["mean_words"] == 3.5  # (1 + 6) / 2, "do not" stays two words


def test_hallucination_summary_by_hand():
    metrics = error_rates(["the cat sat", "dog"], ["the cat sat", "dog ran off home"])
    summary = hallucination_summary(metrics)
    assert summary["insertions_per_ref_word"] == pytest.approx(3 / 4)
    assert summary["overlong_hyps"] == 1 and summary["overlong_share"] == 0.5


def test_eval_with_probes(speech, tmp_path):  # noqa: F811
    set_dir = write_probe_set(tmp_path / "words_only")
    spec = {"name": "again", "path": str(set_dir), "split": "test", "language": "en"}
    results = evaluate_speech_llm(
        speech,
        [spec],
        max_new_tokens=MAX_NEW,
        progress=False,
        probes=True,
        hypotheses_path=tmp_path / "h.jsonl",
    )
    assert [r.name for r in results] == ["again", "hallucination_probes"]
    probes = results[1].details["probes"]
    assert {k: v["clips"] for k, v in probes.items()} == {"silence": 3, "noise": 6, "word": len(PROBE_WORDS)}
    rows = [json.loads(line) for line in (tmp_path / "h.jsonl").read_text().splitlines()]
    mine = [r for r in rows if r["dataset"] == "hallucination_probes" and "silence_" in r["id"]]
    assert probes["silence"]["non_empty_share"] == sum(bool(r["hypothesis"].strip()) for r in mine) / 3
    # a random LLM talks over silence: the report must show it
    assert probes["silence"]["non_empty_share"] > 0 and probes["noise"]["overlong_share"] > 0
    assert "hallucination" in results[0].details and "Hallucination probes" in generation_markdown(results)
