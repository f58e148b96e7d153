"""A released stand-in whose LLM is real: a Llama GGUF file through ``granite-train import-llm``,
a tiny random encoder + Q-Former on it, exported merged in the granite-4.0-1b-speech layout; then
the downstream commands run on it, each through the real CLI (``finetune``, ``eval`` with
``decoding=speculative`` and with ``probes=true``, ``add-language``).

The GGUF file is tests/test_import_llm.py's tiny Llama (byte-level BPE in its metadata, written here
with the ``gguf`` package: nothing downloaded). Every model is random: the commands must run and
write their reports; no accuracy is expected.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

pytest.importorskip("gguf", reason="the gguf package writes the tiny GGUF file (pip install gguf)")

from tests.corpus import audio_bytes, make_corpus, speechlike, write_parquet  # noqa: E402
from tests.test_add_language import TINY_TRAINING  # noqa: E402
from tests.test_finetune import _audio  # noqa: E402  (18 clips, speakers alice / bob / carol)
from tests.test_import_llm import write_tiny_gguf  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
_SCRIPT = Path(sys.executable).with_name("granite-train")  # the console script of this venv
CLI = [str(_SCRIPT)] if _SCRIPT.is_file() else [sys.executable, "-m", "granite_train.cli"]
# text_config keys that decide what the LLM computes (and which tokens it has)
LLM_KEYS = (
    "hidden_size", "num_hidden_layers", "vocab_size", "rope_theta", "attention_multiplier", "intermediate_size",
    "num_attention_heads", "num_key_value_heads", "rms_norm_eps", "tie_word_embeddings", "embedding_multiplier",
    "residual_multiplier", "logits_scaling", "bos_token_id", "eos_token_id", "pad_token_id",
)  # fmt: skip
SECONDS = (0.9, 1.6, 1.2)  # the eval set's utterances
MAX_NEW = 4


def run_cli(*args: str) -> subprocess.CompletedProcess:
    done = subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert done.returncode == 0, f"granite-train {args[0]} failed:\n{done.stderr[-4000:]}"
    return done


@pytest.fixture(scope="module")
def stand_in(tmp_path_factory) -> dict[str, Path]:
    """The GGUF file, its ``import-llm`` folder and the released stand-in assembled on it."""
    from granite_train.models.tiny_release import build_tiny_released_model

    root = tmp_path_factory.mktemp("released_imported")
    gguf_file = root / "tiny.gguf"
    write_tiny_gguf(gguf_file)
    run_cli("import-llm", f"src={gguf_file}", f"out={root / 'llm'}", f"hydra.run.dir={root / 'hydra'}")
    released = build_tiny_released_model(root, llm=root / "llm")
    return {"root": root, "gguf": gguf_file, "llm": root / "llm", "released": released}


@pytest.fixture(scope="module")
def eval_set(stand_in) -> Path:
    folder = stand_in["root"] / "eval_set"
    rows = [
        {"id": f"u{k}", "audio": {"bytes": audio_bytes(speechlike(s, seed=k)), "path": None},
         "text": "the cat sat", "language": "en"}
        for k, s in enumerate(SECONDS)
    ]  # fmt: skip
    write_parquet(folder / "test-00000.parquet", rows)
    return folder


def _config(folder: Path) -> dict:
    return json.loads((folder / "config.json").read_text())


def _vocab(folder: Path) -> dict[str, int]:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(folder)).get_vocab()


def _assert_llm_config(text_config: dict, llm_config: dict) -> None:
    assert text_config["model_type"] == "granite"
    differ = {k: (text_config.get(k), llm_config[k]) for k in LLM_KEYS if text_config.get(k) != llm_config[k]}
    assert not differ, f"text_config differs from the imported LLM (exported, imported): {differ}"
    assert text_config["rope_parameters"] == llm_config["rope_parameters"]


def _llm_state(folder: Path) -> dict[str, torch.Tensor]:
    """The LLM tensors of a speech folder, under the LLM folder's own key names. transformers 5
    writes ``model.language_model.*`` (the 4.x checkpoints on the hub: ``language_model.model.*``)."""
    out = {}
    for key, value in load_file(str(folder / "model.safetensors")).items():
        for prefix, to in (("model.language_model.", "model."), ("language_model.model.", "model."),
                           ("language_model.lm_head.", "lm_head."), ("lm_head.", "lm_head.")):  # fmt: skip
            if key.startswith(prefix):
                out[to + key[len(prefix) :]] = value
                break
        else:
            assert key.startswith(("model.encoder.", "model.projector.", "encoder.", "projector.")), key
    return out


# --------------------------------------------------------------------------------------------------
# the stand-in itself
# --------------------------------------------------------------------------------------------------
def test_exported_config_is_the_imported_llms(stand_in):
    from granite_train.speech_format import AUDIO_TOKEN

    config, llm_config = _config(stand_in["released"]), _config(stand_in["llm"])
    assert config["model_type"] == "granite_speech" and config["has_lora_adapter"] is False
    assert not (stand_in["released"] / "adapter_config.json").exists()
    _assert_llm_config(config["text_config"], llm_config)
    assert llm_config["hidden_size"] == 64 and llm_config["num_hidden_layers"] == 2  # the GGUF's Llama
    assert llm_config["rope_theta"] == 1e5 and llm_config["attention_multiplier"] == pytest.approx(0.25)
    vocab = _vocab(stand_in["llm"])
    assert _vocab(stand_in["released"]) == vocab  # the imported tokenizer, <|audio|> included
    assert config["audio_token_index"] == vocab[AUDIO_TOKEN] == llm_config["vocab_size"] - 1


def test_exported_llm_weights_are_the_imported_ones(stand_in):
    exported = _llm_state(stand_in["released"])
    imported = load_file(str(stand_in["llm"] / "model.safetensors"))
    assert set(exported) == set(imported) and len(imported) == 2 + 9 * 2  # embed, norm, 9 per layer
    assert "lm_head.weight" not in imported  # tied, in both
    for key, value in imported.items():
        assert exported[key].dtype == value.dtype and torch.equal(exported[key], value), key


# --------------------------------------------------------------------------------------------------
# the downstream commands on it
# --------------------------------------------------------------------------------------------------
def test_finetune_runs_and_reports_before_after(stand_in, tmp_path):
    out = tmp_path / "ft"
    run_cli(
        "finetune", f"model={stand_in['released']}", f"data={_audio(tmp_path)}", "holdout_speakers=[carol]",
        "steps=2", "max_frames=300", f"max_new_tokens={MAX_NEW}", "trains=llm", f"output_dir={out}",
        'overrides=["data.num_workers=0","trainer.precision=32-true"]',
    )  # fmt: skip
    results = json.loads((out / "results.json").read_text())
    assert results["steps"] == 2
    (row,) = results["results"]
    assert row["test set"] == "heldout" and row["utterances"] == 6  # carol, all of her
    table = (out / "results.md").read_text()
    assert "| test set | utterances | WER before % | WER after % |" in table and "| heldout | 6 |" in table
    export = out / "train" / "speech_llm_hf"
    config = _config(export)
    assert config["has_lora_adapter"] is False
    _assert_llm_config(config["text_config"], _config(stand_in["llm"]))
    assert _vocab(export) == _vocab(stand_in["llm"])
    # trains=llm: the imported LLM's weights are what trained
    before, after = _llm_state(stand_in["released"]), _llm_state(export)
    assert set(after) == set(before) and any(not torch.equal(after[k], before[k]) for k in before)


def _eval(stand_in, eval_set, out: Path, *extra: str):
    from granite_train.eval.report import read_results_json

    run_cli(
        "eval", f"model_path={stand_in['released']}", "device=cpu", f"max_new_tokens={MAX_NEW}",
        f"datasets=[{{name: mini, path: '{eval_set}', split: test, language: en}}]",
        f"output_dir={out}", f"hydra.run.dir={out / 'hydra'}", *extra,
    )  # fmt: skip
    hypotheses = [json.loads(line) for line in (out / "hypotheses.jsonl").read_text().splitlines()]
    return read_results_json(out / "results.json"), hypotheses, (out / "results.md").read_text()


def test_eval_speculative_runs(stand_in, eval_set, tmp_path):
    (result,), hypotheses, markdown = _eval(stand_in, eval_set, tmp_path / "eval", "decoding=speculative")
    assert result.name == "mini" and result.num_utts == len(SECONDS)
    assert result.details["decoding"].startswith("speculative(")
    paths = result.details["paths"]
    assert set(paths) <= {"ctc", "verified", "fallback"} and sum(paths.values()) == len(SECONDS), paths
    assert len(hypotheses) == len(SECONDS) and "| mini | asr | 3 |" in markdown


def test_eval_probes_runs(stand_in, eval_set, tmp_path):
    results, hypotheses, markdown = _eval(stand_in, eval_set, tmp_path / "eval", "probes=true")
    assert [r.name for r in results] == ["mini", "hallucination_probes"]
    probes = results[1].details["probes"]
    clips = {k: v["clips"] for k, v in probes.items()}
    assert clips["silence"] == 3 and clips["noise"] == 6
    assert ("word" in clips) == (shutil.which("espeak-ng") is not None)  # spoken with espeak-ng
    assert len(hypotheses) == len(SECONDS) + sum(clips.values())
    assert "Hallucination probes" in markdown


@pytest.mark.skipif(
    shutil.which("espeak-ng") is None, reason="espeak-ng not installed (add-language speaks el)"
)
def test_add_language_runs(stand_in, tmp_path):
    """The stand-in is both the encoder to extend and the speech LLM to continue. The stage-1 recipe
    (ctc_tiny_en) names another encoder architecture (4 x 128): add-language takes the stand-in's
    own (2 x 64) without being told."""
    from granite_train.models.export import read_ctc_vocab

    released = stand_in["released"]
    encoder_config = _config(released)["encoder_config"]
    old = tmp_path / "old"
    make_corpus(old, "train", n=4, durations=(1.0, 2.0), seed=1)
    make_corpus(old, "test", n=2, num_shards=1, durations=(0.5, 1.0), seed=2)
    greek = (ROOT / "data_prep" / "texts" / "el.txt").read_text().splitlines()[:8]
    (tmp_path / "el.txt").write_text("\n".join(greek) + "\n")
    tiny = TINY_TRAINING
    stage1 = [*tiny, "data.train.oov_policy=reject"]
    stage2 = [*tiny, "model.lora={rank: 4, alpha: 4}"]
    out = tmp_path / "add_el"
    run_cli(
        "add-language", "language=el", f"texts={tmp_path / 'el.txt'}", f"encoder={released}", f"old_corpus={old}",
        "test_fraction=0.25", "num_workers=1", "replay_share=0.5", "coverage=1.0", f"output_dir={out}",
        "stage1.steps=1", f"stage1.overrides={json.dumps(stage1)}",
        f"stage2.speech_llm={released}", "stage2.steps=1", f"stage2.overrides={json.dumps(stage2)}",
    )  # fmt: skip
    added = json.loads((out / "extend" / "done.json").read_text())["added"]
    letters = {c for line in greek for c in line.lower() if c.isalpha()}
    assert set(added) == letters
    # stage 2: the stand-in continued on the grown encoder, the imported LLM under it still
    speech_after = out / "stage2" / "speech_llm_hf"
    config = _config(speech_after)
    assert config["encoder_config"]["output_dim"] == 348 + len(added)
    for key in ("num_layers", "hidden_dim", "num_heads", "dim_head"):  # the stand-in's, not the recipe's
        assert config["encoder_config"][key] == encoder_config[key]
    assert (encoder_config["num_layers"], encoder_config["hidden_dim"]) == (2, 64)
    assert read_ctc_vocab(speech_after).extra_symbols == tuple(added)
    _assert_llm_config(config["text_config"], _config(stand_in["llm"]))
    assert config["has_lora_adapter"] is False and _vocab(speech_after) == _vocab(stand_in["llm"])
    results = json.loads((out / "results.json").read_text())
    assert {(r["model"], r["test set"]) for r in results["rows"]} == {
        (m, t) for m in ("encoder (greedy CTC)", "speech LLM") for t in ("old_en_test", "new_el_test")
    }
    assert "| speech LLM | new_el_test |" in (out / "results.md").read_text()
