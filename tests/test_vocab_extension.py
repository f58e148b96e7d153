"""A new language's CTC symbols: the vocabulary, the head surgery, and the symbol table that travels
with checkpoints and exports to evaluation, training targets and plain transformers."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file
from transformers.models.granite_speech.configuration_granite_speech import GraniteSpeechEncoderConfig
from transformers.models.granite_speech.modeling_granite_speech import GraniteSpeechCTCEncoder

from granite_train.eval.ctc_decode import greedy_ctc_decode
from granite_train.eval.run import evaluate_ctc
from granite_train.models import CTCEncoder, encoder_config
from granite_train.models.config import CTCModelConfig
from granite_train.models.export import (
    CTC_VOCAB_NAME,
    EncoderLoadError,
    export_checkpoint,
    export_hf_encoder,
    load_encoder,
)
from granite_train.models.vocab_surgery import extend_ctc_vocab, extend_encoder_folder
from granite_train.text.vocab import VOCAB_SIZE, CharVocab
from tests.corpus import audio_bytes, speechlike, write_parquet

GREEK = list("αβγδεζηθικλμνξοπρστυφχψωάέήίόύώ")
SMALL = dict(num_layers=2, hidden_dim=64, num_heads=2, dim_head=32, conv_kernel_size=5)
ROOT = Path(__file__).resolve().parents[1]


def _randomize_bn(model: torch.nn.Module) -> None:
    g = torch.Generator().manual_seed(1)
    for mod in model.modules():
        if isinstance(mod, torch.nn.BatchNorm1d):
            mod.running_mean.copy_(torch.randn(mod.running_mean.shape, generator=g) * 0.5)
            mod.running_var.copy_(torch.rand(mod.running_var.shape, generator=g) * 2 + 0.2)


@pytest.fixture(scope="module")
def base() -> CTCEncoder:
    torch.manual_seed(0)
    encoder = CTCEncoder(encoder_config("tiny", **SMALL)).eval()
    _randomize_bn(encoder)
    with torch.no_grad():  # a head whose argmax varies over frames and classes (not all blank)
        encoder.out.weight.mul_(8.0)
    return encoder


@pytest.fixture(scope="module")
def features() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    return torch.randn(3, 90, 160, generator=g), torch.tensor([90, 61, 17])


# --------------------------------------------------------------------------------------------------
# the vocabulary
# --------------------------------------------------------------------------------------------------
def test_extra_symbols_follow_the_base_ids():
    base, vocab = CharVocab(), CharVocab(extra_symbols=GREEK[:3])
    assert len(base) == VOCAB_SIZE == 348 and len(vocab) == 351
    assert vocab.symbols[:VOCAB_SIZE] == base.symbols  # every old id unchanged
    assert [vocab.char_to_id(c) for c in "αβγ"] == [348, 349, 350]
    assert vocab.encode("aβ ア") == [97, 349, 32, base.char_to_id("ア")]
    assert vocab.ctc_greedy_decode([0, 348, 348, 0, 348, 97, 350]) == "ααaγ"
    assert base.encode("αβγ") == [] and base.oov_counts == {"α": 1, "β": 1, "γ": 1}
    with pytest.raises(ValueError, match="out of range"):
        base.decode([348])
    assert "extra_symbols='αβγ'" in repr(vocab)


@pytest.mark.parametrize(
    "symbols, message",
    [
        (["a"], "already in the base vocabulary"),
        (["α", "α"], "listed twice"),
        (["αβ"], "one character"),
        ([""], "one character"),
        (["\u212b"], "not NFC-stable"),  # ANGSTROM SIGN: NFC makes it Å, which encode() would see
    ],
)
def test_bad_extra_symbols_are_named(symbols, message):
    with pytest.raises(ValueError, match=message):
        CharVocab(extra_symbols=symbols)


def test_extra_symbols_must_be_a_list_not_a_string():
    with pytest.raises(TypeError, match="list of characters"):
        CharVocab(extra_symbols="αβγ")


def test_symbol_table_round_trips_and_rejects_a_moved_base():
    vocab = CharVocab(extra_symbols=GREEK)
    table = json.loads(json.dumps(vocab.to_table()))  # JSON types only
    assert table["blank_id"] == 0 and table["size"] == len(table["symbols"]) == 348 + len(GREEK)
    assert table["symbols"][0] == "" and table["symbols"][97] == "a" and table["symbols"][348] == "α"
    back = CharVocab.from_table(table)
    assert back.symbols == vocab.symbols and back.extra_symbols == tuple(GREEK)

    moved = dict(table, symbols=["", "a", *table["symbols"][2:]])
    with pytest.raises(ValueError, match="id 1 is 'a'"):
        CharVocab.from_table(moved, "moved.json")
    with pytest.raises(ValueError, match="size is 3"):
        CharVocab.from_table(dict(table, size=3))
    with pytest.raises(ValueError, match="blank_id"):
        CharVocab.from_table(dict(table, blank_id=1))
    with pytest.raises(ValueError, match="fewer than"):
        CharVocab.from_table(dict(table, symbols=table["symbols"][:40], size=40))


# --------------------------------------------------------------------------------------------------
# the head surgery
# --------------------------------------------------------------------------------------------------
def test_extension_leaves_old_outputs_and_greedy_decoding_unchanged(base, features):
    x, lengths = features
    ext = extend_ctc_vocab(base, GREEK)
    assert base.config.output_dim == 348 and base.out.weight.shape == (348, 64)  # original untouched
    assert ext.config.output_dim == 348 + len(GREEK) and ext.extra_symbols == tuple(GREEK)
    size = 348 + len(GREEK)
    assert ext.out.weight.shape == (size, 64) and ext.out_mid.weight.shape == (64, size)
    assert not ext.training and ext.out.weight.requires_grad

    with torch.no_grad():
        old, new = base(x, lengths), ext(x, lengths)
    torch.testing.assert_close(new.logits[..., :348], old.logits)
    torch.testing.assert_close(new.mid_logits[..., :348], old.mid_logits)
    torch.testing.assert_close(new.last_hidden_state, old.last_hidden_state)
    torch.testing.assert_close(new.logits.log_softmax(-1)[..., :348], old.logits.log_softmax(-1))
    assert torch.equal(new.logits.argmax(-1), old.logits.argmax(-1))  # never a new id
    hyps_old = greedy_ctc_decode(old.logits, old.lengths, base.ctc_vocab())
    hyps_new = greedy_ctc_decode(new.logits, new.lengths, ext.ctc_vocab())
    assert hyps_new == hyps_old and any(len(h) > 3 for h in hyps_old)  # non-trivial transcripts


def test_a_bias_near_the_old_logits_would_change_them(base, features):
    """The equality above is not automatic: new rows at bias 0 take probability from the old classes."""
    x, lengths = features
    with torch.no_grad():
        old = base(x, lengths).logits.log_softmax(-1)
        new = extend_ctc_vocab(base, GREEK, new_logit_bias=0.0)(x, lengths).logits.log_softmax(-1)
    with pytest.raises(AssertionError, match="not close"):  # the check of the test above fails
        torch.testing.assert_close(new[..., :348], old)


def test_similar_symbols_by_base_letter_or_unicode_name():
    from granite_train.models.vocab_surgery import similar_symbol

    vocab = CharVocab()
    expected = {"α": "a", "θ": "t", "ς": "s", "ά": "a", "ΐ": "i", "ж": "z", "é": None, "ク": None, "€": None}
    # "é" and "ク" are in the base vocabulary already; "€" is no letter: nothing to copy
    got = {c: similar_symbol(c, vocab) for c in expected}
    assert {k: v for k, v in got.items() if k not in ("é", "ク")} == {
        k: v for k, v in expected.items() if k not in ("é", "ク")
    }
    assert similar_symbol("ά", CharVocab(extra_symbols=["α"])) == "α"  # the base letter first, when present


def test_similar_init_copies_a_look_alike_row_and_leaves_old_outputs_unchanged(base, features):
    x, lengths = features
    ext = extend_ctc_vocab(base, GREEK, init="similar")
    vocab = ext.ctc_vocab()
    a, alpha = vocab.char_to_id("a"), vocab.char_to_id("α")
    assert torch.equal(ext.out.weight[alpha], base.out.weight[a])
    assert float(ext.out.bias[alpha]) == pytest.approx(float(base.out.bias[a]) - 25.0)
    assert torch.equal(ext.out_mid.weight[:, 348:], torch.zeros(64, len(GREEK)))
    with torch.no_grad():
        old, new = base(x, lengths), ext(x, lengths)
    torch.testing.assert_close(new.logits.log_softmax(-1)[..., :348], old.logits.log_softmax(-1))
    torch.testing.assert_close(new.last_hidden_state, old.last_hidden_state)
    assert greedy_ctc_decode(new.logits, new.lengths, vocab) == greedy_ctc_decode(
        old.logits, old.lengths, base.ctc_vocab()
    )
    # the new logit follows its source letter, 25 below it, frame by frame
    torch.testing.assert_close(new.logits[..., alpha], old.logits[..., a] - 25.0)
    # a small margin would take probability from the old classes: the equality is not automatic
    close = extend_ctc_vocab(base, GREEK, init="similar", margin=1.0)
    with torch.no_grad(), pytest.raises(AssertionError, match="not close"):
        torch.testing.assert_close(
            close(x, lengths).logits.log_softmax(-1)[..., :348], old.logits.log_softmax(-1)
        )
    with pytest.raises(ValueError, match="init must be one of"):
        extend_ctc_vocab(base, GREEK, init="random")


def test_extension_refuses_symbols_it_has(base):
    with pytest.raises(ValueError, match=r"'a' \(id 97\)"):
        extend_ctc_vocab(base, ["α", "a"])
    twice = extend_ctc_vocab(base, ["α"])
    with pytest.raises(ValueError, match=r"'α' \(id 348\)"):
        extend_ctc_vocab(twice, ["α"])
    with pytest.raises(ValueError, match="no new symbols"):
        extend_ctc_vocab(base, [])
    assert extend_ctc_vocab(twice, ["β"]).extra_symbols == ("α", "β")  # ids 348, 349


def test_encoder_refuses_extra_symbols_that_do_not_fit_its_head():
    with pytest.raises(ValueError, match="output_dim is 348 .* 351 symbols"):
        CTCEncoder(encoder_config("tiny", **SMALL), extra_symbols=["α", "β", "γ"])


# --------------------------------------------------------------------------------------------------
# the symbol table with exports and checkpoints
# --------------------------------------------------------------------------------------------------
def test_export_carries_the_table_and_transformers_loads_it_strictly(base, features, tmp_path):
    x, _ = features
    ext = extend_ctc_vocab(base, GREEK)
    out = export_hf_encoder(ext, tmp_path / "el")
    config = json.loads((out / "config.json").read_text())
    table = json.loads((out / CTC_VOCAB_NAME).read_text(encoding="utf-8"))  # plain json
    assert config["output_dim"] == table["size"] == len(table["symbols"]) == 348 + len(GREEK)
    assert table["symbols"][348:] == GREEK and table["symbols"][65] == "A"
    assert "αβγ" in (out / "README.md").read_text()

    reference = GraniteSpeechCTCEncoder(GraniteSpeechEncoderConfig.from_pretrained(out)).eval()
    reference.load_state_dict(load_file(out / "model.safetensors"), strict=True)
    with torch.no_grad():
        ref_logits = reference.out(reference(x).last_hidden_state)
        ours = ext(x).logits
    torch.testing.assert_close(ref_logits, ours, rtol=1e-4, atol=1e-4)

    loaded = load_encoder(out)
    assert loaded.extra_symbols == tuple(GREEK) and loaded.config.output_dim == 348 + len(GREEK)
    assert loaded.ctc_vocab().decode([348, 0, 350]) == "αγ"
    with torch.no_grad():
        torch.testing.assert_close(loaded(x).logits, ours)


def test_a_head_larger_than_its_table_is_a_clear_error(base, tmp_path):
    out = export_hf_encoder(extend_ctc_vocab(base, GREEK[:11]), tmp_path / "el")
    table = json.loads((out / CTC_VOCAB_NAME).read_text(encoding="utf-8"))
    (out / CTC_VOCAB_NAME).unlink()
    with pytest.raises(EncoderLoadError, match=r"359 outputs .* no symbol table .* 348 symbols"):
        load_encoder(out)
    short = dict(table, symbols=table["symbols"][:-1], size=358)
    (out / CTC_VOCAB_NAME).write_text(json.dumps(short), encoding="utf-8")
    with pytest.raises(EncoderLoadError, match=r"359 outputs .* 358 symbols"):
        load_encoder(out)


def test_old_exports_without_a_table_load_with_the_base_vocabulary(base, features, tmp_path):
    out = export_hf_encoder(base, tmp_path / "base")
    assert CharVocab.from_table(json.loads((out / CTC_VOCAB_NAME).read_text())).extra_symbols == ()
    (out / CTC_VOCAB_NAME).unlink()  # as written before the table existed
    loaded = load_encoder(out)
    assert loaded.extra_symbols == () and len(loaded.ctc_vocab()) == 348


def test_training_checkpoint_carries_the_table_to_load_and_export(tmp_path):
    from granite_train.training.ctc_module import CTCPretrainModule

    model = {"preset": "tiny", "encoder": {**SMALL, "output_dim": 351}, "extra_symbols": ["α", "β", "γ"]}
    module = CTCPretrainModule(model=model, optim={}, total_steps=10)
    assert module.encoder.config.output_dim == 351 and module.vocab.encode("aβ") == [97, 349]
    ckpt = {"state_dict": module.state_dict()}
    module.on_save_checkpoint(ckpt)
    assert ckpt["ctc_vocab"]["symbols"][348:] == ["α", "β", "γ"]
    torch.save(ckpt, tmp_path / "last.ckpt")

    assert load_encoder(tmp_path / "last.ckpt").extra_symbols == ("α", "β", "γ")
    out = export_checkpoint(tmp_path / "last.ckpt", tmp_path / "hf")
    assert json.loads((out / CTC_VOCAB_NAME).read_text(encoding="utf-8"))["symbols"][-1] == "γ"


# --------------------------------------------------------------------------------------------------
# stage-1 config: a new encoder, or continuing from one
# --------------------------------------------------------------------------------------------------
def test_config_names_both_sizes_when_the_head_does_not_fit():
    with pytest.raises(ValueError, match=r"output_dim is 348 .* 351 symbols .*output_dim=351"):
        CTCModelConfig(preset="tiny", extra_symbols=["α", "β", "γ"])
    with pytest.raises(ValueError, match="list of characters"):
        CTCModelConfig(preset="tiny", extra_symbols="αβγ")
    with pytest.raises(ValueError, match="model.extra_symbols: .*one character"):
        CTCModelConfig(preset="tiny", extra_symbols=["αβ"], encoder={"output_dim": 349})
    # base characters are already there: nothing to add, the head stays at 348
    assert CTCModelConfig(preset="tiny", extra_symbols=["a", "é"]).new_symbols(CharVocab()) == []


def test_continuing_stage1_from_an_export_grows_the_head_once(base, features, tmp_path):
    from granite_train.training.ctc_module import build_ctc_encoder

    x, lengths = features
    folder = export_hf_encoder(base, tmp_path / "base")
    model = CTCModelConfig(init=str(folder), extra_symbols=["α", "β"], encoder={"dropout": 0.0})
    encoder = build_ctc_encoder(model)
    assert encoder.extra_symbols == ("α", "β") and encoder.config.output_dim == 350
    assert encoder.config.dropout == 0.0 and all(
        m.p == 0.0 for m in encoder.modules() if isinstance(m, torch.nn.Dropout)
    )
    with torch.no_grad():
        torch.testing.assert_close(encoder.eval()(x, lengths).logits[..., :348], base(x, lengths).logits)

    grown = export_hf_encoder(encoder, tmp_path / "grown")
    again = build_ctc_encoder(CTCModelConfig(init=str(grown), extra_symbols=["α", "β", "γ"]))
    assert again.extra_symbols == ("α", "β", "γ")  # only γ is new
    with pytest.raises(ValueError, match="num_layers is 4 but model.init"):
        build_ctc_encoder(CTCModelConfig(init=str(folder), encoder={"num_layers": 4}))
    with pytest.raises(ValueError, match="output_dim is 348 .* 350 symbols"):
        build_ctc_encoder(
            CTCModelConfig(init=str(folder), extra_symbols=["α", "β"], encoder={"output_dim": 348})
        )


# --------------------------------------------------------------------------------------------------
# data targets and evaluation use the model's table
# --------------------------------------------------------------------------------------------------
ROWS = [("g0", 1.0, "καλή μέρα"), ("g1", 1.6, "αβγ abc")]


def _frames(seconds: float) -> int:
    from granite_train.audio.features import LogMelFeatures

    return int(LogMelFeatures.num_frames(int(round(seconds * 16000))))


@pytest.fixture(scope="module")
def greek_set(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("greek") / "el"
    records = [
        {
            "id": i,
            "audio": {"bytes": audio_bytes(speechlike(sec, seed=k)), "path": None},
            "text": t,
            "language": "el",
        }
        for k, (i, sec, t) in enumerate(ROWS)
    ]
    write_parquet(root / "test-00000.parquet", records)
    return root


class GreekOracle(torch.nn.Module):
    """Spells each utterance's transcript (chosen by its length) with the extended head."""

    def __init__(self, vocab: CharVocab):
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(()))
        self.vocab = vocab
        self.by_frames = {_frames(sec): text for _, sec, text in ROWS}

    def ctc_vocab(self) -> CharVocab:
        return self.vocab

    def forward(self, features: torch.Tensor, lengths: torch.Tensor):
        logits = torch.zeros(*features.shape[:2], len(self.vocab))
        logits[:, :, 0] = 1.0
        for b, n in enumerate(lengths.tolist()):
            text = self.by_frames[min(self.by_frames, key=lambda f: abs(f - n))]
            for j, i in enumerate(self.vocab.encode(text)):
                logits[b, 2 * j, i] = 5.0
        return SimpleNamespace(logits=logits + self.anchor, lengths=lengths)


