"""benchmarks/stage2_step.py: ours and the transformers reference agree, and the step / dry-run paths run."""

import importlib.util
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "stage2_step.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("stage2_step", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(spec.name, None)


def _micro(bench):
    llm = dict(
        vocab_size=257,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        logits_scaling=8.0,
        tie_word_embeddings=True,
    )
    encoder = dict(preset="tiny", num_layers=2, hidden_dim=64, num_heads=2, dim_head=32)
    return bench.Size(encoder, "tiny", llm, batch=2, seconds=2.0, dtype="fp32")


def test_losses_agree_and_interleaved_step_runs(bench, monkeypatch):
    monkeypatch.setitem(bench.SIZES, "micro", _micro(bench))
    args = bench.parse_args(["--steps", "1", "--warmup", "0", "--lora-rank", "8", "--optimizer"])
    result = bench.run("micro", args)
    assert result["loss_diff"] < 1e-4
    assert result["seq_len"] == 20 + 21 + 7  # prompt + audio tokens of 2 s + target
    assert result["time_ours"] > 0 and result["time_ref"] > 0
    assert result["peak_ours"] >= 0 and result["peak_ref"] >= 0


def test_full_size_dry_run_builds_on_meta(bench):
    result = bench.run("full", bench.parse_args(["--dry-run"]))
    # granite-4.0-1b-speech shapes: 16 x 1024 encoder (440,168,796 as transformers counts it), 2-layer
    # Q-Former + projection to 2048, 40-layer GQA LLM (vocab 100353)
    assert result["params"] == 2_124_658_012
    # trainable = projector + LoRA r64 on q (2048->2048) and v (2048->512, 4 kv heads x 128), 40 layers
    lora = 40 * 64 * ((2048 + 2048) + (2048 + 512))
    assert lora == 17_039_360
    assert result["trainable"] == lora + 35_697_664
    assert result["seq_len"] == 20 + 300 + 100  # 32 x 30 s: 300 audio tokens, ~100 target tokens
    assert "loss_diff" not in result  # nothing computed on `meta`
