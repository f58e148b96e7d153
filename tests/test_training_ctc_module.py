"""Stage-1 training: schedule, non-finite step skipping, exact resume after kill -9, 2-process DDP."""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import pytest
import torch
import yaml
from safetensors.torch import load_file

from granite_train.cli import main
from granite_train.recipes import load_recipe
from granite_train.training.callbacks import read_metrics_csv
from granite_train.training.run import train
from granite_train.training.schedules import TriangularSchedule, build_schedule
from tests.corpus import make_corpus

REPO_ROOT = Path(__file__).resolve().parents[1]

# A model and batches small enough for a step to take a few tens of milliseconds on one core.
TINY = [
    "model.encoder.num_layers=2",
    "model.encoder.hidden_dim=48",
    "model.encoder.num_heads=2",
    "model.encoder.dim_head=24",
    "model.encoder.conv_kernel_size=5",
    "data.train.max_frames=600",
    "data.train.shuffle_buffer=16",
    "data.train.num_buckets=2",
    "data.val.max_frames=2000",
    "data.num_workers=0",
    "logger=csv",
    "trainer.enable_progress_bar=false",
    "trainer.log_every_n_steps=1",
    "trainer.threads=1",
    "optim.lr=3e-3",
    # the recipe's CPU speed settings off: dropout and SpecAugment on, so that resume has to
    # reproduce their random draws; fp32
    "model.encoder.dropout=0.1",
    "data.augment.spec_augment={freq_masks: 2, freq_width: 15, time_masks: 2, time_width: 0.05, p: 0.9}",
    "trainer.precision=32-true",
]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("corpus")
    make_corpus(root / "tts_en", "train", n=40, durations=(0.5, 1.5), seed=1)
    make_corpus(root / "tts_en", "test", n=6, num_shards=1, durations=(0.5, 1.5), seed=2)
    # the recipe reads split=train/test from <corpus>/tts_en: point each split at its folder
    return root


def _overrides(corpus: Path, out: Path, *extra: str) -> list[str]:
    return [
        *TINY,
        f"output_dir={out}",
        f"data.train.sources=[{{name: tr, path: '{corpus}/tts_en/train', kind: parquet}}]",
        f"data.val.sources=[{{name: te, path: '{corpus}/tts_en/test', kind: parquet}}]",
        *extra,
    ]


def _samples(out: Path, rank: int = 0) -> list[dict]:
    path = out / f"samples.rank{rank}.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _effective(records: list[dict]) -> list[tuple[int, tuple[str, ...]]]:
    """The micro-batches that made it into the weights: a step re-done after resume counts once (last)."""
    by_step: dict[int, tuple[str, ...]] = {}
    for r in records:
        by_step[r["step"]] = tuple(r["ids"])
    return sorted(by_step.items())


# ------------------------------------------------------------------------------------------------
# schedules
# ------------------------------------------------------------------------------------------------
def test_triangular_schedule_matches_published_shape():
    s = TriangularSchedule(total_steps=200, peak_lr=5e-4, start_lr=5e-5, end_lr=5e-6, warmup_fraction=0.3)
    assert s.lr(0) == pytest.approx(5e-5)
    assert s.lr(60) == pytest.approx(5e-4)
    assert s.lr(30) == pytest.approx((5e-5 + 5e-4) / 2)
    assert s.lr(130) == pytest.approx((5e-4 + 5e-6) / 2)
    assert s.lr(200) == pytest.approx(5e-6) and s.lr(10_000) == pytest.approx(5e-6)
    assert s(60) == pytest.approx(1.0)
    lrs = [s.lr(i) for i in range(201)]
    assert max(lrs) == pytest.approx(5e-4) and lrs.index(max(lrs)) == 60


def test_schedule_errors():
    with pytest.raises(ValueError, match="unknown LR schedule"):
        build_schedule("nope", 10, 1e-3)
    with pytest.raises(ValueError, match="total_steps"):
        TriangularSchedule(total_steps=0, peak_lr=1e-3, start_lr=0, end_lr=0)


# ------------------------------------------------------------------------------------------------
# in-process runs
# ------------------------------------------------------------------------------------------------
class _StepWatch(L.Callback):
    """Whether each training_step call changed the weights."""

    def __init__(self):
        self.changed: list[bool] = []
        self.steps: list[int] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self._before = [p.detach().clone() for p in pl_module.parameters()]
        self._step = trainer.global_step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.changed.append(any(not torch.equal(a, p) for a, p in zip(self._before, pl_module.parameters())))
        self.steps.append(self._step)