def test_eval_decodes_and_builds_targets_with_the_models_table(greek_set):
    vocab = CharVocab(extra_symbols=GREEK)
    spec = {"name": "el", "path": str(greek_set), "split": "test", "language": "el", "normalizer": "none"}
    text, target = evaluate_ctc(
        GreekOracle(vocab), [spec, {**spec, "name": "target", "reference": "ctc_target"}], progress=False
    )
    assert text.cer == 0.0 and target.cer == 0.0  # targets spelt the Greek letters too


def test_training_targets_encode_the_new_letters(greek_set):
    from granite_train.training.run import SpeechDataModule

    data = {
        "train": {
            "sources": [{"name": "el", "path": str(greek_set), "split": "test", "language": "el"}],
            "shuffle_buffer": 0,
            "max_frames": 400,
        },  # fmt: skip
    }
    module = SpeechDataModule(data, seed=0, extra_symbols=GREEK)
    batch = next(iter(module.train_dataloader()))
    vocab = CharVocab(extra_symbols=GREEK)
    targets = {vocab.decode(t[:n].tolist()) for t, n in zip(batch.targets, batch.target_lengths)}
    assert "καλή μέρα" in targets or "αβγ abc" in targets
    assert int(batch.targets.max()) >= VOCAB_SIZE


