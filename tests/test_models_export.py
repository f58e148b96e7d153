"""Encoder export to a transformers folder and loading from folders and training checkpoints."""

from __future__ import annotations

import argparse
import json

import pytest
import torch
from safetensors.torch import save_file
from transformers import GraniteSpeechCTCEncoder

from granite_train.models import CTCEncoder, encoder_config
from granite_train.models.export import (
    EncoderLoadError,
    export_checkpoint,
    export_hf_encoder,
    load_encoder,
)


def _randomize_bn(model: torch.nn.Module, seed: int = 1) -> None:
    """Non-trivial BatchNorm running stats, so that losing them would show in eval outputs."""
    g = torch.Generator().manual_seed(seed)
    for mod in model.modules():
        if isinstance(mod, torch.nn.BatchNorm1d):
            mod.running_mean.copy_(torch.randn(mod.running_mean.shape, generator=g) * 0.5)
            mod.running_var.copy_(torch.rand(mod.running_var.shape, generator=g) * 2 + 0.2)
            mod.num_batches_tracked.fill_(17)


@pytest.fixture(scope="module")
def encoder() -> CTCEncoder:
    torch.manual_seed(0)
    model = CTCEncoder(encoder_config("tiny")).eval()
    _randomize_bn(model)
    return model


@pytest.fixture(scope="module")
def features() -> torch.Tensor:
    return torch.randn(2, 37, 160, generator=torch.Generator().manual_seed(3))


def _fake_ckpt(path, encoder: CTCEncoder, **extra):
    """A checkpoint in the trainer's format: LightningModule state, encoder under ``encoder.``."""
    state = {f"encoder.{k}": v.clone() for k, v in encoder.state_dict().items()}
    state["loss.some_buffer"] = torch.zeros(3)  # other module state is ignored
    ckpt = {
        "epoch": 0,
        "global_step": 10,
        "state_dict": state,
        "encoder_config": encoder.config.to_dict(),
        "optimizer_states": [],
        **extra,
    }
    torch.save(ckpt, path)
    return path


def _same_state(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


def test_export_reloads_in_plain_transformers_with_identical_logits(encoder, features, tmp_path):
    out = export_hf_encoder(encoder, tmp_path / "hf")
    assert {p.name for p in out.iterdir()} == {
        "config.json",
        "model.safetensors",
        "ctc_vocab.json",
        "README.md",
    }
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "granite_speech_encoder"
    assert config["architectures"] == ["GraniteSpeechCTCEncoder"]
    assert config["output_dim"] == 348 and config["num_layers"] == encoder.config.num_layers
    card = (out / "README.md").read_text()
    assert "GraniteSpeechCTCEncoder.from_pretrained" in card and "blank = id 0" in card

    ref = GraniteSpeechCTCEncoder.from_pretrained(out).eval()
    # BatchNorm running statistics survive (the buffers, not re-initialised)
    bn = ref.layers[0].conv.batch_norm
    assert torch.equal(bn.running_var, encoder.layers[0].conv.batch_norm.running_var)
    assert int(bn.num_batches_tracked) == 17
    _same_state(ref, encoder)
    with torch.no_grad():
        ref_hidden = ref(features).last_hidden_state  # the reference returns hidden states only
        ref_logits = ref.out(ref_hidden)
        ours = encoder(features)
    assert ref_logits.shape == (2, 37, 348)
    assert (ref_logits - ours.logits).abs().max() <= 1e-5
    assert (ref_hidden - ours.last_hidden_state).abs().max() <= 1e-5


def test_load_encoder_from_folder_round_trip(encoder, features, tmp_path):
    out = export_hf_encoder(encoder, tmp_path / "hf")
    loaded = load_encoder(out, attn_impl="math")
    assert isinstance(loaded, CTCEncoder) and not loaded.training and loaded.attn_impl == "math"
    _same_state(loaded, encoder)
    with torch.no_grad():
        assert (loaded(features).logits - encoder(features).logits).abs().max() <= 1e-5


def test_load_encoder_from_checkpoint_and_export_it(encoder, features, tmp_path):
    ckpt = _fake_ckpt(tmp_path / "last.ckpt", encoder)
    loaded = load_encoder(ckpt)
    _same_state(loaded, encoder)
    out = export_checkpoint(ckpt)
    assert out == tmp_path / "last-hf"
    ref = GraniteSpeechCTCEncoder.from_pretrained(out).eval()
    with torch.no_grad():
        assert (ref.out(ref(features).last_hidden_state) - encoder(features).logits).abs().max() <= 1e-5


def test_compiled_module_keys_and_bf16_weights(encoder, tmp_path):
    state = {
        f"encoder._orig_mod.{k}": v.to(torch.bfloat16) if v.is_floating_point() else v
        for k, v in encoder.state_dict().items()
    }
    path = tmp_path / "compiled.ckpt"
    torch.save({"state_dict": state, "encoder_config": encoder.config.to_dict()}, path)
    loaded = load_encoder(path)
    assert loaded.input_linear.weight.dtype == torch.bfloat16
    out = export_hf_encoder(loaded, tmp_path / "bf16")
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
    assert load_encoder(out).out.weight.dtype == torch.bfloat16


def test_full_granite_speech_folder_reads_the_encoder_only(encoder, tmp_path):
    folder = tmp_path / "full"
    folder.mkdir()
    state = {f"encoder.{k}": v.contiguous() for k, v in encoder.state_dict().items()}
    state["projector.query"] = torch.zeros(1, 3, 8)
    state["language_model.lm_head.weight"] = torch.zeros(4, 8)
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    config = {"model_type": "granite_speech", "encoder_config": encoder.config.to_dict()}
    (folder / "config.json").write_text(json.dumps(config))
    _same_state(load_encoder(folder), encoder)


def test_sharded_folder(encoder, tmp_path):
    folder = tmp_path / "sharded"
    folder.mkdir()
    items = sorted(encoder.state_dict().items())
    half = len(items) // 2
    weight_map = {}
    for i, part in enumerate((items[:half], items[half:])):
        name = f"model-0000{i + 1}-of-00002.safetensors"
        save_file({k: v.contiguous() for k, v in part}, str(folder / name), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys((k for k, _ in part), name))
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    encoder.config.save_pretrained(folder)
    _same_state(load_encoder(folder), encoder)


# --------------------------------------------------------------------------------------------------
# errors
# --------------------------------------------------------------------------------------------------
def test_missing_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="no encoder"):
        load_encoder(tmp_path / "nope")


