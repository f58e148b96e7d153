"""Stage 2 through the real entry points: exact resume after ``kill -9``, and the published trainable
set (LLM frozen, LoRA + projector) trained by Lightning, exported by ``granite-train export`` in both
layouts and reloaded by plain transformers with our greedy transcripts; 2-process DDP. Subprocess
runs of the real CLI, a few minutes together: the slow tier."""

from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.test_models_speech_llm import PROJ, _random_encoder  # noqa: F401
from tests.test_training_ctc_module import _effective, _env, _samples, kill_9_after

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def parts(tmp_path_factory) -> dict[str, Path]:
    from granite_train.models.export import export_hf_encoder
    from granite_train.models.tiny_llm import build_tiny_llm
    from tests.test_models_speech_llm import SENTENCES

    root = tmp_path_factory.mktemp("s2run_parts")
    return {
        "encoder": export_hf_encoder(_random_encoder(), root / "encoder_hf"),
        "llm": build_tiny_llm(root / "llm", SENTENCES, preset="micro", vocab_size=300),
    }


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    from tests.corpus import make_corpus

    root = tmp_path_factory.mktemp("s2run_corpus")
    make_corpus(root, "train", n=24, num_shards=2, durations=(0.4, 0.9), seed=4)
    make_corpus(root, "test", n=3, num_shards=1, durations=(0.4, 0.9), seed=5)
    return root


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "granite_train.cli", "train", "recipe=speech_llm_tiny_en", *args]


def _overrides(parts, corpus: Path, out: Path, *extra: str) -> list[str]:
    proj = [f"++model.projector.{k}={v}" for k, v in PROJ.items() if k != "preset"]
    return [
        f"output_dir={out}",
        f"model.encoder={parts['encoder']}",
        f"model.llm={parts['llm']}",
        *proj,
        # the published trainable set: LLM frozen, LoRA (rank and targets from config) + projector
        "model.lora={rank: 4, alpha: 8, dropout: 0.1, target_modules: [q_proj, v_proj]}",
        "model.train={projector: true, lora: true, llm: false}",
        "~optim.start_step",  # the recipe holds the (full) LLM for its first 300 steps: not here
        f"data.train.sources=[{{name: tr, path: '{corpus}/train', kind: parquet, language: en, task: asr}}]",
        f"data.val.sources=[{{name: te, path: '{corpus}/test', kind: parquet, language: en, task: asr}}]",
        "data.train.max_frames=120",
        "data.train.shuffle_buffer=8",
        "data.train.num_buckets=1",
        "data.val.max_frames=400",
        "logger=csv",
        "trainer.enable_progress_bar=false",
        "trainer.log_every_n_steps=1",
        "trainer.threads=1",
        "trainer.precision=32-true",
        "optim.lr=3e-3",
        "optim.schedule.warmup_steps=2",
        "validation.max_new_tokens=6",
        *extra,
    ]


RESUME = [
    "trainer.max_steps=10",
    "trainer.val_every_n_steps=null",
    "trainer.checkpoint_every_n_steps=1",
    "trainer.deterministic=true",
    "trainer.export_hf=false",
    "data.num_workers=1",  # the loader state lives in a worker process
    "debug.log_sample_ids=true",
    # every random stream of stage 2 on: instruction variants, target-token noise, LoRA and
    # Q-Former dropout, the training-only CTC heads, and the encoder cache (rebuilt after resume)
    "prompts.vary_instructions=true",
    "model.loss.target_token_noise=0.3",
    "model.projector.hidden_dropout_prob=0.1",
    "model.encoder_cache_gb=0.5",
]


