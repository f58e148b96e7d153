"""``trainer.strategy=fsdp2``: stage 2 with the LLM sharded over the ranks (torch FSDP2 through
Lightning's model-parallel strategy) on two CPU processes (gloo), against DDP on the same data.

The same run under DDP and under FSDP2 must train the same model: every exported tensor equal up
to float summation order, the same loss at every step. FSDP2 must really shard (each rank holds a
part of every decoder layer), and its full checkpoint must export and resume like any other.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.test_training_ctc_module import _env, _free_port
from tests.test_training_speech_llm_runs import _overrides, corpus, parts  # noqa: F401  (fixtures)

STEPS = 6


def _torchrun(parts, corpus, out: Path, strategy: str, *extra: str, steps: int = STEPS):  # noqa: F811
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
        f"--master_port={_free_port()}", "-m", "granite_train.cli", "train", "recipe=speech_llm_tiny_en",
        *_overrides(
            parts, corpus, out,
            f"trainer.max_steps={steps}",
            "trainer.devices=2",
            f"trainer.strategy={strategy}",
            "trainer.val_every_n_steps=null",
            f"trainer.checkpoint_every_n_steps={STEPS // 2}",
            "trainer.deterministic=true",
            "model.lora.dropout=0.0",
            "model.encoder_cache_gb=0",
            *extra,
        ),
    ]  # fmt: skip
    proc = subprocess.run(cmd, env=_env(), cwd=out.parent, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    return proc


def _losses(out: Path) -> list[float]:
    from granite_train.training.callbacks import read_metrics_csv

    rows = [r for r in read_metrics_csv(out / "metrics.csv") if r.get("train/loss") not in (None, "")]
    return [float(r["train/loss"]) for r in rows]


@pytest.mark.slow
def test_fsdp2_trains_what_ddp_trains_and_exports_it(parts, corpus, tmp_path):  # noqa: F811
    ddp, fsdp = tmp_path / "ddp", tmp_path / "fsdp2"
    tied = "model.loss.audio_ctc_head=tied"  # the SmolLM2 recipes' head: it reads the (whole) embedding table
    _torchrun(parts, corpus, ddp, "ddp", tied)
    proc = _torchrun(parts, corpus, fsdp, "fsdp2", tied)
    held = re.findall(
        r"fsdp2: sharded decoder_layers \d+.*holds (\d+) of (\d+) decoder-layer", proc.stdout + proc.stderr
    )
    assert held, (proc.stdout + proc.stderr)[-2000:]
    for local, full in held:  # each rank holds its half (the first dimension rounded up)
        assert 0 < int(local) <= int(full) // 2 + int(full) // 50

    a = load_file(ddp / "speech_llm_hf" / "model.safetensors")
    b = load_file(fsdp / "speech_llm_hf" / "model.safetensors")
    assert a.keys() == b.keys() and any(k.startswith("projector.") for k in a)
    init = load_file(parts["llm"] / "model.safetensors")
    moved = 0
    for key in a:
        # reduce-scatter and all-reduce sum in different orders; Adam's normalised update turns a
        # last-bit difference of a near-zero gradient into ~1e-6 after 6 steps (lr 3e-3)
        torch.testing.assert_close(b[key], a[key], rtol=1e-4, atol=1e-5)
        moved += key.startswith("projector.")
    assert moved
    # LoRA was merged into the LLM's q/v projections: they moved away from the initial LLM
    q = next(k for k in a if k.endswith("layers.0.self_attn.q_proj.weight"))
    assert not torch.allclose(a[q], init[q.split("language_model.", 1)[1]])
    la, lb = _losses(ddp), _losses(fsdp)
    assert len(la) == len(lb) >= STEPS
    assert lb == pytest.approx(la, rel=1e-4, abs=1e-6)
    assert (fsdp / "checkpoints" / "final.ckpt").exists()


@pytest.mark.slow
def test_fsdp2_checkpoint_resumes_and_exports(parts, corpus, tmp_path):  # noqa: F811
    out = tmp_path / "fsdp2"
    _torchrun(parts, corpus, out, "fsdp2", "trainer.export_hf=false")
    ckpt = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True, map_location="cpu")
    # one full state dict: the unsharded shapes, no DTensor
    full = ckpt["state_dict"]
    assert all(type(t) is torch.Tensor for t in full.values())
    # resumed on the same two ranks for 2 more steps
    again = _torchrun(parts, corpus, out, "fsdp2", "trainer.export_hf=false", steps=STEPS + 2)
    assert "resuming from" in again.stdout + again.stderr
    assert torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == STEPS + 2
    # and exported by the ordinary command, on one process
    from granite_train.cli import main

    main(["export", f"checkpoint={out / 'checkpoints' / 'last.ckpt'}", f"output_dir={out / 'hf'}"])
    assert (out / "hf" / "model.safetensors").exists()


def test_fsdp2_strategy_and_refusals():
    from granite_train.training.config import TrainerConfig
    from granite_train.training.run import _strategy
    from granite_train.training.sharding import ShardedDataParallelStrategy

    strategy = _strategy(TrainerConfig(strategy="fsdp2", process_group_timeout_s=42))
    assert isinstance(strategy, ShardedDataParallelStrategy)
    assert strategy._tensor_parallel_size == 1 and strategy._save_distributed_checkpoint is False
    assert strategy._timeout.total_seconds() == 42

    from granite_train.recipes import load_recipe
    from granite_train.training.run import train

    cfg = load_recipe("ctc_tiny_en", ["trainer.strategy=fsdp2", "output_dir=/nonexistent/never_written"])
    with pytest.raises(
        ValueError, match="stage 'ctc' trains an encoder that fits one device: use trainer.strategy=ddp"
    ):
        train(cfg)


def test_sharding_refuses_a_tied_head_on_a_trained_embedding_table(parts, tmp_path):  # noqa: F811
    """World size 1 (a real gloo process group in this process): what is sharded, and the refusal."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import DTensor

    from granite_train.training.sharding import shard_speech_llm
    from granite_train.training.speech_llm_module import SpeechLLMModule

    def module(**train):
        model = {
            "encoder": str(parts["encoder"]), "llm": str(parts["llm"]),
            "lora": {"rank": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"]},
            "train": {"projector": True, "lora": True, "llm": False, **train},
            "loss": {"audio_ctc_weight": 1.0, "audio_ctc_head": "tied"},
            "projector": {"hidden_size": 32, "num_attention_heads": 2, "intermediate_size": 64},
        }  # fmt: skip
        return SpeechLLMModule(model, {"lr": 1e-3}, total_steps=10)

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        mesh = init_device_mesh("cpu", (1,))
        m = module()
        counts = shard_speech_llm(m, mesh)
        assert counts == {
            "decoder_layers": len(m.model.language_model.layers),
            "projector": 1,
            "audio_ctc_head": 1,
        }
        assert all(isinstance(p, DTensor) for p in m.model.language_model.layers.parameters())
        assert all(isinstance(p, DTensor) for p in m.model.projector.parameters())
        # frozen outside the layers: whole, so the tied head can read the table
        assert not isinstance(m.model.hf.get_input_embeddings().weight, DTensor)
        assert not any(isinstance(p, DTensor) for p in m.model.encoder.parameters())
        with pytest.raises(ValueError, match="audio_ctc_head=tied: the tied head reads the embedding table"):
            shard_speech_llm(module(llm=True, lora=False), mesh)
    finally:
        dist.destroy_process_group()


def test_tied_head_reads_checkpoints_with_a_scalar_scale():
    from granite_train.training.speech_llm_losses import AudioCTCHead

    head = AudioCTCHead(8, 10, tied_to=lambda: torch.randn(10, 8), blank=0)
    old = {k: v.clone() for k, v in head.state_dict().items()}
    old["log_scale"] = torch.tensor(2.5)  # as written before the scale became (1,)
    head.load_state_dict(old)
    assert head.log_scale.shape == (1,) and head.log_scale.item() == 2.5