def test_folder_without_config_or_weights(encoder, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(EncoderLoadError, match="config.json"):
        load_encoder(empty)
    encoder.config.save_pretrained(empty)
    with pytest.raises(EncoderLoadError, match="model.safetensors"):
        load_encoder(empty)


def test_folder_of_another_model_type(tmp_path):
    folder = tmp_path / "other"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "whisper"}))
    with pytest.raises(EncoderLoadError, match="model_type"):
        load_encoder(folder)


def test_checkpoint_without_expected_keys(encoder, tmp_path):
    path = tmp_path / "bad.ckpt"
    torch.save({"state_dict": {f"encoder.{k}": v for k, v in encoder.state_dict().items()}}, path)
    with pytest.raises(EncoderLoadError, match="encoder_config"):
        load_encoder(path)
    torch.save({"state_dict": {"model.x": torch.zeros(1)}, "encoder_config": encoder.config.to_dict()}, path)
    with pytest.raises(EncoderLoadError, match="no 'encoder.' keys"):
        load_encoder(path)
    torch.save([1, 2], path)
    with pytest.raises(EncoderLoadError, match="checkpoint dict"):
        load_encoder(path)
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(EncoderLoadError, match="weights_only"):
        load_encoder(path)


def test_checkpoint_with_pickled_objects_is_refused(encoder, tmp_path):
    path = _fake_ckpt(tmp_path / "pickle.ckpt", encoder, hyper_parameters=argparse.Namespace(lr=1e-3))
    with pytest.raises(EncoderLoadError, match="weights_only"):
        load_encoder(path)


def test_mismatched_keys_and_shapes(encoder, tmp_path):
    state = {f"encoder.{k}": v for k, v in encoder.state_dict().items()}
    del state["encoder.out.bias"]
    state["encoder.extra.weight"] = torch.zeros(2)
    path = tmp_path / "keys.ckpt"
    torch.save({"state_dict": state, "encoder_config": encoder.config.to_dict()}, path)
    with pytest.raises(EncoderLoadError, match=r"1 missing .*out\.bias.*1 unexpected .*extra\.weight"):
        load_encoder(path)
    # weights of another size than the config says
    config = encoder.config.to_dict() | {"hidden_dim": 64, "dim_head": 16}
    torch.save(
        {
            "state_dict": {f"encoder.{k}": v for k, v in encoder.state_dict().items()},
            "encoder_config": config,
        },
        path,
    )
    with pytest.raises(EncoderLoadError, match="another shape"):
        load_encoder(path)


def test_export_refuses_a_state_dict_transformers_cannot_load(tmp_path):
    class Wrong(CTCEncoder):
        def __init__(self, config):
            super().__init__(config)
            self.extra = torch.nn.Linear(2, 2)

    with pytest.raises(EncoderLoadError, match="extra"):
        export_hf_encoder(Wrong(encoder_config("tiny")), tmp_path / "x")
    assert not (tmp_path / "x").exists()
