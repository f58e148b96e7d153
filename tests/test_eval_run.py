"""Greedy-CTC evaluation over streamed test sets, and the eval / export commands end to end."""

from __future__ import annotations

import importlib.metadata
import json
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from torch import nn
from transformers import GraniteSpeechCTCEncoder

from granite_train.audio.features import LogMelFeatures
from granite_train.cli import main
from granite_train.data.errors import DataError
from granite_train.eval.report import read_results_json
from granite_train.eval.run import EvalDataset, evaluate_ctc
from granite_train.models import CTCEncoder, encoder_config
from granite_train.recipes import CONFIG_DIR
from granite_train.text.vocab import CharVocab
from tests.corpus import audio_bytes, speechlike, write_parquet

VOCAB = CharVocab()

# (id, seconds, text, audio variant): durations at least 0.1 s (5 frames) apart, so that the oracle
# below can tell utterances apart by their frame count.
ROWS = [
    ("u0", 1.0, "Hello, World!", "plain"),
    ("u1", 0.15, "ab", "plain"),  # shorter than training's 0.2 s minimum: kept in eval
    ("u2", 1.4, "quiet one", "quiet"),  # under training's -60 dBFS silence floor: kept
    ("u3", 1.7, "resampled and downmixed", "8k_stereo"),  # repaired and counted, kept
    ("u4", 2.0, "", "plain"),  # empty reference: scored as insertions only
    ("u5", 2.3, "Café au lait", "plain"),
]
BAD = [
    ("bad_audio", 2.6, "never heard", "corrupt"),
    ("no_text", 2.9, None, "plain"),
]


def _audio(seconds: float, variant: str, seed: int) -> bytes:
    if variant == "corrupt":
        return b"definitely not audio"
    if variant == "8k_stereo":
        return audio_bytes(speechlike(seconds, sr=8000, seed=seed, channels=2), sr=8000)
    wave = speechlike(seconds, seed=seed)
    if variant == "quiet":
        wave = (wave * 10 ** (-45 / 20)).astype(np.float32)  # about -70 dBFS
    return audio_bytes(wave)


def write_test_set(root: Path, name: str, rows=ROWS + BAD, num_shards: int = 2, language: str = "en") -> Path:
    records = [
        {
            "id": i,
            "audio": {"bytes": _audio(sec, var, seed=k), "path": None},
            "text": text,
            "language": language,
        }
        for k, (i, sec, text, var) in enumerate(rows)
    ]
    for s in range(num_shards):
        write_parquet(root / name / f"test-{s:05d}.parquet", records[s::num_shards])
    return root / name


def _frames(seconds: float) -> int:
    return int(LogMelFeatures.num_frames(int(round(seconds * 16000))))


class OracleEncoder(nn.Module):
    """Emits logits whose greedy CTC path spells a transcript chosen by the utterance's length."""

    def __init__(self, rows=ROWS + BAD, corrupt=None):
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(()))  # something for .to(device)
        self.by_frames = {_frames(sec): text or "" for _, sec, text, _ in rows}
        self.corrupt = corrupt
        self.calls = 0

    def transcript(self, frames: int) -> str:
        text = self.by_frames[min(self.by_frames, key=lambda f: abs(f - frames))]
        return self.corrupt(text) if self.corrupt else text

    def forward(self, features: torch.Tensor, lengths: torch.Tensor):
        self.calls += 1
        bsz, num_frames, _ = features.shape  # (B, F, 160)
        logits = torch.zeros(bsz, num_frames, 348)
        logits[:, :, 0] = 1.0  # blank everywhere ...
        for b, n in enumerate(lengths.tolist()):
            ids = VOCAB.encode(self.transcript(n))
            assert 2 * len(ids) <= n, "test utterance too short for its text"
            for j, i in enumerate(ids):  # ... but one label every other frame
                logits[b, 2 * j, i] = 5.0
        return SimpleNamespace(logits=logits + self.anchor, lengths=lengths)


def _swap_letters(text: str) -> str:
    return text.replace("l", "x").replace("a", "e")


@pytest.fixture(scope="module")
def test_set(tmp_path_factory) -> Path:
    return write_test_set(tmp_path_factory.mktemp("corpus"), "mini")


def _spec(path: Path, **kw) -> dict:
    return {"name": "mini", "path": str(path), "split": "test", "language": "en", **kw}


