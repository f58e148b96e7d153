"""Stage-2 export: a SpeechLLM / training checkpoint as a folder plain transformers loads and runs alike."""

from __future__ import annotations

import copy
import json
import shutil
import sys

import pytest
import torch
from safetensors import safe_open
from transformers import AutoModelForSpeechSeq2Seq, AutoProcessor, GraniteSpeechForConditionalGeneration

from granite_train.audio.features import LogMelFeatures
from granite_train.audio.io import load_audio
from granite_train.cli import main
from granite_train.models.checkpoints import checkpoint_stage, speech_llm_metadata
from granite_train.models.config import LoraSettings
from granite_train.models.encoder import CTCEncoder, encoder_config
from granite_train.models.speech_export import (
    SpeechExportError,
    export_lora_adapter,
    export_speech_checkpoint,
    export_speech_llm,
    only_lora_trained,
    save_processor,
)
from granite_train.models.speech_llm import SpeechLLM, assemble_speech_llm, load_speech_llm
from granite_train.models.tiny_llm import build_tiny_llm
from granite_train.speech_format import AUDIO_TOKEN, IGNORE_INDEX, audio_token_count, projector_tokens
from tests.conftest import FSDD_DIR, REQUIRE_SHARED, require_shared
from tests.corpus import speechlike
from tests.lora_reference import peft_merge_lora

PROMPT_CHAT = [
    {"role": "user", "content": f"{AUDIO_TOKEN}can you transcribe the speech into a written format?"}
]
DIGITS = "zero one two three four five six seven eight nine".split()
PROJECTOR = {"hidden_size": 32, "num_attention_heads": 2, "intermediate_size": 64}
# FSDD recordings (8 kHz digits) concatenated into utterances of 1, 2 and 4 digits: 6, 12, 18 audio tokens
FSDD_FILES = (
    ["1_yweweler_5.wav"],
    ["3_jackson_0.wav", "9_nicolas_12.wav"],
    ["1_yweweler_5.wav", "3_jackson_0.wav", "1_yweweler_5.wav", "9_nicolas_12.wav"],
)


def _texts() -> list[str]:
    words = DIGITS + "the speech into a written format can you transcribe please say number".split()
    g = torch.Generator().manual_seed(0)
    return [" ".join(words[i] for i in torch.randint(len(words), (6,), generator=g)) for _ in range(40)]


def _new_speech(llm_dir, seed: int = 0) -> SpeechLLM:
    torch.manual_seed(seed)
    encoder = CTCEncoder(encoder_config("tiny", num_layers=2, hidden_dim=64, num_heads=4, dim_head=16)).eval()
    speech = assemble_speech_llm(encoder, llm_dir, projector=PROJECTOR)
    speech.add_lora(LoraSettings(rank=4, alpha=8.0, dropout=0.0))
    return speech


