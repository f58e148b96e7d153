"""``granite-train finetune``: the sources it builds (held-out split, replay), the recipe overrides
it stands for, and (slow tier) the whole job on a tiny released model: before/after report, and the
held-out speaker never trained on."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from granite_train.finetune import TRAINS, FinetuneConfig, finetune_sources, recipe_overrides, serving_note
from granite_train.recipes import load_recipe
from granite_train.training.config import load_recipe_config

ROOT = Path(__file__).resolve().parents[1]
BASE = FinetuneConfig(model_path="released", data_path="my_audio", output_dir="ft", holdout_share=0.2,
                      holdout_speakers=["carol"], lora_rank=8, steps=40, max_frames=2000, name="ft")  # fmt: skip


def test_held_out_split_from_the_data_itself():
    sources = finetune_sources(BASE)
    (mine,), (heldout,) = sources.train, sources.tests
    assert mine.holdout == "exclude" and heldout.holdout == "only"
    for spec in (mine, heldout):  # both sides of the same split
        assert spec.path == "my_audio" and spec.holdout_speakers == ["carol"]
        assert spec.holdout_share == 0.2


def test_given_eval_data_replay_and_regression():
    cfg = replace(BASE, eval_data="my_test.csv", replay="general", replay_share=0.25, regression="gen_test")
    sources = finetune_sources(cfg)
    mine, replay = sources.train
    assert mine.holdout is None and (mine.weight, replay.weight) == (0.75, 0.25)
    assert [t.path for t in sources.tests] == ["my_test.csv", "gen_test"]
    with pytest.raises(ValueError, match="replay"):
        replace(BASE, replay_share=0.3)


def _recipe(cfg: FinetuneConfig, tmp_path: Path):
    overrides = recipe_overrides(cfg, finetune_sources(cfg).train, tmp_path / "train")
    return load_recipe_config(load_recipe("speech_llm_finetune", overrides))


@pytest.mark.parametrize("trains", sorted(TRAINS))
def test_overrides_compose_into_the_finetuning_recipe(trains, tmp_path):
    cfg = replace(BASE, trains=trains, lr=1e-3)
    recipe = _recipe(cfg, tmp_path)
    flags, lora = TRAINS[trains]
    assert recipe.model.init == "released" and recipe.optim.lr == 1e-3
    assert {k: getattr(recipe.model.train, k) for k in flags} == flags
    assert (recipe.model.lora is not None) == lora and (not lora or recipe.model.lora.rank == 8)
    assert recipe.trainer.max_steps == 40 and recipe.optim.schedule.warmup_steps == 4
    assert recipe.data.train["sources"][0]["holdout"] == "exclude"
    assert recipe.data.train["alpha"] == 0.0  # the weights are the shares
    if trains == "encoder_top":  # top layers + CTC head, with the encoder CTC and its targets
        assert recipe.model.train.encoder_layers == 2 and recipe.model.loss.encoder_ctc_weight == 0.2
        assert recipe.data.train["prepare"]["ctc_targets"] is True
    else:
        assert recipe.model.train.encoder_layers == 0 and recipe.model.loss.encoder_ctc_weight == 0.0
    # the LoRA alone is written for vLLM only when nothing else trains
    assert recipe.export.lora_adapter is (trains == "lora")
    assert not recipe.model.gradient_checkpointing.llm and not recipe.model.gradient_checkpointing.encoder
    with pytest.raises(ValueError, match="trains must be"):
        replace(cfg, trains="encoder")


def test_explicit_values_reach_the_recipe_zeros_included(tmp_path):
    """An explicit value is never swapped for a default (``x or default`` turned 0 into it)."""
    top = replace(BASE, trains="encoder_top", encoder_layers=1, encoder_ctc_weight=0.5, warmup_steps=0)
    recipe = _recipe(top, tmp_path)
    assert recipe.model.train.encoder_layers == 1 and recipe.model.loss.encoder_ctc_weight == 0.5
    assert recipe.optim.schedule.warmup_steps == 0
    assert _recipe(replace(BASE, replay="general", replay_share=0), tmp_path).data.train["sources"][0][
        "weight"
    ] == pytest.approx(1.0)
    # with trains=encoder_top a zero is meaningless: refused, naming the value and what is valid
    with pytest.raises(ValueError, match=r"encoder_layers must be >= 1 with trains=encoder_top.*got 0"):
        replace(top, encoder_layers=0)
    with pytest.raises(ValueError, match=r"encoder_ctc_weight must be > 0 with trains=encoder_top.*got 0"):
        replace(top, encoder_ctc_weight=0)
    # other trains values train no encoder layer and no encoder CTC: their zeros reach the recipe
    recipe = _recipe(replace(BASE, encoder_layers=0, encoder_ctc_weight=0.0), tmp_path)
    assert recipe.model.train.encoder_layers == 0 and recipe.model.loss.encoder_ctc_weight == 0.0


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("replay_share", 1.0, r"replay_share must be in \[0, 1\), got 1.0"),
        ("holdout_share", 0.0, r"holdout_share must be in \(0, 1\), got 0.0"),
        ("steps", 0, "steps must be >= 1, got 0"),
        ("warmup_steps", -1, "warmup_steps must be >= 0"),
        ("lora_rank", 0, "lora_rank must be >= 1, got 0"),
    ],
)
def test_values_out_of_range_are_refused(field, value, message):
    with pytest.raises(ValueError, match=message):
        replace(BASE, **{field: value})


def test_gradient_checkpointing_knob_reaches_llm_and_encoder(tmp_path):
    checkpointing = _recipe(replace(BASE, gradient_checkpointing=True), tmp_path).model.gradient_checkpointing
    assert checkpointing.llm and checkpointing.encoder


def test_serving_note_offers_the_adapter_only_when_it_was_written(tmp_path):
    export = tmp_path / "train" / "speech_llm_hf"
    note = serving_note(BASE, export, tmp_path / "train")
    assert f"vllm serve {export}" in note and "no LoRA-only adapter" in note and "--enable-lora" not in note
    (tmp_path / "train" / "speech_llm_lora").mkdir(parents=True)
    (tmp_path / "train" / "speech_llm_lora" / "adapter_config.json").write_text("{}")
    note = serving_note(replace(BASE, trains="lora"), export, tmp_path / "train")
    assert "vllm serve released --enable-lora --max-lora-rank 8 --lora-modules finetuned=" in note


def test_run_finetune_writes_the_same_report_through_the_shared_core(tmp_path, monkeypatch):
    """Scoring and training faked: run_finetune scores the released model, trains, scores the
    export and writes results.md / results.json as it did before the shared core."""
    import granite_train.training.run
    from granite_train.eval.report import EvalResult
    from granite_train.finetune import run_finetune
    from granite_train.training.run import TrainResult
    from granite_train.workflows.before_after import Scoring

    calls = []

    def score(self, model, tests, folder):
        calls.append((str(model), [t.name for t in tests], folder.name))
        wer, cer = (0.8, 0.5) if folder.name == "eval_before" else (0.25, 0.1)
        return [EvalResult("heldout", 50, wer, cer, "whisper_english", None, 60.0, 2.0)]

    run_dir = tmp_path / "out" / "train"

    def train(recipe):
        calls.append(("train", recipe["trainer"]["max_steps"]))
        return TrainResult(run_dir, None, 40, {}, {"utterances": 400})

    monkeypatch.setattr(Scoring, "run", score)
    monkeypatch.setattr(granite_train.training.run, "train", train)
    audio = _audio(tmp_path)  # the data check reads it (headers) and makes the held-out split
    table = run_finetune(replace(BASE, data_path=str(audio), output_dir=str(tmp_path / "out")))
    export = run_dir / "speech_llm_hf"
    assert calls == [
        ("released", ["heldout"], "eval_before"),
        ("train", 40),
        (str(export), ["heldout"], "eval_after"),
    ]
    expected_table = (
        "| test set | utterances | WER before % | WER after % | change (points) | CER before % | CER after % |\n"
        "|---|---|---|---|---|---|---|\n"
        "| heldout | 50 | 80.00 | 25.00 | -55.00 | 50.00 | 10.00 |\n"
    )
    assert table == expected_table
    results_md = (tmp_path / "out" / "results.md").read_text()
    head, data = results_md.split("## Data\n\n")
    assert head == (
        f"# Fine-tuning released\n\n40 steps on `{audio}` (trains: projector_lora: projector, lora; "
        f"replay share 0.00); export: `{export}`; curves: `{run_dir / 'curves.png'}`\n\n"
        + expected_table
        + "\n"
    )
    # the data section: the check of all 18 clips, the split (carol: the share's one speaker of three), then
    # what training skipped; the serving note after it
    assert "| mine | 18 | 18 |" in data and "held-out split by speaker: 1 of 3 speakers" in data
    assert "During training: nothing skipped or repaired." in data and data.endswith(
        serving_note(BASE, export, run_dir)
    )
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert results["steps"] == 40 and results["counters"] == {"utterances": 400}
    assert (
        results["data"]["check"]["mine"]["usable"] == 18
        and results["data"]["heldout_split"]["by"] == "speaker"
    )
    assert results["results"] == [{"model": "speech LLM", "test set": "heldout", "utterances": 50, "wer_before": 0.8,
                                   "wer_after": 0.25, "cer_before": 0.5, "cer_after": 0.1, "rtfx_after": 30.0}]  # fmt: skip


# --------------------------------------------------------------------------------------------------
# end to end (slow tier)
# --------------------------------------------------------------------------------------------------
def _released_model(root: Path) -> Path:
    from granite_train.models.tiny_release import build_tiny_released_model

    return build_tiny_released_model(root)


def _audio(root: Path) -> Path:
    folder = root / "audio"
    (folder / "clips").mkdir(parents=True)
    rows = ["file_name,text,speaker"]
    g = np.random.default_rng(0)
    for speaker in ("alice", "bob", "carol"):
        for i in range(6):
            name = f"clips/{speaker}_{i}.wav"
            sf.write(folder / name, 0.1 * g.standard_normal(8000 + 800 * i).astype(np.float32), 16000)
            rows.append(f"{name},number {i},{speaker}")
    (folder / "metadata.csv").write_text("\n".join(rows) + "\n")
    return folder


@pytest.mark.slow
def test_finetune_end_to_end_keeps_the_held_out_speaker_out_of_training(tmp_path):
    model, audio = _released_model(tmp_path), _audio(tmp_path)
    out = tmp_path / "ft"
    run = subprocess.run(
        [sys.executable, "-m", "granite_train.cli", "finetune", f"model={model}", f"data={audio}",
         "holdout_speakers=[carol]", "steps=60", "lr=1e-2", "max_new_tokens=16", "trains=llm",
         f"output_dir={out}", 'overrides=["data.num_workers=0","debug.log_sample_ids=true"]'],
        capture_output=True, text=True, timeout=900, cwd=ROOT,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    (row,) = results["results"]
    assert row["test set"] == "heldout" and row["utterances"] == 6  # all of carol, nobody else
    assert results["steps"] == 60
    # the held-out WER really dropped: the random released model writes no word of "number k"; the
    # fine-tuned one has learnt the form of its training transcripts (the audio is noise: the digit
    # is a guess), so at least "number" is right in every utterance
    assert row["wer_before"] >= 1.0 and row["wer_after"] <= 0.5
    trained = [json.loads(line) for line in (out / "train" / "samples.rank0.jsonl").read_text().splitlines()]
    ids = {i for step in trained for i in step["ids"]}
    assert ids and not any("carol" in i for i in ids)  # the held-out speaker never trained
    assert {"alice", "bob"} <= {i.split("/")[-1].split("_")[0] for i in ids}
    export = out / "train" / "speech_llm_hf"
    assert json.loads((export / "config.json").read_text())["has_lora_adapter"] is False
    assert "| heldout | 6 |" in (out / "results.md").read_text()
    # the memory estimate came before the first step, and the run is CPU-sized: it fits
    memory = json.loads((out / "train" / "memory_estimate.json").read_text())
    assert (
        memory["fits"] is True and memory["activations"] > 0 and "memory estimate for a batch" in run.stdout
    )
    assert not (out / "train" / "speech_llm_lora").exists()  # more than a LoRA trained: merged only


@pytest.mark.slow
def test_finetune_lora_only_serves_as_an_adapter_on_the_released_model(tmp_path):
    from transformers import AutoModelForSpeechSeq2Seq, AutoProcessor

    model, audio = _released_model(tmp_path), _audio(tmp_path)
    out = tmp_path / "ft"
    run = subprocess.run(
        [sys.executable, "-m", "granite_train.cli", "finetune", f"model={model}", f"data={audio}",
         "holdout_speakers=[carol]", "steps=4", "lr=1e-2", "max_new_tokens=4", "lora_rank=4", "trains=lora",
         "gradient_checkpointing=true", f"output_dir={out}", 'overrides=["data.num_workers=0"]'],
        capture_output=True, text=True, timeout=900, cwd=ROOT,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    adapter, merged = out / "train" / "speech_llm_lora", out / "train" / "speech_llm_hf"
    assert "--enable-lora" in (out / "results.md").read_text()
    processor = AutoProcessor.from_pretrained(str(model))
    served = AutoModelForSpeechSeq2Seq.from_pretrained(str(model)).eval()
    served.load_adapter(str(adapter))
    reference = AutoModelForSpeechSeq2Seq.from_pretrained(str(merged)).eval()
    chat = [{"role": "user", "content": "<|audio|>can you transcribe the speech into a written format?"}]
    prompt = processor.tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
    wave = torch.from_numpy(sf.read(audio / "clips" / "carol_3.wav", dtype="float32")[0])
    inputs = processor(prompt, wave, return_tensors="pt")
    with torch.no_grad():
        logits = served(**inputs).logits
        assert (logits - reference(**inputs).logits).abs().max() <= 1e-4
        trained = (
            logits - AutoModelForSpeechSeq2Seq.from_pretrained(str(model)).eval()(**inputs).logits
        ).abs()
        assert trained.max() > 1e-3  # the adapter changed the model: the comparison means something
        ids = [m.generate(**inputs, max_new_tokens=6, do_sample=False).tolist() for m in (served, reference)]
    assert ids[0] == ids[1]


def test_released_layouts_4_0_gets_a_fresh_lora_3_3_continues_its_own(tmp_path):
    from granite_train.models.config import LoraSettings
    from granite_train.models.speech_export import export_speech_llm
    from granite_train.models.speech_llm import build_speech_llm, load_speech_llm

    merged = _released_model(tmp_path)  # 4.0 layout: merged weights, has_lora_adapter false
    fresh = build_speech_llm({"init": str(merged), "lora": {"rank": 4, "alpha": 4}})
    lora_b = {n: p for n, p in fresh.hf.named_parameters() if "lora_B" in n}
    assert lora_b and all(float(p.abs().max()) == 0.0 for p in lora_b.values())  # a new adapter: B = 0
    assert {n for n, p in fresh.hf.named_parameters() if p.requires_grad} == {
        n for n in dict(fresh.hf.named_parameters()) if "lora_" in n or n.startswith("model.projector.")
    }
    # the 3.3 layout: an adapter (trained: B != 0) beside the base weights, which training continues
    speech = load_speech_llm(merged)
    speech.add_lora(LoraSettings(rank=4, alpha=4.0, dropout=0.0))
    with torch.no_grad():
        for name, param in speech.hf.named_parameters():
            if "lora_B" in name:
                param.fill_(0.01)
    folder = export_speech_llm(speech, tmp_path / "with_adapter", merge_lora=False)
    assert json.loads((folder / "config.json").read_text())["has_lora_adapter"] is True
    resumed = build_speech_llm({"init": str(folder), "lora": {"rank": 64}})  # its own adapter wins
    trained = {n: p for n, p in resumed.hf.named_parameters() if "lora_B" in n}
    assert trained and all(torch.allclose(p, torch.full_like(p, 0.01)) for p in trained.values())
    assert all(p.requires_grad for p in trained.values()) and next(iter(trained.values())).shape[1] == 4