def test_nonfinite_loss_skips_the_step_and_is_counted(corpus, tmp_path):
    cfg = load_recipe(
        "ctc_tiny_en",
        _overrides(
            corpus,
            tmp_path,
            "trainer.max_steps=5",
            "trainer.val_every_n_steps=null",
            "trainer.export_hf=false",
            "debug.fault_injection={nan_loss_at_steps: [2]}",
        ),
    )
    watch = _StepWatch()
    result = train(cfg, extra_callbacks=[watch])
    assert result.global_step == 5  # a skipped step is not a step: 5 updates were applied
    assert result.counters["nonfinite_steps"] == 1
    # six training_step calls: step 2 was tried twice, the poisoned try left the weights as they were
    assert watch.steps == [0, 1, 2, 2, 3, 4]
    assert watch.changed == [True, True, False, True, True, True]
    rows = read_metrics_csv(tmp_path / "metrics.csv")
    assert max(r.get("train/nonfinite_steps", 0) for r in rows) == 1
    assert all(
        torch.isfinite(p).all()
        for p in torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"].values()
    )


def test_run_writes_logs_curves_checkpoint_and_hf_export(corpus, tmp_path):
    cfg = load_recipe(
        "ctc_tiny_en",
        _overrides(
            corpus,
            tmp_path,
            "trainer.max_steps=6",
            "trainer.val_every_n_steps=3",
            "trainer.checkpoint_every_n_steps=3",
        ),
    )
    result = train(cfg)
    assert result.global_step == 6
    rows = read_metrics_csv(tmp_path / "metrics.csv")
    val_steps = sorted({int(r["step"]) for r in rows if "val/cer" in r})
    assert val_steps == [2, 5]  # after steps 3 and 6 (the CSV step is 0-based)
    losses = [r["train/loss"] for r in rows if "train/loss" in r]
    assert len(losses) == 6 and all(v > 0 for v in losses)
    png = tmp_path / "curves.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    ckpt = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True, map_location="cpu")
    assert ckpt["global_step"] == 6
    assert ckpt["encoder_config"]["hidden_dim"] == 48
    assert ckpt["granite_train"]["counters"]["utterances"] == result.counters["utterances"] > 0
    assert result.counters["seen/tr"] == result.counters["utterances"]  # per-source counts in the log
    assert max(r.get("data/seen/tr", 0) for r in rows) == result.counters["utterances"]

    from transformers import GraniteSpeechCTCEncoder

    ref = GraniteSpeechCTCEncoder.from_pretrained(tmp_path / "encoder_hf").eval()
    weights = {k[len("encoder.") :]: v for k, v in ckpt["state_dict"].items() if k.startswith("encoder.")}
    for key, value in ref.state_dict().items():
        assert torch.equal(value, weights[key]), key


def test_loss_falls_when_overfitting_a_small_set(corpus, tmp_path):
    cfg = load_recipe(
        "ctc_tiny_en",
        _overrides(
            corpus,
            tmp_path,
            "trainer.max_steps=40",
            "trainer.val_every_n_steps=null",
            "trainer.export_hf=false",
            "data.augment.spec_augment=null",
            "optim.schedule.name=constant",
            "model.encoder.dropout=0.0",
        ),
    )
    train(cfg)
    losses = [r["train/loss"] for r in read_metrics_csv(tmp_path / "metrics.csv") if "train/loss" in r]
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < 0.5 * first, (first, last)


# ------------------------------------------------------------------------------------------------
# CLI
# ------------------------------------------------------------------------------------------------
def test_cli_train_cfg_job_and_recipe_errors(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["train"])
    assert exc.value.code == 2
    assert "ctc_tiny_en" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["train", "recipe=does_not_exist"])
    assert "unknown recipe" in capsys.readouterr().err
    out = subprocess.run(
        _cli("optim.lr=0.123", "model.encoder.num_layers=6", "--cfg", "job"),
        env=_env(),
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    cfg = yaml.safe_load(out)
    assert (
        cfg["optim"]["lr"] == 0.123 and cfg["model"]["encoder"]["num_layers"] == 6 and cfg["stage"] == "ctc"
    )
    help_text = subprocess.run(_cli("--help"), env=_env(), capture_output=True, text=True, check=True).stdout
    assert "granite-train train" in help_text and "trainer" in help_text


# ------------------------------------------------------------------------------------------------
# subprocess runs: kill -9 + resume, DDP
# ------------------------------------------------------------------------------------------------
def kill_9_after(cmd: list[str], out: Path, micro_batches: int, cwd: Path, timeout: float = 600) -> int:
    """Start a training run, ``kill -9`` it (its whole session: the loader worker too, as a job
    scheduler's would) once ``out`` has logged ``micro_batches`` batches; returns those seen."""
    proc = subprocess.Popen(
        cmd, env=_env(), cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    deadline = time.time() + timeout
    while len(_samples(out)) < micro_batches and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    assert proc.poll() is None, "the run ended before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    return len(_samples(out))


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "granite_train.cli", "train", "recipe=ctc_tiny_en", *args]


def _env() -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), OMP_NUM_THREADS="1", WANDB_MODE="disabled")
    env.pop("WANDB_API_KEY", None)
    return env