# --------------------------------------------------------------------------------------------------
# the command line
# --------------------------------------------------------------------------------------------------
def test_extend_vocab_command_writes_a_folder_that_decodes_as_before(base, features, tmp_path):
    x, lengths = features
    folder = export_hf_encoder(base, tmp_path / "base")
    sample = tmp_path / "el.txt"
    sample.write_text("Καλή μέρα, κόσμε.\nΤο σπίτι είναι μεγάλο!\n", encoding="utf-8")
    run = subprocess.run(
        [sys.executable, "-m", "granite_train.cli", "extend-vocab", f"model_path={folder}",
         f"out={tmp_path / 'el'}", f"symbols_from={sample}", f"hydra.run.dir={tmp_path / 'run'}"],
        capture_output=True, text=True, timeout=300, cwd=ROOT,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    added = sorted("ΚΤαγεικλμνοπρστάέήίό")  # the sample's 20 distinct Greek letters, by hand
    assert f"added {len(added)} symbols as ids 348..{347 + len(added)}: {''.join(added)}" in run.stdout
    extended = load_encoder(tmp_path / "el")
    assert extended.extra_symbols == tuple(added)  # code point order
    with torch.no_grad():
        torch.testing.assert_close(extended(x, lengths).logits[..., :348], base(x, lengths).logits)

    again = subprocess.run(
        [sys.executable, "-m", "granite_train.cli", "extend-vocab", f"model_path={tmp_path / 'el'}",
         f"out={tmp_path / 'el2'}", "symbols='αω'", f"hydra.run.dir={tmp_path / 'run2'}"],
        capture_output=True, text=True, timeout=300, cwd=ROOT,
    )  # fmt: skip
    assert again.returncode == 0, again.stderr
    assert load_encoder(tmp_path / "el2").extra_symbols == (*added, "ω")  # α was there already


def test_extend_encoder_folder_refuses_to_overwrite_its_input(base, tmp_path):
    folder = export_hf_encoder(base, tmp_path / "base")
    with pytest.raises(ValueError, match="new folder"):
        extend_encoder_folder(folder, ["α"], folder)