@pytest.mark.slow
def test_kill_9_then_resume_is_bit_identical(parts, corpus, tmp_path):
    ref, killed = tmp_path / "ref", tmp_path / "killed"
    run = dict(env=_env(), cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=600)
    done = subprocess.run(_cli(*_overrides(parts, corpus, ref, *RESUME)), **run)
    assert done.returncode == 0, done.stderr.decode()[-3000:]

    rng = random.Random(int(os.environ.get("GT_KILL_SEED", "17")))
    kill_after = rng.randint(2, 7)  # micro-batches seen before the kill (seeded, logged on failure)
    interrupted = kill_9_after(
        _cli(*_overrides(parts, corpus, killed, *RESUME)), killed, kill_after, tmp_path
    )
    resumed = subprocess.run(_cli(*_overrides(parts, corpus, killed, *RESUME)), **run)  # resume=auto
    assert resumed.returncode == 0, resumed.stderr.decode()[-3000:]

    a = torch.load(ref / "checkpoints" / "last.ckpt", weights_only=True)
    b = torch.load(killed / "checkpoints" / "last.ckpt", weights_only=True)
    assert a["global_step"] == b["global_step"] == 10
    where = f"(kill after {kill_after} micro-batches, {interrupted} seen)"
    trained = [k for k in a["state_dict"] if "lora_" in k or ".projector." in k or "audio_ctc_head" in k]
    assert any("lora_B" in k for k in trained) and any("audio_ctc_head" in k for k in trained)
    for key, value in a["state_dict"].items():
        assert torch.equal(value, b["state_dict"][key]), f"{key} differs {where}"
    for p_a, p_b in zip(
        a["optimizer_states"][0]["state"].values(), b["optimizer_states"][0]["state"].values()
    ):
        assert torch.equal(p_a["exp_avg"], p_b["exp_avg"]), where
    # every step trained on the batch the uninterrupted run used: nothing twice, nothing skipped
    assert _effective(_samples(killed)) == _effective(_samples(ref)), where
    assert len(_samples(killed)) > 10  # the steps after the last checkpoint really were re-done
    counters, resumed_counters = a["granite_train"]["counters"], b["granite_train"]["counters"]
    cache = {k: v for k, v in counters.items() if k.startswith("encoder_cache/")}
    # the encoder cache is per process: the resumed run refilled it (more misses), same weights
    assert cache.get("encoder_cache/hits", 0) > 0, cache
    assert resumed_counters["encoder_cache/misses"] >= counters["encoder_cache/misses"]
    assert {k: v for k, v in counters.items() if k not in cache} == {
        k: v for k, v in resumed_counters.items() if not k.startswith("encoder_cache/")
    }
    assert counters["task/asr"] == counters["utterances"]  # counted per task as well as per source


