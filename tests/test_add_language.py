"""``granite-train add-language``: the replay mixture, the recipe overrides, and the whole chain
(report -> extend -> data -> stage 1 -> stage 2 -> eval) on tiny models, resumed step by step."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from data_prep.base_llm import corpus_texts
from granite_train.add_language import (
    OLD_LAYER_PARAMETERS,
    AddLanguageConfig,
    longest_target_tokens,
    stage1_overrides,
    target_budget_override,
    texts_path,
    training_sources,
)
from granite_train.data.sources import SourceSpec
from granite_train.recipes import load_recipe
from granite_train.training.config import load_recipe_config
from granite_train.typed_config import ConfigKeyError, from_mapping
from granite_train.workflows.add_language_config import AddLanguageStage1
from tests.corpus import make_corpus

ROOT = Path(__file__).resolve().parents[1]
CFG = AddLanguageConfig(language="el", encoder="enc", old_corpus="/data/en", reference="en.txt", output_dir="out",
                        stage1=AddLanguageStage1(recipe="ctc_tiny_en", steps=40))  # fmt: skip


TINY_TRAINING = [
    "data.num_workers=0",
    "data.train.max_frames=600",
    "trainer.threads=1",
    "trainer.precision=32-true",
]
"""Overrides that make an add-language stage a seconds-long CPU run (also tests/test_released_imported_llm.py)."""


def test_replay_share_sets_the_mixture_weights():
    cfg = replace(CFG, replay_share=0.3, extra_sources=[{"name": "mine", "path": "/x", "weight": 3.0}])
    sources = {s.name: s for s in training_sources(cfg, Path("/c"))}
    assert sources["replay"].weight == pytest.approx(0.3) and sources["replay"].language == "en"
    assert sources["new_el"].weight == pytest.approx(0.7 * 1 / 4)  # the new side: 1 : 3
    assert sources["mine"].weight == pytest.approx(0.7 * 3 / 4) and sources["mine"].language == "el"
    without = training_sources(replace(CFG, replay_share=0.0), Path("/c"))
    assert [s.name for s in without] == ["new_el"] and without[0].weight == 1.0
    with pytest.raises(ValueError, match=r"replay_share must be in \[0, 1\), got 1.0"):
        replace(CFG, replay_share=1.0)


def test_extra_sources_are_source_specs_with_their_keys_checked():
    cfg = replace(CFG, extra_sources=[{"path": "/x"}, SourceSpec("given", "/y")])
    assert [(s.name, s.language) for s in cfg.extra_sources] == [("user_0", "el"), ("given", None)]
    with pytest.raises(ConfigKeyError, match=r"'extra_sources\[0\].paht' \(did you mean 'path'\?\)"):
        replace(CFG, extra_sources=[{"name": "mine", "paht": "/x"}])


def _stage1_recipe(cfg: AddLanguageConfig, tmp_path: Path):
    sources = training_sources(cfg, tmp_path)
    tests = [SourceSpec("t", "/c", split="test", language="el")]
    overrides = stage1_overrides(cfg, tmp_path / "enc", sources, tests, tmp_path / "run")
    return load_recipe_config(load_recipe("ctc_tiny_en", overrides))


def test_old_layers_lr_scale_reaches_the_encoder_below_the_head_only(tmp_path):
    from granite_train.training.ctc_module import CTCPretrainModule

    cfg = replace(CFG, replay_share=0.5, stage1=replace(CFG.stage1, old_layers_lr_scale=0.25, lr=1e-3))
    recipe = _stage1_recipe(cfg, tmp_path)
    assert recipe.model.init == str(tmp_path / "enc") and recipe.trainer.max_steps == 40
    assert recipe.optim.lr == 1e-3 and recipe.data.train["alpha"] == 1.0
    assert recipe.optim.lr_scale == {k: 0.25 for k in OLD_LAYER_PARAMETERS}
    # the prefixes name every encoder weight except the CTC head and the self-conditioning projection
    module = CTCPretrainModule({"preset": "tiny", "encoder": {"num_layers": 2}}, recipe.optim, total_steps=10)
    names = [n for n, _ in module.named_parameters()]
    scaled = {n for n in names if n.startswith(OLD_LAYER_PARAMETERS)}
    assert set(names) - scaled == {"encoder.out.weight", "encoder.out.bias", "encoder.out_mid.weight",
                                   "encoder.out_mid.bias"}  # fmt: skip
    optimizer = module.configure_optimizers()
    optimizer = optimizer["optimizer"] if isinstance(optimizer, dict) else optimizer
    lrs = {id(p): g["lr"] for g in optimizer.param_groups for p in g["params"]}
    by_name = dict(module.named_parameters())
    old_layer, head = (
        lrs[id(by_name["encoder.layers.0.attn.to_q.weight"])],
        lrs[id(by_name["encoder.out.weight"])],
    )
    assert old_layer / head == pytest.approx(0.25)


def test_explicit_zeros_are_kept_or_refused_by_name(tmp_path):
    """``old_layers_lr_scale=0`` used to become 1.0 silently. An LR factor of 0 is not one the
    optimizer takes (> 0): it is refused, naming the value and the way to hold the layers still;
    the zeros that mean something (no replay, no head-only phase) reach the recipe as 0."""
    with pytest.raises(ValueError, match=r"stage1.old_layers_lr_scale must be > 0 .*got 0.*head_only_steps"):
        replace(CFG.stage1, old_layers_lr_scale=0)
    recipe = _stage1_recipe(
        replace(CFG, replay_share=0, stage1=replace(CFG.stage1, head_only_steps=0)), tmp_path
    )
    assert [s["name"] for s in recipe.data.train["sources"]] == ["new_el"]
    assert recipe.optim.start_step == {} and recipe.optim.lr_scale == {}
    held = _stage1_recipe(replace(CFG, stage1=replace(CFG.stage1, head_only_steps=40)), tmp_path)
    assert held.optim.start_step == {k: 40 for k in OLD_LAYER_PARAMETERS}


def test_stage_sections_are_typed_and_checked():
    required = {"language": "el", "encoder": "e", "old_corpus": "o", "reference": "r", "output_dir": "out"}
    cfg = from_mapping(AddLanguageConfig, {**required, "stage2": {"speech_llm": "s", "steps": 5}})
    assert cfg.stage2.speech_llm == "s" and cfg.stage2.steps == 5 and cfg.stage1.steps == 1500
    with pytest.raises(ConfigKeyError, match=r"'stage2.stpes' \(did you mean 'steps'\?\)"):
        from_mapping(AddLanguageConfig, {**required, "stage2": {"stpes": 5}})
    with pytest.raises(ValueError, match="new_symbol_init must be one of"):
        replace(cfg, new_symbol_init="copy")


def test_missing_texts_name_the_bundled_languages():
    with pytest.raises(FileNotFoundError, match=r"texts=FILE.*\bel\b.*\ben\b"):
        texts_path("xx")
    assert texts_path("el").name == "el.txt"


# --------------------------------------------------------------------------------------------------
# end to end (slow tier)
# --------------------------------------------------------------------------------------------------
def test_stage2_target_budget_covers_a_new_script_in_byte_tokens(tmp_path):
    """An English byte-level BPE has no Greek merges: a Greek letter is its two UTF-8 bytes, a
    space one byte token. The stage-2 budget is then counted in bytes, and a recipe budget below
    it is raised (unless the user set one)."""
    import pandas as pd

    from granite_train.data.prompts import PromptBuilder, PromptConfig
    from granite_train.models.tiny_llm import train_bpe_tokenizer

    tokenizer = train_bpe_tokenizer(["the cat sat on the mat", "a dog ran far away"] * 8, vocab_size=300)
    (tmp_path / "data").mkdir()
    greek = ["Καλημέρα, κόσμε!", "Η γάτα κάθεται.", "Ένα σκυλί τρέχει μακριά στο χωριό"]
    pd.DataFrame({"text": greek[:2]}).to_parquet(tmp_path / "data" / "train-00000.parquet")
    pd.DataFrame({"text": greek[2:]}).to_parquet(tmp_path / "data" / "train-00001.parquet")
    pd.DataFrame({"text": ["όχι"]}).to_parquet(tmp_path / "data" / "test-00000.parquet")
    texts = corpus_texts(tmp_path, "train")
    assert texts == greek
    # normalised: lower case, no punctuation; one leading space
    normalised = [" καλημέρα κόσμε", " η γάτα κάθεται", " ένα σκυλί τρέχει μακριά στο χωριό"]
    by_bytes = max(len(t.encode("utf-8")) for t in normalised)
    assert by_bytes == 6 + 2 * 28  # the leading space and 5 between words, 28 letters
    longest = longest_target_tokens(tokenizer, texts, normalize=True)
    assert longest == by_bytes
    # as a budget: nothing truncated at `longest`, the longest sentence truncated one below it
    for limit, truncated in ((longest, [False] * 3), (longest - 1, [False, False, True])):
        builder = PromptBuilder(tokenizer, PromptConfig(normalize_targets=True, max_target_tokens=limit))
        assert [builder.target_ids({"text": t})[1] for t in texts] == truncated
    prompts = load_recipe_config(load_recipe("speech_llm_tiny_en")).prompts
    assert prompts.max_target_tokens == 128
    assert target_budget_override(prompts, [], 151) == "prompts.max_target_tokens=151"
    assert target_budget_override(prompts, [], 128) is None
    assert target_budget_override(prompts, ["prompts.max_target_tokens=100"], 151) is None
    # a recipe that leaves the budget to PromptConfig's default (256)
    finetune = load_recipe("speech_llm_finetune", ["data.train.sources=[{name: el, path: /c}]"])
    assert target_budget_override(load_recipe_config(finetune).prompts, [], 151) is None
    with pytest.raises(FileNotFoundError, match="no dev parquet files"):
        corpus_texts(tmp_path, "dev")


def _tiny_models(root: Path) -> tuple[Path, Path]:
    """A tiny English encoder export and a speech LLM built on the same encoder."""
    from granite_train.models.encoder import CTCEncoder, encoder_config
    from granite_train.models.export import export_hf_encoder
    from granite_train.models.speech_export import export_speech_llm
    from granite_train.models.speech_llm import assemble_speech_llm
    from granite_train.models.tiny_llm import build_tiny_llm

    torch.manual_seed(0)  # the architecture of the recipe that stage 1 continues (ctc_tiny_en)
    encoder = CTCEncoder(encoder_config("tiny", **load_recipe("ctc_tiny_en")["model"]["encoder"])).eval()
    encoder_dir = export_hf_encoder(encoder, root / "encoder_en")
    words = "alpha bravo charlie delta echo foxtrot golf hotel".split()
    llm = build_tiny_llm(root / "llm", [" ".join(words[i:] + words[:i]) for i in range(8)] * 4,
                         preset="micro", vocab_size=300)  # fmt: skip
    projector = dict(preset="tiny", hidden_size=32, num_attention_heads=2, intermediate_size=64)
    speech = export_speech_llm(assemble_speech_llm(encoder, llm, projector=projector), root / "speech_en")
    return encoder_dir, speech


def old_test_hypotheses(corpus: Path, tmp_path: Path, *models: Path) -> list[list[str]]:
    """Each model's greedy CTC hypotheses on ``corpus``'s test split (also test_add_language_turboctc)."""
    from granite_train.eval.run import run_eval

    old_test = [{"name": "old", "path": str(corpus), "split": "test", "language": "en"}]
    out = []
    for k, model in enumerate(models):
        run_eval(model, old_test, tmp_path / f"eval_{k}", {"write_hypotheses": True, "progress": False})
        rows = (tmp_path / f"eval_{k}" / "hypotheses.jsonl").read_text().splitlines()
        out.append([json.loads(r)["hypothesis"] for r in rows])
    return out


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng not installed")
def test_add_language_end_to_end_then_resume(tmp_path):
    from granite_train.models.export import load_encoder, read_ctc_vocab

    encoder, speech = _tiny_models(tmp_path)
    old = tmp_path / "old"
    make_corpus(old, "train", n=16, durations=(2.0, 4.0), seed=1)  # batched like the Greek
    make_corpus(old, "test", n=6, num_shards=1, durations=(0.5, 1.2), seed=2)
    greek = (ROOT / "data_prep" / "texts" / "el.txt").read_text().splitlines()[:24]
    (tmp_path / "el.txt").write_text("\n".join(greek) + "\n")
    out = tmp_path / "add_el"
    tiny = TINY_TRAINING
    # stage 1 rejects (and counts) any utterance with a character its vocabulary cannot write
    stage1 = [*tiny, "data.train.oov_policy=reject"]
    stage2 = [*tiny, "model.lora={rank: 4, alpha: 4}", "data.train.max_frames=1200"]
    argv = [sys.executable, "-m", "granite_train.cli", "add-language", "language=el", f"texts={tmp_path / 'el.txt'}",
            f"encoder={encoder}", f"old_corpus={old}", "test_fraction=0.25", "num_workers=1", "replay_share=0.5",
            "stage1.steps=6", f"stage1.overrides={json.dumps(stage1)}", f"stage2.speech_llm={speech}",
            "stage2.steps=2", f"stage2.overrides={json.dumps(stage2)}", "coverage=1.0", f"output_dir={out}"]  # fmt: skip
    run = subprocess.run(argv, capture_output=True, text=True, timeout=1200, cwd=ROOT)
    assert run.returncode == 0, run.stderr[-4000:]

    # report: every Greek letter of the sample is outside the base vocabulary and recommended
    report = json.loads((out / "report" / "done.json").read_text())
    letters = {c for line in greek for c in line.lower() if c.isalpha()}
    assert set(report["symbols"]) == letters and report["oov_share"] > 0.5
    # extend: the table beside config.json lists the base ids, then the new letters
    extended = out / "extend" / "encoder_hf"
    vocab = read_ctc_vocab(extended)
    assert len(vocab) == 348 + len(letters) and set(vocab.extra_symbols) == letters
    config = json.loads((extended / "config.json").read_text())
    assert config["output_dim"] == len(vocab)
    # ... and decodes the old language exactly as the original encoder does
    original, grown = old_test_hypotheses(old, tmp_path, encoder, extended)
    assert original == grown and len(original) == 6
    # data: the Greek corpus with a disjoint test split
    data = json.loads((out / "data" / "done.json").read_text())
    assert data["examples"]["train"] + data["examples"]["test"] == 24 and data["examples"]["test"] > 0
    # stage 1: trained on both languages, no Greek letter dropped from a target, the table exported
    summary = json.loads((out / "stage1" / "summary.json").read_text())
    counters = summary["counters"]
    assert counters["seen/new_el"] > 0 and counters["seen/replay"] > 0
    assert counters.get("skipped/oov_text", 0) == 0, counters
    stage1 = load_encoder(out / "stage1" / "encoder_hf")
    assert stage1.extra_symbols == vocab.extra_symbols
    # stage 2: its target budget fits the longest Greek transcript, counted here in UTF-8 bytes (the
    # English BPE has no Greek merges; speech_llm_finetune keeps case and punctuation), and the
    # speech LLM continued on the new encoder carries its table
    import yaml

    corpus_dir = Path(data["corpus"])
    by_bytes = max(len((" " + t.strip()).encode()) for t in corpus_texts(corpus_dir, "train"))
    stage2_record = json.loads((out / "stage2" / "done.json").read_text())
    assert stage2_record["longest_target_tokens"] == by_bytes
    stage2_config = yaml.safe_load((out / "stage2" / "config.yaml").read_text())
    assert stage2_config["prompts"]["max_target_tokens"] == max(256, by_bytes)
    speech_after = out / "stage2" / "speech_llm_hf"
    assert read_ctc_vocab(speech_after).extra_symbols == vocab.extra_symbols
    assert json.loads((speech_after / "config.json").read_text())["encoder_config"]["output_dim"] == len(
        vocab
    )
    # eval: old and new test sets, before and after, for both models
    results = json.loads((out / "results.json").read_text())
    pairs = {(r["model"], r["test set"]) for r in results["rows"]}
    assert pairs == {
        (m, t) for m in ("encoder (greedy CTC)", "speech LLM") for t in ("old_en_test", "new_el_test")
    }
    assert "| encoder (greedy CTC) | new_el_test |" in (out / "results.md").read_text()

    # resume: every step is skipped; a removed step runs again and only it
    again = subprocess.run(argv, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert again.returncode == 0, again.stderr[-3000:]
    for step in ("report", "extend", "data", "stage1", "stage2", "eval"):
        assert f"[add-language] {step}: done before, skipped" in again.stdout
    (out / "eval" / "done.json").unlink()
    third = subprocess.run(argv, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert third.returncode == 0 and "[add-language] eval ..." in third.stdout
    assert "[add-language] stage1: done before, skipped" in third.stdout


def test_a_mostly_skipped_audio_ctc_loss_is_reported():
    """Greek in an English byte-level BPE: ~98 target tokens against ~45 audio tokens (10 per
    second), so the audio-token CTC cannot align half of the examples (the Greek ones)."""
    from granite_train.training.run import audio_ctc_warning

    warning = audio_ctc_warning({"utterances": 25589, "skipped/audio_ctc_too_short": 12692})
    assert warning is not None and "left out 12692 of 25589 utterances (49.6%)" in warning
    assert audio_ctc_warning({"utterances": 25589, "skipped/audio_ctc_too_short": 6000}) is None  # 23%
    assert audio_ctc_warning({"utterances": 0}) is None


def test_an_unusable_extra_source_stops_before_stage_1(tmp_path):
    """A user's extra_sources manifest whose transcripts sit in another column: a DataError naming the
    fix, from the check that runs before the stage-1 model is built; good sources pass with a report."""
    import soundfile as sf

    from granite_train.add_language import check_training_sources
    from granite_train.data.errors import DataError
    from granite_train.data.sources import SourceSpec
    from granite_train.recipes import load_recipe
    from tests.corpus import speechlike

    for k in range(3):
        sf.write(tmp_path / f"c{k}.wav", speechlike(1.0, seed=k), 16000)
    (tmp_path / "bad.csv").write_text(
        "audio,sentence\n" + "".join(f"c{k}.wav,good morning\n" for k in range(3))
    )
    (tmp_path / "good.csv").write_text("audio,text\n" + "".join(f"c{k}.wav,good morning\n" for k in range(3)))
    recipe = load_recipe("ctc_tiny_en", [])
    good = SourceSpec("el_extra", str(tmp_path / "good.csv"), id_column=None)
    assert "| el_extra | 3 | 3 |" in check_training_sources([good], recipe)
    bad = SourceSpec("el_calls", str(tmp_path / "bad.csv"), id_column=None)
    with pytest.raises(DataError, match="(?s)source 'el_calls'.*no_text: 3.*set text_column=sentence"):
        check_training_sources([good, bad], recipe)