def _randomize_lora(speech: SpeechLLM, seed: int = 1) -> None:
    """Non-zero LoRA B (fresh adapters are the identity), so that a lost or unmerged adapter shows."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in speech.hf.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=g) * 0.3)


@pytest.fixture(scope="module")
def llm_dir(tmp_path_factory):
    # weights 5x the default scale: a default random LLM greedily repeats one token whatever the audio
    return build_tiny_llm(
        tmp_path_factory.mktemp("llm"), _texts(), preset="micro", vocab_size=300, initializer_range=0.1
    )


@pytest.fixture(scope="module")
def small_llm_dir(tmp_path_factory):
    """Default-scale weights: fp32 round-off stays far below the merge tolerance."""
    return build_tiny_llm(tmp_path_factory.mktemp("small_llm"), _texts(), preset="micro", vocab_size=300)


@pytest.fixture(scope="module")
def speech(llm_dir) -> SpeechLLM:
    speech = _new_speech(llm_dir)
    _randomize_lora(speech)
    return speech.eval()


@pytest.fixture(scope="module")
def exports(speech, tmp_path_factory):
    root = tmp_path_factory.mktemp("exports")
    return {
        "merged": export_speech_llm(speech, root / "merged"),
        "adapter": export_speech_llm(speech, root / "adapter", merge_lora=False),
    }


@pytest.fixture(scope="module")
def waves() -> list[torch.Tensor]:
    """Real speech of three lengths (FSDD digits), or speech-like noise where FSDD is absent."""
    if not FSDD_DIR.is_dir() and not REQUIRE_SHARED:
        return [torch.from_numpy(speechlike(d, seed=i)) for i, d in enumerate((0.35, 0.8, 1.3))]
    rec = require_shared(FSDD_DIR) / "recordings"
    return [torch.cat([load_audio(rec / name) for name in names]) for names in FSDD_FILES]


def _prompt(tokenizer) -> str:
    return tokenizer.apply_chat_template(PROMPT_CHAT, tokenize=False, add_generation_prompt=True)


def _our_inputs(speech: SpeechLLM, waves: list[torch.Tensor]):
    """Left-padded prompts with each ``<|audio|>`` expanded, and padded features: our batch."""
    prompt = _prompt(speech.tokenizer)
    texts = [prompt.replace(AUDIO_TOKEN, AUDIO_TOKEN * audio_token_count(len(w))) for w in waves]
    tok = speech.tokenizer(texts, return_tensors="pt", padding=True, padding_side="left")
    lengths = torch.tensor([len(w) for w in waves])
    padded = torch.nn.utils.rnn.pad_sequence(waves, batch_first=True)
    features, feature_lengths = LogMelFeatures()(padded, lengths)
    return tok["input_ids"], tok["attention_mask"], features, feature_lengths


@torch.no_grad()
def _our_logits(speech: SpeechLLM, wave: torch.Tensor) -> torch.Tensor:
    input_ids, attention_mask, features, lengths = _our_inputs(speech, [wave])
    embeds = speech.embed_inputs(input_ids, features, lengths)
    hidden = speech.language_model(inputs_embeds=embeds, attention_mask=attention_mask).last_hidden_state
    return speech.hf.lm_head(hidden)


@torch.no_grad()
def _hf_logits(model, processor, wave: torch.Tensor) -> torch.Tensor:
    inputs = processor(text=_prompt(processor.tokenizer), audio=wave, return_tensors="pt")
    return model(**inputs).logits


def _load(folder):
    model, info = AutoModelForSpeechSeq2Seq.from_pretrained(str(folder), output_loading_info=True)
    return model.eval(), info, AutoProcessor.from_pretrained(str(folder))


# --------------------------------------------------------------------------------------------------
# the two layouts
# --------------------------------------------------------------------------------------------------
def test_merged_export_runs_in_plain_transformers_like_our_model(speech, exports, waves):
    out = exports["merged"]
    names = {p.name for p in out.iterdir()}
    assert {
        "config.json",
        "generation_config.json",
        "model.safetensors",
        "tokenizer.json",
        "README.md",
    } <= names
    assert {"processor_config.json", "chat_template.jinja"} <= names and "adapter_config.json" not in names
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["GraniteSpeechForConditionalGeneration"]
    assert config["has_lora_adapter"] is False
    assert "AutoModelForSpeechSeq2Seq.from_pretrained" in (out / "README.md").read_text()

    model, info, processor = _load(out)
    assert type(model) is GraniteSpeechForConditionalGeneration and not model._hf_peft_config_loaded
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    with torch.device("meta"):
        reference = GraniteSpeechForConditionalGeneration(model.config)
    assert model.state_dict().keys() == reference.state_dict().keys()
    # the weights are the merged ones, and the training model still has its adapter
    merged = peft_merge_lora(copy.deepcopy(speech)).hf.state_dict()
    assert speech.has_lora and merged.keys() == model.state_dict().keys()
    for key, value in model.state_dict().items():
        assert torch.allclose(value, merged[key], atol=1e-6, rtol=0), key
    q_proj = "model.language_model.layers.0.self_attn.q_proj"
    assert not torch.equal(merged[f"{q_proj}.weight"], speech.hf.state_dict()[f"{q_proj}.base_layer.weight"])

    assert type(processor).__name__ == "GraniteSpeechProcessor"
    assert processor.audio_processor.projector_window_size == speech.config.window_size
    for wave in waves[:2]:
        ours = _our_logits(speech, wave)
        theirs = _hf_logits(model, processor, wave)
        assert theirs.shape == ours.shape
        assert (theirs - ours).abs().max() <= 1e-4


def test_adapter_export_loads_from_a_moved_folder(speech, exports, waves, tmp_path):
    src = exports["adapter"]
    assert (src / "adapter_config.json").is_file() and (src / "adapter_model.safetensors").is_file()
    assert json.loads((src / "config.json").read_text())["has_lora_adapter"] is True
    adapter_config = json.loads((src / "adapter_config.json").read_text())
    assert adapter_config["base_model_name_or_path"] == "adapter"  # the folder's name, no local path
    assert adapter_config["r"] == 4 and sorted(adapter_config["target_modules"]) == ["q_proj", "v_proj"]
    with safe_open(str(src / "adapter_model.safetensors"), "pt") as f:
        keys = set(f.keys())
    # the released granite-speech-3.3 layout
    assert "base_model.model.language_model.model.layers.0.self_attn.q_proj.lora_A.weight" in keys
    assert len(keys) == 2 * 2 * speech.config.text_config.num_hidden_layers  # A and B, q and v, per layer
    with safe_open(str(src / "model.safetensors"), "pt") as f:
        assert not any("lora" in k for k in f.keys())  # noqa: SIM118

    moved = shutil.copytree(src, tmp_path / "elsewhere" / "copy")
    model, info, processor = _load(moved)
    assert model._hf_peft_config_loaded and model.config.has_lora_adapter
    merged, _, _ = _load(exports["merged"])
    wave = waves[1]
    theirs = _hf_logits(model, processor, wave)
    assert (theirs - _hf_logits(merged, processor, wave)).abs().max() <= 1e-5
    assert (theirs - _our_logits(speech, wave)).abs().max() <= 1e-4

    ours = load_speech_llm(moved)
    assert ours.has_lora and ours.config.has_lora_adapter
    assert (_our_logits(ours.eval(), wave) - theirs).abs().max() <= 1e-5
    # and our loader on the merged export
    plain = load_speech_llm(exports["merged"])
    assert not plain.has_lora
    assert (_our_logits(plain.eval(), wave) - theirs).abs().max() <= 1e-5


def test_load_speech_llm_with_a_separate_adapter_folder(speech, exports, waves, tmp_path):
    base = shutil.copytree(exports["adapter"], tmp_path / "base")
    adapter = tmp_path / "lora"
    adapter.mkdir()
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        shutil.move(base / name, adapter / name)
    assert not load_speech_llm(base).has_lora  # has_lora_adapter says so, but no adapter is there
    loaded = load_speech_llm(base, adapter=adapter)
    assert loaded.has_lora
    wave = waves[0]
    assert (_our_logits(loaded.eval(), wave) - _our_logits(speech, wave)).abs().max() <= 1e-5
    with pytest.raises(ValueError, match="own LoRA adapter"):
        load_speech_llm(exports["adapter"], adapter=adapter)
    with pytest.raises(FileNotFoundError, match="adapter_config"):
        load_speech_llm(base, adapter=tmp_path)


# the keys of granite-4.0-1b-speech's config.json, per section, as public ports copy it (RECIPE.md,
# CFG; e.g. mlx-speech's granite_speech_asr config test): written by transformers 4.x
RELEASED_CONFIG_KEYS = {
    "": {"architectures", "audio_token_index", "downsample_rate", "encoder_config", "has_lora_adapter",
         "initializer_range", "model_type", "projector_config", "text_config", "tie_word_embeddings",
         "torch_dtype", "transformers_version", "window_size"},
    "encoder_config": {"context_size", "conv_expansion_factor", "conv_kernel_size", "dim_head", "dropout",
                       "feedforward_mult", "hidden_dim", "input_dim", "max_pos_emb", "model_type", "num_heads",
                       "num_layers", "output_dim", "torch_dtype"},
    "projector_config": {"attention_probs_dropout_prob", "cross_attention_frequency", "encoder_hidden_size",
                         "hidden_act", "hidden_dropout_prob", "hidden_size", "initializer_range",
                         "intermediate_size", "layer_norm_eps", "max_position_embeddings", "model_type",
                         "num_attention_heads", "num_hidden_layers", "position_embedding_type", "torch_dtype",
                         "use_qformer_text_input", "vocab_size"},
    "text_config": {"attention_bias", "attention_dropout", "attention_multiplier", "bos_token_id",
                    "embedding_multiplier", "eos_token_id", "hidden_act", "hidden_size", "initializer_range",
                    "intermediate_size", "logits_scaling", "max_position_embeddings", "mlp_bias", "model_type",
                    "num_attention_heads", "num_hidden_layers", "num_key_value_heads", "pad_token_id",
                    "residual_multiplier", "rms_norm_eps", "rope_scaling", "rope_theta", "torch_dtype",
                    "use_cache", "vocab_size"},
}  # fmt: skip


@pytest.mark.parametrize("layout", ["merged", "adapter"])
def test_exported_config_carries_every_key_of_the_released_config(exports, layout):
    config = json.loads((exports[layout] / "config.json").read_text())
    for section, keys in RELEASED_CONFIG_KEYS.items():
        have = config if not section else config[section]
        assert not keys - set(have), (section, sorted(keys - set(have)))
    assert config["torch_dtype"] == config["dtype"] == "float32"
    assert config["text_config"]["rope_theta"] == config["text_config"]["rope_parameters"]["rope_theta"]
    # transformers 5 reads the old names as the new ones: the same config as the model's
    reloaded = GraniteSpeechForConditionalGeneration.config_class.from_pretrained(str(exports[layout]))
    assert reloaded.text_config.rope_parameters == config["text_config"]["rope_parameters"]
    assert reloaded.text_config.num_hidden_layers == config["text_config"]["num_hidden_layers"]


def test_lora_alone_serves_on_the_base_model_like_the_merged_export(llm_dir, waves, tmp_path):
    released = export_speech_llm(
        _new_speech(llm_dir), tmp_path / "released"
    )  # fresh LoRA: B = 0, merged away
    tuned = load_speech_llm(released)
    tuned.add_lora(LoraSettings(rank=4, alpha=8.0, dropout=0.0))
    _randomize_lora(tuned)
    tuned.set_trainable(projector=False, lora=True)
    assert only_lora_trained(tuned) is None
    adapter = export_lora_adapter(tuned.eval(), tmp_path / "lora", base_model_name_or_path=str(released))
    assert sorted(p.name for p in adapter.iterdir()) == [
        "README.md",
        "adapter_config.json",
        "adapter_model.safetensors",
    ]
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(released) and config["r"] == 4
    with safe_open(str(adapter / "adapter_model.safetensors"), "pt") as f:
        keys = set(f.keys())
    # the granite-speech-3.3 adapter's names: vLLM's granite_speech maps them onto its LLM
    layers = tuned.config.text_config.num_hidden_layers
    assert keys == {
        f"base_model.model.language_model.model.layers.{i}.self_attn.{proj}.lora_{ab}.weight"
        for i in range(layers) for proj in ("q_proj", "v_proj") for ab in ("A", "B")
    }  # fmt: skip
    # rank 4: vLLM's --max-lora-rank takes 1, 8, 16, ... only (4 is refused at start)
    assert "--enable-lora --max-lora-rank 8 --lora-modules" in (adapter / "README.md").read_text()

    merged = export_speech_llm(tuned, tmp_path / "merged")
    base, _, processor = _load(released)
    base.load_adapter(str(adapter))  # transformers + peft, as a server would put it together
    merged_model, _, _ = _load(merged)
    for wave in waves:
        served = _hf_logits(base, processor, wave)
        assert (served - _hf_logits(merged_model, processor, wave)).abs().max() <= 1e-5
        assert (served - _our_logits(tuned, wave)).abs().max() <= 1e-4

    tuned.set_trainable(projector=True, lora=True)
    assert "projector" in only_lora_trained(tuned) and "merged export" in only_lora_trained(tuned)
    assert "no LoRA" in only_lora_trained(load_speech_llm(released))


def test_bf16_export_then_merged_reexport_into_the_same_folder(speech, waves, tmp_path):
    out = export_speech_llm(speech, tmp_path / "bf16", merge_lora=False, dtype="bfloat16")
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
    for name in ("model.safetensors", "adapter_model.safetensors"):
        with safe_open(str(out / name), "pt") as f:
            dtypes = {f.get_tensor(k).dtype for k in f.keys()}  # noqa: SIM118
        assert torch.bfloat16 in dtypes and torch.float32 not in dtypes, name
    assert next(speech.parameters()).dtype == torch.float32  # the model itself is not cast
    model, _, processor = _load(out)
    assert model.dtype == torch.bfloat16 and model._hf_peft_config_loaded
    assert torch.isfinite(_hf_logits(model, processor, waves[0])).all()
    # a merged export over it: the old adapter files go, or from_pretrained would apply them again
    export_speech_llm(speech, out)
    assert not (out / "adapter_config.json").exists() and not (out / "adapter_model.safetensors").exists()
    model, _, _ = _load(out)
    assert not model._hf_peft_config_loaded and model.dtype == torch.float32


# --------------------------------------------------------------------------------------------------
# LoRA merging after training
# --------------------------------------------------------------------------------------------------
def _train_batch(speech: SpeechLLM, frames: list[int], g: torch.Generator):
    """Random features and token ids with the right number of ``<|audio|>`` placeholders."""
    counts = projector_tokens(torch.tensor(frames), speech.config.window_size, speech.config.downsample_rate)
    vocab = speech.audio_token_id  # ordinary tokens lie below <|audio|>
    rows, labels = [], []
    for n in counts.tolist():
        target = torch.randint(2, vocab, (5,), generator=g)
        rows.append(torch.cat([torch.randint(2, vocab, (3,), generator=g), torch.full((n,), vocab), target]))
        labels.append(torch.cat([torch.full((3 + n,), IGNORE_INDEX), target]))
    width = max(len(r) for r in rows)
    pad = speech.tokenizer.pad_token_id
    input_ids = torch.stack([torch.cat([torch.full((width - len(r),), pad), r]) for r in rows])
    label_ids = torch.stack([torch.cat([torch.full((width - len(r),), IGNORE_INDEX), r]) for r in labels])
    mask = torch.stack([torch.arange(width) >= width - len(r) for r in rows]).long()
    features = torch.randn(len(frames), max(frames), 160, generator=g)
    return input_ids, mask, features, torch.tensor(frames), label_ids


def test_trained_lora_merges_exactly_and_only_lora_and_projector_change(small_llm_dir, waves, tmp_path):
    speech = _new_speech(small_llm_dir, seed=3)
    speech.set_trainable(projector=True, lora=True)
    initial = {k: v.clone() for k, v in speech.hf.state_dict().items()}
    optimizer = torch.optim.AdamW([p for p in speech.parameters() if p.requires_grad], lr=1e-2)
    g = torch.Generator().manual_seed(0)
    speech.train()
    for _ in range(3):
        loss = speech(*_train_batch(speech, [40, 23], g)).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    speech.eval()
    changed = {k for k, v in speech.hf.state_dict().items() if not torch.equal(v, initial[k])}
    assert changed and all(".lora_" in k or k.startswith("model.projector.") for k in changed), sorted(
        changed
    )[:5]
    assert any("lora_B" in k for k in changed) and any(k.startswith("model.projector.") for k in changed)

    before = {k: v.clone() for k, v in speech.hf.state_dict().items()}
    out = export_speech_llm(speech, tmp_path / "trained")
    assert speech.has_lora and all(torch.equal(v, before[k]) for k, v in speech.hf.state_dict().items())
    merged = load_speech_llm(out).eval()
    assert not merged.has_lora
    for wave in waves:
        assert (_our_logits(merged, wave) - _our_logits(speech, wave)).abs().max() <= 1e-5
    # the LoRA is what makes the difference
    with _adapters_off(speech):
        base_logits = _our_logits(speech, waves[0])
    assert (base_logits - _our_logits(merged, waves[0])).abs().max() > 1e-3


class _adapters_off:
    """Adapters disabled inside the block."""

    def __init__(self, speech: SpeechLLM):
        self.hf = speech.hf

    def __enter__(self):
        self.hf.disable_adapters()

    def __exit__(self, *exc):
        self.hf.enable_adapters()


# --------------------------------------------------------------------------------------------------
# greedy generation parity
# --------------------------------------------------------------------------------------------------
def _first_eos(ids: list[int], eos: int) -> list[int]:
    return ids[: ids.index(eos) + 1] if eos in ids else ids


@pytest.mark.parametrize("layout", ["merged", "adapter"])
def test_batched_greedy_generation_matches_plain_transformers(speech, exports, waves, layout):
    model, _, processor = _load(exports[layout])
    input_ids, attention_mask, features, lengths = _our_inputs(speech, waves)
    assert len(set(lengths.tolist())) == len(waves) and (attention_mask == 0).any()  # left padding used
    eos = speech.tokenizer.eos_token_id
    for stop in (False, True):  # no EOS for 10 tokens (non-trivial), then with EOS stopping
        kwargs = dict(max_new_tokens=10, do_sample=False, num_beams=1)
        if not stop:
            kwargs["min_new_tokens"] = 10
        ours = speech.generate(input_ids, attention_mask, features, lengths, **kwargs)
        if not stop:  # the random model says something, not one token over and over
            assert len(set(ours.flatten().tolist())) > 3, ours
        for i, wave in enumerate(waves):
            inputs = processor(text=_prompt(processor.tokenizer), audio=wave, return_tensors="pt")
            # the processor's prompt is ours without the padding
            assert inputs["input_ids"][0].tolist() == input_ids[i][attention_mask[i].bool()].tolist()
            with torch.no_grad():
                theirs = model.generate(**inputs, **kwargs)[0, inputs["input_ids"].shape[1] :].tolist()
            assert _first_eos(ours[i].tolist(), eos) == _first_eos(theirs, eos), (layout, stop, i)
            if not stop:
                assert len(theirs) == 10


# --------------------------------------------------------------------------------------------------
# training checkpoints and the command line
# --------------------------------------------------------------------------------------------------
def _stage2_ckpt(speech: SpeechLLM, run_dir):
    """A run folder as stage-2 training leaves it: processor/ and checkpoints/last.ckpt."""
    save_processor(speech, run_dir / "processor")
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    ckpt.parent.mkdir(parents=True)
    state = {f"model.{k}": v.clone() for k, v in speech.state_dict().items()}
    torch.save({"state_dict": state, "speech_llm": speech_llm_metadata(speech), "global_step": 7}, ckpt)
    return ckpt


def _cli(monkeypatch, *args: str) -> None:
    monkeypatch.setattr(sys, "argv", list(sys.argv))  # main() rewrites sys.argv for Hydra
    main(list(args))


def test_cli_exports_a_stage2_checkpoint(speech, waves, tmp_path, monkeypatch, capsys):
    ckpt = _stage2_ckpt(speech, tmp_path / "run")
    assert checkpoint_stage(ckpt) == 2
    out = tmp_path / "speech-hf"
    _cli(
        monkeypatch,
        "export",
        f"checkpoint='{ckpt}'",
        f"output_dir='{out}'",
        "merge_lora=false",
        f"hydra.run.dir='{tmp_path / 'hydra'}'",
    )
    assert f"exported speech LLM to {out}" in capsys.readouterr().out
    assert (out / "adapter_model.safetensors").is_file()
    model, _, processor = _load(out)
    assert model._hf_peft_config_loaded
    assert (_hf_logits(model, processor, waves[0]) - _our_logits(speech, waves[0])).abs().max() <= 1e-4

    # the API, defaults: merged, next to the checkpoint
    merged = export_speech_checkpoint(ckpt)
    assert merged == ckpt.with_name("last-hf") and not (merged / "adapter_config.json").exists()
    model, _, processor = _load(merged)
    assert (_hf_logits(model, processor, waves[0]) - _our_logits(speech, waves[0])).abs().max() <= 1e-4


def test_stage2_checkpoint_errors(speech, tmp_path, monkeypatch, capsys):
    junk = tmp_path / "junk.ckpt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(SystemExit):
        _cli(monkeypatch, "export", f"checkpoint='{junk}'", f"hydra.run.dir='{tmp_path / 'hydra'}'")
    assert "weights_only" in capsys.readouterr().err

    stage1 = tmp_path / "stage1.ckpt"
    encoder = speech.encoder
    torch.save(
        {"state_dict": {f"encoder.{k}": v for k, v in encoder.state_dict().items()}, "encoder_config": {}},
        stage1,
    )
    assert checkpoint_stage(stage1) == 1
    with pytest.raises(SpeechExportError, match="stage-1"):
        export_speech_checkpoint(stage1)

    ckpt = _stage2_ckpt(speech, tmp_path / "run")
    with pytest.raises(SpeechExportError, match="processor"):
        export_speech_checkpoint(ckpt, processor_dir=tmp_path / "nowhere")
    # LoRA tensors without their settings, and weights of another model
    data = torch.load(ckpt, weights_only=True)
    data["speech_llm"]["lora"] = None
    torch.save(data, tmp_path / "run" / "checkpoints" / "nolora.ckpt")
    with pytest.raises(SpeechExportError, match="LoRA tensors"):
        export_speech_checkpoint(tmp_path / "run" / "checkpoints" / "nolora.ckpt")
    data = torch.load(ckpt, weights_only=True)
    del data["state_dict"]["model.hf.model.projector.query"]
    torch.save(data, tmp_path / "run" / "checkpoints" / "short.ckpt")
    with pytest.raises(SpeechExportError, match="missing_keys"):
        export_speech_checkpoint(tmp_path / "run" / "checkpoints" / "short.ckpt")