# --------------------------------------------------------------------------------------------------
# evaluate_ctc
# --------------------------------------------------------------------------------------------------
def test_oracle_scores_zero_and_nothing_is_lost(test_set, tmp_path):
    hyps = tmp_path / "hyps.jsonl"
    (result,) = evaluate_ctc(OracleEncoder(), [_spec(test_set)], hypotheses_path=hyps, progress=False)
    assert result.cer == 0.0 and result.wer == 0.0
    assert result.num_utts == len(ROWS)  # every scorable row, the training filters' victims included
    d = result.details
    assert d["skipped"] == {"decode_error": 1, "no_text": 1}
    assert d["records"] == len(ROWS) + len(BAD) == result.num_utts + sum(d["skipped"].values())
    assert d["repaired"] == {"fixed_downmixed": 1, "fixed_resampled": 1}
    assert d["num_empty_refs"] == 1 and d["language"] == "en" and d["reference"] == "text"
    assert result.normalizer == "whisper_english"
    assert result.normalizer_version == importlib.metadata.version("whisper-normalizer")
    assert result.rtfx is not None and result.rtfx > 0
    expected_seconds = sum(round(sec * 16000) / 16000 for _, sec, _, _ in ROWS)
    assert result.audio_seconds == pytest.approx(expected_seconds, abs=1e-3)

    lines = [json.loads(line) for line in hyps.read_text().splitlines()]
    assert [r["id"] for r in lines] == sorted(f"mini/{i}" for i, *_ in ROWS)
    by_id = {r["id"]: r for r in lines}
    assert by_id["mini/u0"]["reference"] == "Hello, World!" == by_id["mini/u0"]["hypothesis"]
    assert by_id["mini/u5"]["hypothesis"] == "Café au lait"


def test_perturbed_model_scores_above_zero_and_reports(test_set, tmp_path):
    from granite_train.eval.report import results_to_markdown, write_results_json

    (oracle,) = evaluate_ctc(
        OracleEncoder(), [_spec(test_set, name="oracle")], normalizer="none", progress=False
    )
    (worse,) = evaluate_ctc(
        OracleEncoder(corrupt=_swap_letters),
        [_spec(test_set, name="worse")],
        normalizer="none",
        progress=False,
    )
    assert oracle.cer == 0.0
    assert worse.cer > 0 and worse.wer > 0
    assert worse.details["char_substitutions"] > 0
    assert worse.normalizer == "none" and worse.normalizer_version is None

    path = write_results_json([oracle, worse], tmp_path / "results.json")
    back = read_results_json(path)
    assert [r.name for r in back] == ["oracle", "worse"] and back[1].cer == worse.cer
    raw = json.loads(path.read_text())["results"]
    assert raw[0]["rtfx"] > 0 and raw[0]["details"]["skipped"] == {"decode_error": 1, "no_text": 1}
    table = results_to_markdown(back)
    assert "| oracle | 6 | 0.00 | 0.00 |" in table
    assert f"| worse | 6 | {100 * worse.wer:.2f} | {100 * worse.cer:.2f} |" in table


def test_references_are_the_original_text_not_the_ctc_targets(tmp_path):
    rows = [("e0", 1.0, "Price: 5 €, ok", "plain"), ("e1", 1.5, "naïve café", "plain")]
    path = write_test_set(tmp_path, "oov", rows, num_shards=1)
    model = OracleEncoder(rows)  # spells what the vocabulary can: "€" is out of it
    text, target = evaluate_ctc(
        model,
        [
            _spec(path, name="text", normalizer="none"),
            _spec(path, name="target", normalizer="none", reference="ctc_target"),
        ],
        progress=False,
    )
    assert text.cer > 0  # the original transcript keeps the euro sign the model cannot write
    assert target.cer == 0.0 and target.details["reference"] == "ctc_target"


def test_skips_after_the_last_batch_are_counted_with_workers(tmp_path):
    rows = ROWS[:2] + [("z_bad1", 3.0, "x", "corrupt"), ("z_bad2", 3.3, "y", "corrupt")]
    path = write_test_set(tmp_path, "tail", rows, num_shards=2)
    for workers in (0, 2):
        (r,) = evaluate_ctc(OracleEncoder(rows), [_spec(path)], num_workers=workers, progress=False)
        assert r.num_utts == 2 and r.details["skipped"] == {"decode_error": 2}, workers
        assert r.details["records"] == 4


def test_dataset_that_cannot_be_scored_at_all(tmp_path):
    rows = [("b0", 1.0, "x", "corrupt")]
    path = write_test_set(tmp_path, "allbad", rows, num_shards=1)
    # nothing to score is an error naming the reason and the row, not an empty result
    with pytest.raises(
        DataError, match=r"(?s)a full pass over its 1 record\(s\).*decode_error: 1 \(e.g. .*b0"
    ):
        evaluate_ctc(OracleEncoder(rows), [_spec(path)], progress=False)


def test_too_long_is_skipped_and_counted(test_set):
    (r,) = evaluate_ctc(OracleEncoder(), [_spec(test_set)], max_duration=1.5, progress=False)
    # u3, u4, u5 and the text-less row; bad_audio fails decoding first
    assert r.details["skipped"] == {"too_long": 4, "decode_error": 1}
    assert r.num_utts == 3


def test_auto_normalizer_and_bad_arguments(test_set):
    (r,) = evaluate_ctc(OracleEncoder(), [_spec(test_set, language="fr")], normalizer="auto", progress=False)
    assert r.normalizer == "basic" and r.details["language"] == "fr"
    with pytest.raises(ValueError, match="unknown field"):
        EvalDataset.from_mapping({"name": "x", "path": "y", "normaliser": "none"})
    with pytest.raises(ValueError, match="normalizer"):
        evaluate_ctc(OracleEncoder(), [_spec(test_set)], normalizer="nope")
    with pytest.raises(ValueError, match="dtype"):
        evaluate_ctc(OracleEncoder(), [_spec(test_set)], dtype="int8")
    with pytest.raises(ValueError, match="unique"):
        evaluate_ctc(OracleEncoder(), [_spec(test_set), _spec(test_set)])