RESUME = [
    "trainer.max_steps=12",
    "trainer.val_every_n_steps=null",
    "trainer.checkpoint_every_n_steps=1",
    "trainer.deterministic=true",
    "trainer.export_hf=false",
    "data.num_workers=1",  # the loader state lives in a worker process: resume must restore it
    "debug.log_sample_ids=true",
]


def test_kill_9_then_resume_is_bit_identical(corpus, tmp_path):
    ref, killed = tmp_path / "ref", tmp_path / "killed"
    subprocess.run(
        _cli(*_overrides(corpus, ref, *RESUME)),
        env=_env(),
        check=True,
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        timeout=300,
    )

    kill_after = random.randint(2, 10)  # micro-batches seen before the kill
    # own session: the kill takes the loader worker too, as a job scheduler's would (a worker
    # orphaned by killing the trainer alone can linger)
    interrupted = kill_9_after(_cli(*_overrides(corpus, killed, *RESUME)), killed, kill_after, tmp_path)
    assert interrupted < 12
    # the same command again resumes from checkpoints/last.ckpt (resume=auto)
    subprocess.run(
        _cli(*_overrides(corpus, killed, *RESUME)),
        env=_env(),
        check=True,
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        timeout=300,
    )

    a = torch.load(ref / "checkpoints" / "last.ckpt", weights_only=True)
    b = torch.load(killed / "checkpoints" / "last.ckpt", weights_only=True)
    assert a["global_step"] == b["global_step"] == 12
    for key, value in a["state_dict"].items():
        assert torch.equal(value, b["state_dict"][key]), f"{key} differs (killed after {interrupted} batches)"
    for p_a, p_b in zip(
        a["optimizer_states"][0]["state"].values(), b["optimizer_states"][0]["state"].values()
    ):
        assert torch.equal(p_a["exp_avg"], p_b["exp_avg"])
    # every step trained on exactly the batch the uninterrupted run used: nothing twice, nothing skipped
    assert _effective(_samples(killed)) == _effective(_samples(ref))
    assert len(_samples(killed)) > 12  # the steps after the last checkpoint really were re-done
    assert a["granite_train"]["counters"] == b["granite_train"]["counters"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_two_processes_gloo(corpus, tmp_path):
    out = tmp_path / "ddp"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        "--master_addr=127.0.0.1",
        f"--master_port={_free_port()}",
        "-m",
        "granite_train.cli",
        "train",
        "recipe=ctc_tiny_en",
        *_overrides(
            corpus,
            out,
            "trainer.max_steps=4",
            "trainer.devices=2",
            "trainer.strategy=ddp",
            "trainer.val_every_n_steps=2",
            "trainer.export_hf=false",
            "debug.log_sample_ids=true",
            "debug.save_rank_weights=true",
        ),
    ]
    proc = subprocess.run(cmd, env=_env(), cwd=tmp_path, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [_samples(out, r) for r in (0, 1)]
    assert [len(r) for r in ranks] == [4, 4]
    ids = [{i for rec in recs for i in rec["ids"]} for recs in ranks]
    assert ids[0] and ids[1] and not ids[0] & ids[1], "ranks must train on disjoint samples"
    w0 = load_file(out / "rank_weights" / "encoder_params.rank0.safetensors")
    w1 = load_file(out / "rank_weights" / "encoder_params.rank1.safetensors")
    assert w0.keys() == w1.keys() and "layers.0.attn.to_q.weight" in w0
    for key in w0:
        assert torch.equal(w0[key], w1[key]), key
    init = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert torch.equal(init["encoder.out.weight"], w0["out.weight"])
    rows = read_metrics_csv(out / "metrics.csv")
    assert any("val/cer" in r for r in rows)


def test_wandb_logs_offline_without_api_key(corpus, tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("WANDB_SILENT", "true")
    # two runs in one process (add-language's stages, a notebook): each logs into its own folder
    for out in (tmp_path / "first", tmp_path / "second"):
        cfg = load_recipe(
            "ctc_tiny_en",
            [
                *_overrides(
                    corpus,
                    out,
                    "trainer.max_steps=2",
                    "trainer.val_every_n_steps=null",
                    "trainer.export_hf=false",
                ),
                "logger=default",
            ],
        )
        train(cfg)
        runs = list((out / "wandb").glob("offline-run-*/run-*.wandb"))
        assert len(runs) == 1 and runs[0].stat().st_size > 0, out
    import wandb

    assert wandb.run is None  # nothing left open for the next one