@pytest.mark.slow
def test_published_trainable_set_trains_exports_both_layouts_and_reloads_in_transformers(
    parts, corpus, tmp_path
):
    from transformers import AutoModelForSpeechSeq2Seq, AutoProcessor

    from granite_train.models.speech_export import speech_llm_from_checkpoint
    from granite_train.models.speech_llm import load_speech_llm
    from tests.corpus import speechlike

    out = tmp_path / "run"
    extra = ["trainer.max_steps=6", "trainer.val_every_n_steps=6", "trainer.checkpoint_every_n_steps=6",
             "data.num_workers=0", "trainer.export_hf=false"]  # fmt: skip
    done = subprocess.run(_cli(*_overrides(parts, corpus, out, *extra)), env=_env(), cwd=tmp_path,
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    ckpt = out / "checkpoints" / "last.ckpt"
    state = torch.load(ckpt, weights_only=True)["state_dict"]
    base = {
        k: v for k, v in state.items() if k.startswith("model.hf.model.language_model.") and "lora_" not in k
    }
    from transformers import AutoModelForCausalLM

    llm = AutoModelForCausalLM.from_pretrained(str(parts["llm"])).model.state_dict()
    for key, value in base.items():  # the LLM itself stayed frozen
        name = key.removeprefix("model.hf.model.language_model.").replace(".base_layer.", ".")
        assert torch.equal(value, llm[name]), key
    assert any("lora_B" in k and v.abs().max() > 0 for k, v in state.items())  # the LoRA trained

    ours = speech_llm_from_checkpoint(ckpt).eval()
    wave = torch.from_numpy(speechlike(0.8, seed=9))
    chat = [{"role": "user", "content": "<|audio|>can you transcribe the speech into a written format?"}]
    for layout, flag in (("merged", "true"), ("adapter", "false")):
        folder = tmp_path / layout
        exported = subprocess.run(
            [sys.executable, "-m", "granite_train.cli", "export", f"checkpoint={ckpt}", f"output_dir={folder}",
             f"merge_lora={flag}"],
            env=_env(), cwd=tmp_path, capture_output=True, text=True, timeout=600,
        )  # fmt: skip
        assert exported.returncode == 0, exported.stderr[-3000:]
        assert (folder / "adapter_config.json").exists() == (layout == "adapter")
        processor = AutoProcessor.from_pretrained(str(folder))
        model = AutoModelForSpeechSeq2Seq.from_pretrained(str(folder)).eval()
        prompt = processor.tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
        inputs = processor(prompt, wave, return_tensors="pt")
        with torch.no_grad():
            theirs = model.generate(**inputs, max_new_tokens=8, do_sample=False)[
                0, inputs["input_ids"].shape[1] :
            ]
        mine = ours.generate(
            inputs["input_ids"], inputs["attention_mask"], *_features(wave), max_new_tokens=8
        )[0]
        assert _until_eos(theirs.tolist(), ours) == _until_eos(mine.tolist(), ours), layout
        assert load_speech_llm(folder).has_lora == (layout == "adapter")


def _features(wave: torch.Tensor):
    from granite_train.audio.features import LogMelFeatures

    feats, lengths = LogMelFeatures()(wave[None], torch.tensor([wave.shape[0]]))
    return feats, lengths


def _until_eos(ids: list[int], speech) -> list[int]:
    eos = speech.tokenizer.eos_token_id
    return ids[: ids.index(eos)] if eos in ids else ids


def _first_pass(ids: list[str]) -> set[str]:
    seen: set[str] = set()
    for i in ids:
        if i in seen:
            break
        seen.add(i)
    return seen


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_ddp_two_processes_skip_together_and_validate_unequal_shares(parts, corpus, tmp_path):
    """2 ranks (gloo): disjoint examples, equal weights; a NaN loss on rank 1 only and an infinite
    gradient on rank 1 only (finite loss) each skip the step on both ranks, with gradient
    accumulation 2; an auxiliary head with no loss on rank 1 only does not stall or crash the
    step; generation validation finishes with 3 utterances split unequally."""
    from safetensors.torch import load_file

    from granite_train.training.callbacks import read_metrics_csv

    out = tmp_path / "ddp"
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
        f"--master_port={_free_port()}", "-m", "granite_train.cli", "train", "recipe=speech_llm_tiny_en",
        *_overrides(
            parts, corpus, out, "trainer.max_steps=5", "trainer.devices=2", "trainer.strategy=ddp",
            "trainer.val_every_n_steps=5", "trainer.export_hf=false", "optim.accumulate_grad_batches=2",
            "data.num_workers=0", "data.val.max_frames=60", "validation.generate_batches=4",
            "debug.log_sample_ids=true", "debug.save_rank_weights=true",
            # rank 1 only: a NaN loss, an infinite gradient, and an audio-CTC head left without a
            # gradient (every utterance too short for it), which DDP must not wait on
            "debug.fault_injection={nan_loss_at_steps: [1], inf_grad_at_steps: [3], aux_dropped_at_steps: [2], ranks: [1]}",
        ),
    ]  # fmt: skip
    proc = subprocess.run(cmd, env=_env(), cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [_samples(out, r) for r in (0, 1)]
    # 5 steps x 2 micro-batches, and the 2 skipped steps taken again (2 x 2 more)
    assert [len(r) for r in ranks] == [14, 14]
    # each rank's first pass over its share (the examples before its first repeat): disjoint
    firsts = [_first_pass([i for rec in recs for i in rec["ids"]]) for recs in ranks]
    assert min(map(len, firsts)) >= 6 and not firsts[0] & firsts[1], "ranks must train on disjoint examples"
    w0, w1 = (load_file(out / "rank_weights" / f"trainable_params.rank{r}.safetensors") for r in (0, 1))
    assert (
        w0.keys() == w1.keys() and any("lora_B" in k for k in w0) and any("audio_ctc_head" in k for k in w0)
    )
    for key in w0:
        assert torch.equal(w0[key], w1[key]), key  # a rank that stepped alone would differ here
    counters = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)["granite_train"]["counters"]
    assert counters["nonfinite_steps"] == 2, counters
    assert "no audio-CTC loss at step 2 on rank 1" in proc.stdout + proc.stderr
    rows = read_metrics_csv(out / "metrics.csv")
    assert any("val/wer" in r for r in rows) and any("val/loss" in r for r in rows)
