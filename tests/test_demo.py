"""The main job end to end, shortened (slow tier, its own CI step): ``granite-train demo`` through the
real entry points: corpus -> stage 1 -> stage 2 -> export -> plain transformers reload -> results."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from granite_train.training.callbacks import read_metrics_csv

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_demo_smoke_run_end_to_end(tmp_path):
    common = ["trainer.val_every_n_steps=null", "trainer.checkpoint_every_n_steps=30", "data.num_workers=0"]
    stage1 = ["trainer.max_steps=30", *common]
    stage2 = ["trainer.max_steps=30", *common, "optim.start_step={language_model: 10}"]
    overrides = [
        f"paths.work_dir={tmp_path}",
        "demo.max_sentences=120",
        "demo.shard_size=60",
        f"demo.stage1_overrides={json.dumps(stage1)}",
        "demo.llm={preset: tiny, vocab_size: 300, pretrain_steps: 20, copy_share: 0.9, batch_size: 8}",
        f"demo.stage2_overrides={json.dumps(stage2)}",
        "demo.eval_max_new_tokens=8",
    ]
    run = subprocess.run(
        [sys.executable, "-m", "granite_train.cli", "demo", *overrides],
        capture_output=True, text=True, timeout=1800, cwd=ROOT,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    work = tmp_path / "demo"
    results = json.loads((work / "results.json").read_text())
    assert set(results["phases_s"]) >= {"corpus", "stage 1: CTC encoder", "stage 2: Q-Former + LLM"}
    # 30 steps teach neither stage to read: CTC emits blanks (CER exactly 1.0 at most: no inserted
    # garbage), the LLM a short guess (WER at most 1.0: it stops); the LLM's loss must have fallen
    assert 0.0 < results["stage1"]["cer"] <= 1.0 and 0.0 < results["stage2"]["wer"] <= 1.0
    assert results["stage1"]["rtfx"] > 1.0 and results["stage2"]["rtfx"] > 1.0
    losses = [float(r["train/loss"]) for r in read_metrics_csv(work / "experiments" / "speech_llm_tiny_en" / "metrics.csv")
              if r.get("train/loss") not in (None, "")]  # fmt: skip
    assert len(losses) >= 2 and losses[-1] < 0.5 * losses[0], losses
    # each stage wrote its transformers folder, and plain transformers reloaded the stage-2 one
    assert (work / "experiments" / "ctc_tiny_en" / "encoder_hf" / "config.json").is_file()
    export = work / "experiments" / "speech_llm_tiny_en" / "speech_llm_hf"
    assert json.loads((export / "config.json").read_text())["model_type"] == "granite_speech"
    # plain transformers on the export writes exactly what our evaluation wrote for that utterance
    reload = results["transformers_reload"]
    hypotheses = (
        (work / "experiments" / "speech_llm_tiny_en" / "eval" / "hypotheses.jsonl").read_text().splitlines()
    )
    ours = {json.loads(line)["id"].split("/", 1)[1]: json.loads(line) for line in hypotheses}
    assert reload["reference"] == ours[reload["id"]]["reference"]
    assert reload["hypothesis"] == ours[reload["id"]]["hypothesis"].strip()
    assert "| total |" in (work / "results.md").read_text()