def test_real_encoder_bf16_autocast_and_device_features(test_set):
    torch.manual_seed(0)
    encoder = CTCEncoder(encoder_config("tiny"))  # in training mode
    modes = []
    encoder.register_forward_pre_hook(lambda module, args: modes.append(module.training))
    (r,) = evaluate_ctc(encoder, [_spec(test_set)], dtype="bfloat16", features_on_device=True, progress=False)
    assert r.num_utts == len(ROWS) and r.cer is not None and r.cer > 0
    assert modes and not any(modes)  # decoded in eval mode ...
    assert encoder.training and r.details["dtype"] == "bfloat16"  # ... and the mode is restored


# --------------------------------------------------------------------------------------------------
# configs and the command line
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("name", "overrides"), [("eval", ["model_path=m"]), ("export", ["checkpoint=c.ckpt"])]
)
def test_configs_compose(name, overrides):
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(config_name=name, overrides=overrides)
    OmegaConf.resolve(cfg)
    if name == "eval":
        (ds,) = cfg.datasets
        assert ds.split == "test" and ds.path.endswith("/corpus/en")
        EvalDataset.from_mapping(OmegaConf.to_container(ds))
        assert cfg.output_dir is None and cfg.normalizer == "whisper_english"
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        missing = compose(config_name=name)
    assert OmegaConf.is_missing(missing, "model_path" if name == "eval" else "checkpoint")


def _cli(monkeypatch, *args: str) -> None:
    monkeypatch.setattr(sys, "argv", list(sys.argv))  # main() rewrites sys.argv for Hydra
    main(list(args))


def test_cli_export_then_eval(test_set, tmp_path, monkeypatch, capsys):
    torch.manual_seed(1)
    encoder = CTCEncoder(encoder_config("tiny")).eval()
    ckpt = tmp_path / "step=10.ckpt"
    torch.save(
        {
            "state_dict": {f"encoder.{k}": v for k, v in encoder.state_dict().items()},
            "encoder_config": encoder.config.to_dict(),
            "global_step": 10,
        },
        ckpt,
    )
    exported = tmp_path / "encoder-hf"
    _cli(
        monkeypatch,
        "export",
        f"checkpoint='{ckpt}'",
        f"output_dir={exported}",
        f"hydra.run.dir={tmp_path / 'hydra_export'}",
    )
    assert f"exported encoder to {exported}" in capsys.readouterr().out
    assert (exported / "model.safetensors").is_file()
    GraniteSpeechCTCEncoder.from_pretrained(exported)

    out = tmp_path / "eval"
    datasets = f"[{{name: mini, path: '{test_set}', split: test, language: en}}]"
    _cli(
        monkeypatch,
        "eval",
        f"model_path={exported}",
        f"datasets={datasets}",
        "device=cpu",
        f"output_dir={out}",
        f"hydra.run.dir={tmp_path / 'hydra_eval'}",
    )
    printed = capsys.readouterr().out
    assert "| dataset | utts | WER % | CER % | RTFx | normalizer |" in printed and "| mini | 6 |" in printed
    (result,) = read_results_json(out / "results.json")
    assert result.num_utts == len(ROWS) and result.rtfx > 0 and result.details["model"] == str(exported)
    md = (out / "results.md").read_text()
    assert "| mini | 6 |" in md and "decode_error" in md
    lines = (out / "hypotheses.jsonl").read_text().splitlines()
    assert len(lines) == len(ROWS) and {"reference", "hypothesis"} <= json.loads(lines[0]).keys()

    # the training checkpoint itself evaluates to the same numbers
    out2 = tmp_path / "eval_ckpt"
    _cli(
        monkeypatch,
        "eval",
        f"model_path='{ckpt}'",
        f"datasets={datasets}",
        "device=cpu",
        "hypotheses=false",
        f"output_dir={out2}",
        f"hydra.run.dir={tmp_path / 'hydra_eval2'}",
    )
    (again,) = read_results_json(out2 / "results.json")
    assert (again.wer, again.cer) == (result.wer, result.cer)
    assert not (out2 / "hypotheses.jsonl").exists()


@pytest.mark.gpu
def test_cuda_matches_cpu(test_set):
    torch.manual_seed(0)
    encoder = CTCEncoder(encoder_config("tiny"))
    (cpu,) = evaluate_ctc(encoder, [_spec(test_set)], device="cpu", progress=False)
    (gpu,) = evaluate_ctc(encoder, [_spec(test_set)], device="cuda", progress=False)
    (bf16,) = evaluate_ctc(encoder, [_spec(test_set)], device="cuda", dtype="bfloat16", progress=False)
    assert gpu.details["device"].startswith("cuda") and gpu.rtfx > 0
    assert cpu.num_utts == gpu.num_utts == bf16.num_utts == len(ROWS)
    assert gpu.cer == pytest.approx(cpu.cer, abs=0.02)  # features on the GPU, fp32: near-ties only
    assert bf16.cer is not None
