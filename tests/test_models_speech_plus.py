"""granite-speech-4.1-2b-plus (``granite_speech_plus``): the same speech-LLM entry as 4.0, its one
architectural change (the projector also reads chosen encoder layers, concatenated) in our encoder,
checked against transformers' own ``GraniteSpeechPlusForConditionalGeneration``."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import (
    AutoModelForSpeechSeq2Seq,
    GraniteSpeechPlusConfig,
    GraniteSpeechPlusForConditionalGeneration,
)

from granite_train.models.encoder import CTCEncoder
from granite_train.models.speech_export import export_speech_llm
from granite_train.models.speech_llm import build_speech_llm, load_speech_llm
from granite_train.models.tiny_release import build_tiny_released_model
from tests.test_models_speech_llm import _collate, _examples, _loss

CAT = [0, 1]  # the input projection and layer 1: with 2 layers, layer 1 is the self-conditioned one


@pytest.fixture(scope="module")
def plus_folder(tmp_path_factory) -> Path:
    """A tiny 4.1-plus folder: the tiny 4.0 release's config with the plus keys, random weights."""
    root = tmp_path_factory.mktemp("plus")
    released = build_tiny_released_model(root)
    values = json.loads((released / "config.json").read_text())
    values["model_type"] = "granite_speech_plus"
    values["encoder_config"]["model_type"] = "granite_speech_plus_encoder"
    values["encoder_config"]["cat_hidden_layers"] = CAT
    values["projector_config"]["encoder_hidden_size"] = values["encoder_config"]["hidden_dim"] * (len(CAT) + 1)
    values.pop("architectures", None)
    config = GraniteSpeechPlusConfig.from_dict(values)
    torch.manual_seed(0)
    model = GraniteSpeechPlusForConditionalGeneration(config).eval()
    out = root / "plus"
    model.save_pretrained(out)
    for f in released.iterdir():  # the tokenizer and processor files
        if f.name.startswith(("tokenizer", "special_tokens", "processor", "preprocessor", "chat_template")):
            shutil.copy(f, out / f.name)
    return out


def test_plus_audio_embeddings_equal_transformers_reference(plus_folder):
    speech = load_speech_llm(plus_folder).eval()
    assert isinstance(speech.hf, GraniteSpeechPlusForConditionalGeneration)
    assert isinstance(speech.encoder, CTCEncoder) and speech.encoder.config.cat_hidden_layers == CAT
    reference = GraniteSpeechPlusForConditionalGeneration.from_pretrained(plus_folder).eval()
    assert not isinstance(reference.model.encoder, CTCEncoder)
    examples = _examples()
    batch = _collate(speech, examples)
    with torch.no_grad():
        hidden = speech.encode(batch.features, batch.feature_lengths)
        assert hidden.shape[-1] == 64 * (len(CAT) + 1)
        merged = speech.embed_inputs(batch.input_ids, batch.features, batch.feature_lengths)
        for i, e in enumerate(examples):  # each utterance alone through transformers
            single = _collate(speech, [e])
            ref = reference.get_audio_features(single.features).pooler_output[0]
            is_audio = batch.input_ids[i] == speech.audio_token_id
            torch.testing.assert_close(merged[i][is_audio], ref, atol=1e-5, rtol=0)


def test_plus_trains_with_lora_and_exports_its_own_layout(plus_folder, tmp_path):
    speech = build_speech_llm(
        {"init": str(plus_folder), "lora": {"rank": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"]},
         "train": {"projector": True, "lora": True, "llm": False}}
    )  # fmt: skip
    batch = _collate(speech, _examples())
    loss = _loss(speech, batch).loss
    loss.backward()
    assert torch.isfinite(loss)
    assert all(p.grad is not None for p in speech.projector.parameters() if p.requires_grad)
    assert all(p.grad is None for p in speech.encoder.parameters())  # frozen

    out = export_speech_llm(speech.eval(), tmp_path / "export")
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "granite_speech_plus"
    assert config["architectures"] == ["GraniteSpeechPlusForConditionalGeneration"]
    assert config["encoder_config"]["cat_hidden_layers"] == CAT
    reloaded = AutoModelForSpeechSeq2Seq.from_pretrained(out).eval()
    assert isinstance(reloaded, GraniteSpeechPlusForConditionalGeneration)
    # nothing trained yet (no optimizer step): the export holds the folder's weights, LoRA merged as zero
    before, after = load_file(plus_folder / "model.safetensors"), load_file(out / "model.safetensors")
    assert before.keys() == after.keys()
    for key in before:
        torch.testing.assert_close(after[key], before[key], atol=1e-6, rtol=0)
