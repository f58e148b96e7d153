"""Stage ``turboctc``: a granite-speech-5.0 TurboCTC model trained by our data path and trainer
(``recipe=turboctc_tiny_en``), exported in the released layout."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCTC

from granite_train.models.turboctc import build_bpe_tokenizer, save_turboctc, tiny_turboctc_config
from granite_train.recipes import load_recipe
from granite_train.training.run import train
from tests.corpus import audio_bytes, make_corpus, speechlike, write_parquet

WORDS = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel"]


@pytest.fixture(scope="module")
def init(tmp_path_factory) -> Path:
    from transformers import GraniteSpeech5ForCTC

    tokenizer = build_bpe_tokenizer([" ".join(WORDS)] * 4, vocab_size=40)
    torch.manual_seed(0)
    model = GraniteSpeech5ForCTC(tiny_turboctc_config(vocab_size=len(tokenizer)))
    return save_turboctc(model, tokenizer, tmp_path_factory.mktemp("turbo") / "init")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("turbo_corpus")
    make_corpus(root, "train", n=16, num_shards=2, durations=(0.8, 1.6), seed=1)
    make_corpus(root, "test", n=3, num_shards=1, durations=(0.8, 1.6), seed=2)
    # 0.5 s cannot carry 40 words at 12.5 Hz: out of the loss, counted
    long_text = " ".join(WORDS * 5)
    write_parquet(
        root / "train" / "shard-009.parquet",
        [{"id": "too-long", "audio": {"bytes": audio_bytes(speechlike(0.5, seed=9)), "path": None},
          "text": long_text, "language": "en"}],
    )  # fmt: skip
    return root


def _run(init, corpus, out, *extra: str):
    cfg = load_recipe(
        "turboctc_tiny_en",
        [
            f"output_dir={out}",
            f"model.init={init}",
            f"data.train.sources=[{{name: tr, path: '{corpus}/train', kind: parquet, language: en, task: asr}}]",
            f"data.val.sources=[{{name: te, path: '{corpus}/test', kind: parquet, language: en, task: asr}}]",
            "data.train.max_frames=400",
            "data.train.shuffle_buffer=8",
            "data.train.num_buckets=1",
            "data.num_workers=0",
            "logger=csv",
            "trainer.enable_progress_bar=false",
            "trainer.threads=1",
            "trainer.precision=32-true",
            "trainer.max_steps=6",
            "trainer.val_every_n_steps=6",
            "trainer.checkpoint_every_n_steps=6",
            "optim.schedule.warmup_steps=1",
            "optim.lr=3e-3",
            *extra,
        ],
    )
    return train(cfg)


def test_turboctc_trains_exports_and_counts_what_it_cannot_align(init, corpus, tmp_path):
    result = _run(init, corpus, tmp_path / "run")
    assert result.global_step == 6 and "val/wer" in result.metrics
    assert result.counters.get("skipped/too_many_targets", 0) >= 1
    export = tmp_path / "run" / "turboctc_hf"
    reloaded = AutoModelForCTC.from_pretrained(export)
    assert type(reloaded).__name__ == "GraniteSpeech5ForCTC"
    before, after = load_file(init / "model.safetensors"), load_file(export / "model.safetensors")
    assert before.keys() == after.keys()
    moved = [k for k in before if not torch.equal(before[k], after[k])]
    assert any(k.startswith("encoder.layers.0.") for k in moved)  # the whole model trained


def test_top_layers_only(init, corpus, tmp_path):
    _run(init, corpus, tmp_path / "top", "model.train_top_layers=1")
    before = load_file(init / "model.safetensors")
    after = load_file(tmp_path / "top" / "turboctc_hf" / "model.safetensors")
    layers = 1 + max(int(k.split(".")[2]) for k in before if k.startswith("encoder.layers."))
    top = f"encoder.layers.{layers - 1}."
    for key in before:
        if key.startswith("encoder.layers.") and not key.startswith(top):
            # frozen: bit-identical, BatchNorm running statistics included (frozen layers run in eval mode)
            assert torch.equal(before[key], after[key]), key
    assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith(top))
    with pytest.raises(ValueError, match="train_top_layers=99, but the model has"):
        _run(init, corpus, tmp_path / "bad", "model.train_top_layers=99")


def test_modes_the_trainer_starts_from(init):
    from granite_train.training.turboctc_module import TurboCTCModule

    whole = TurboCTCModule({"init": str(init)}, {"lr": 1e-3}, total_steps=2)
    assert all(m.training for m in whole.model.modules())  # BatchNorm statistics and dropout live
    top = TurboCTCModule({"init": str(init), "train_top_layers": 1}, {"lr": 1e-3}, total_steps=2)
    layers = list(top.model.encoder.layers)
    assert not any(m.training for m in layers[0].modules()) and layers[-1].training
    assert {n for n, p in top.model.named_parameters() if p.requires_grad} >= {
        n for n, _ in top.model.named_parameters() if n.startswith(f"encoder.layers.{len(layers) - 1}.")
    }
    top.eval()
    top.train()
    assert not layers[0].training  # train() again: still frozen in eval mode


def test_new_folder_from_a_corpus(corpus, tmp_path, capsys):
    from granite_train.models.turboctc_new import main

    assert main(["--texts-from", str(corpus), "--split", "train", "--vocab-size", "30", "--hidden-size", "32",
                 "--num-layers", "2", "--num-heads", "2", "--out", str(tmp_path / "new")]) == 0  # fmt: skip
    model = AutoModelForCTC.from_pretrained(tmp_path / "new")
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "new")
    assert model.config.vocab_size == len(tokenizer) and model.config.encoder_config.num_hidden_layers == 2
    assert tokenizer.pad_token_id == 0  # the CTC blank
    assert main(["--texts-from", str(tmp_path / "nothing"), "--out", str(tmp_path / "x")]) == 2


def test_finetune_a_turboctc_folder_before_and_after(tmp_path):
    """`granite-train finetune model=<5.0 folder>`: the held-out speaker scored by greedy CTC before
    and after, the data path and split as for 4.0, the export in the released layout."""
    import json

    from granite_train.finetune import run_finetune
    from granite_train.models.turboctc_new import new_turboctc_folder

    words = [f"number {k}" for k in range(10)]  # the labels' digits: a text the BPE cannot write is skipped
    init = new_turboctc_folder(words * 3, tmp_path / "init", vocab_size=30, hidden_size=32,
                               intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                               num_key_value_heads=2, head_dim=16)  # fmt: skip
    from tests.test_finetune import _audio  # noise clips labelled "number k", three speakers

    audio, out = _audio(tmp_path), tmp_path / "ft"
    config = {
        "model_path": str(init), "data_path": str(audio), "output_dir": str(out),
        "holdout_speakers": ["carol"], "steps": 80, "lr": 1e-2, "trains": "all",
        "overrides": ["data.num_workers=0", "trainer.threads=1", "trainer.precision=32-true"],
    }  # fmt: skip
    run_finetune(config)
    results = json.loads((out / "results.json").read_text())
    (row,) = results["results"]
    assert row["test set"] == "heldout" and row["utterances"] == 6  # all of carol, nobody else
    # a random model writes no word of "number k"; the trained one at least "number" (the audio is noise)
    assert row["wer_before"] >= 1.0 and row["wer_after"] <= 0.5
    assert "skipped/target_has_unk" not in results["counters"], results["counters"]
    export = out / "train" / "turboctc_hf"
    assert AutoModelForCTC.from_pretrained(export).config.model_type == "granite_speech5_ctc"
    assert "| heldout | 6 |" in (out / "results.md").read_text()

    with pytest.raises(
        ValueError, match="TurboCTC model \\(CTC only: no LLM, projector or LoRA\\); use trains=all"
    ):
        run_finetune({**config, "trains": "lora", "output_dir": str(tmp_path / "lora")})
