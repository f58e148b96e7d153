"""The Granite Speech 5.0 TurboCTC entry (``GraniteSpeech5ForCTC``): config, BPE targets, frame count,
loss, folder round trip through plain transformers, greedy decoding, and a short training run.

Everything is built from configs: nothing is downloaded.
"""

from __future__ import annotations

import json
import shutil
import subprocess

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from transformers import (
    AutoFeatureExtractor,
    AutoModelForCTC,
    AutoProcessor,
    AutoTokenizer,
    GraniteSpeech5CTCConfig,
    GraniteSpeech5EncoderConfig,
    GraniteSpeech5FeatureExtractor,
    GraniteSpeech5ForCTC,
)

from granite_train.audio.io import load_audio
from granite_train.models.turboctc import (
    BLANK_ID,
    BLANK_TOKEN,
    TINY_SIZES,
    TurboCTCBatch,
    build_bpe_tokenizer,
    ctc_loss_turbo,
    greedy_ctc_decode,
    load_turboctc,
    make_turboctc_batch,
    save_turboctc,
    tiny_turboctc_config,
    too_many_targets,
    turboctc_frames,
    turboctc_targets,
)

TEXTS = ["hello world", "good morning", "thank you very much"]
SR = 16000


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models on a shared 2-core machine run ~10x faster on one thread than contending for two."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tokenizer():
    return build_bpe_tokenizer(TEXTS, vocab_size=40)


@pytest.fixture(scope="module")
def extractor() -> GraniteSpeech5FeatureExtractor:
    return GraniteSpeech5FeatureExtractor()


def _tiny_model(vocab_size: int, seed: int = 0) -> GraniteSpeech5ForCTC:
    torch.manual_seed(seed)
    return GraniteSpeech5ForCTC(tiny_turboctc_config(vocab_size=vocab_size))


def _randomize_bn(model: torch.nn.Module, seed: int = 1) -> None:
    """Non-trivial BatchNorm running stats, so that losing them in a round trip would show."""
    g = torch.Generator().manual_seed(seed)
    for mod in model.modules():
        if isinstance(mod, torch.nn.BatchNorm1d):
            mod.running_mean.copy_(torch.randn(mod.running_mean.shape, generator=g) * 0.5)
            mod.running_var.copy_(torch.rand(mod.running_var.shape, generator=g) * 2 + 0.2)


def _noise(num_samples: int, seed: int) -> np.ndarray:
    g = np.random.default_rng(seed)
    return (g.standard_normal(num_samples) * 0.1).astype(np.float32)


# --------------------------------------------------------------------------------------------------
# config
# --------------------------------------------------------------------------------------------------
def test_tiny_config_has_every_key_of_the_released_config_and_shrinks_only_sizes():
    tiny, released = tiny_turboctc_config(), GraniteSpeech5CTCConfig()
    assert set(tiny.to_dict()) == set(released.to_dict())
    tiny_enc, released_enc = tiny.encoder_config.to_dict(), released.encoder_config.to_dict()
    assert set(tiny_enc) == set(released_enc)
    assert set(GraniteSpeech5EncoderConfig.__annotations__) <= set(tiny_enc)

    # the released model: 16,384 BPE units, blank/pad 0, 128-frame blocks, 2 subsampling blocks
    assert released.vocab_size == released_enc["vocab_size"] == 16384
    assert released.pad_token_id == tiny.pad_token_id == BLANK_ID == 0
    sized = set(TINY_SIZES) | {"head_dim", "num_key_value_heads"}  # the last two follow from the sizes
    for key, value in released_enc.items():
        if key not in sized and key != "transformers_version":
            assert tiny_enc[key] == value, key
    for key in ("ctc_loss_reduction", "ctc_zero_infinity", "tie_word_embeddings", "model_type"):
        assert getattr(tiny, key) == getattr(released, key), key
    assert tiny.encoder_config.subsample_layers == [0, 1] and tiny.encoder_config.context_size == 128
    assert tiny.vocab_size == tiny.encoder_config.vocab_size == TINY_SIZES["vocab_size"]


def test_tiny_config_routes_overrides_to_the_right_sub_config():
    config = tiny_turboctc_config(vocab_size=100, context_size=64, hidden_size=48, ctc_loss_reduction="sum")
    assert config.vocab_size == config.encoder_config.vocab_size == 100
    assert config.encoder_config.context_size == 64 and config.encoder_config.hidden_size == 48
    assert config.ctc_loss_reduction == "sum"
    assert config.encoder_config.head_dim == 48 // TINY_SIZES["num_attention_heads"]


# --------------------------------------------------------------------------------------------------
# tokenizer, targets, frames
# --------------------------------------------------------------------------------------------------
def test_bpe_tokenizer_puts_the_blank_at_id_0_and_targets_are_its_own_ids(tokenizer, tmp_path):
    assert tokenizer.convert_ids_to_tokens(0) == BLANK_TOKEN
    assert tokenizer.pad_token == BLANK_TOKEN and tokenizer.pad_token_id == BLANK_ID
    assert 10 < len(tokenizer) <= 40
    for text in TEXTS:
        ids = turboctc_targets(tokenizer, text)
        assert ids and BLANK_ID not in ids
        assert ids == tokenizer(text, add_special_tokens=False)["input_ids"]
        assert tokenizer.decode(ids, group_tokens=False) == text
    # merges happened: fewer BPE units than characters
    assert len(turboctc_targets(tokenizer, "thank you very much")) < len("thank you very much")
    with pytest.raises(ValueError, match="blank"):
        turboctc_targets(tokenizer, f"hello {BLANK_TOKEN} world")

    tokenizer.save_pretrained(tmp_path)
    reloaded = AutoTokenizer.from_pretrained(tmp_path)
    assert reloaded.pad_token_id == BLANK_ID
    assert [turboctc_targets(reloaded, t) for t in TEXTS] == [turboctc_targets(tokenizer, t) for t in TEXTS]


LENGTHS = [1120, 1600, 3300, 16000, 16159, 16160, 20000, 25617, 33333]


def test_frame_count_is_the_models_output_length(extractor):
    model = _tiny_model(TINY_SIZES["vocab_size"]).eval()
    with torch.no_grad():
        for n in LENGTHS:  # one clip at a time: the output length is the logits' length
            inputs = extractor(_noise(n, n), sampling_rate=SR, return_tensors="pt")
            assert model(**inputs).logits.shape[1] == turboctc_frames(n), n
        # a padded batch: the model's own output mask (what its loss uses as logit lengths)
        inputs = extractor([_noise(n, n) for n in LENGTHS], sampling_rate=SR, return_tensors="pt")
        out = model.encoder(**inputs)
    expected = [turboctc_frames(n) for n in LENGTHS]
    assert out.attention_mask.sum(-1).tolist() == expected
    assert model._get_output_attention_mask(inputs["attention_mask"]).sum(-1).tolist() == expected
    assert out.last_hidden_state.shape[1] == max(expected)
    assert turboctc_frames(SR) == 12  # 12.5 Hz, floored
    assert turboctc_frames(8 * SR) == 100


# --------------------------------------------------------------------------------------------------
# batches and loss
# --------------------------------------------------------------------------------------------------
def test_utterances_with_more_targets_than_frames_are_dropped_and_counted(tokenizer, extractor):
    frames = turboctc_frames(16000)
    assert not too_many_targets(frames, 16000) and too_many_targets(frames + 1, 16000)

    long_text = " ".join(TEXTS * 4)
    assert len(turboctc_targets(tokenizer, long_text)) > turboctc_frames(8000)
    audios = [_noise(16000, 1), _noise(8000, 2), _noise(12000, 3)]
    batch = make_turboctc_batch(extractor, tokenizer, audios, [TEXTS[0], long_text, TEXTS[1]])
    assert batch.dropped == 1 and batch.kept == [0, 2]
    assert batch.input_features.shape[0] == batch.labels.shape[0] == 2
    assert batch.labels[0, : len(turboctc_targets(tokenizer, TEXTS[0]))].tolist() == turboctc_targets(
        tokenizer, TEXTS[0]
    )
    assert (batch.labels[0, len(turboctc_targets(tokenizer, TEXTS[0])) :] == BLANK_ID).all()

    with pytest.raises(ValueError, match="all 1 utterances"):
        make_turboctc_batch(extractor, tokenizer, [_noise(8000, 2)], [long_text])


def test_loss_is_ctc_loss_over_log_softmax_with_blank_0_and_zero_infinity(tokenizer, extractor):
    model = _tiny_model(len(tokenizer)).eval()
    _randomize_bn(model)
    lengths = [16000, 12345, 24000]
    audios = [_noise(n, i) for i, n in enumerate(lengths)]
    batch = make_turboctc_batch(extractor, tokenizer, audios, TEXTS)
    assert batch.dropped == 0 and batch.labels.eq(BLANK_ID).any()  # labels are blank-padded
    # a third target that fits the drop rule but not CTC (repeats need blanks between): an inf loss
    frames = [turboctc_frames(n) for n in lengths]
    batch.labels = torch.nn.functional.pad(batch.labels, (0, frames[2]), value=BLANK_ID)
    batch.labels[2] = BLANK_ID
    batch.labels[2, : frames[2]] = 5
    targets = [row[row != BLANK_ID] for row in batch.labels]

    with torch.no_grad():
        loss = ctc_loss_turbo(model, batch)
        logits = model(input_features=batch.input_features, attention_mask=batch.attention_mask).logits

        def by_hand(zero_infinity: bool) -> torch.Tensor:
            return F.ctc_loss(
                F.log_softmax(logits, dim=-1, dtype=torch.float32).transpose(0, 1),
                torch.cat(targets),
                torch.tensor(frames),
                torch.tensor([len(t) for t in targets]),
                blank=0,
                reduction="mean",
                zero_infinity=zero_infinity,
            )

        expected = by_hand(zero_infinity=True)
    assert torch.isfinite(loss) and loss.item() > 0
    torch.testing.assert_close(loss, expected, rtol=1e-6, atol=1e-6)
    assert torch.isinf(by_hand(zero_infinity=False))  # so zero_infinity=True is what the model uses

    # the same through a plain dict without a mask: one clip, an all-ones mask is supplied
    single = make_turboctc_batch(extractor, tokenizer, audios[:1], TEXTS[:1])
    with torch.no_grad():
        no_mask = ctc_loss_turbo(model, {"input_features": single.input_features, "labels": single.labels})
        with_mask = ctc_loss_turbo(model, single)
    torch.testing.assert_close(no_mask, with_mask)


# --------------------------------------------------------------------------------------------------
# folder
# --------------------------------------------------------------------------------------------------
def test_saved_folder_reloads_in_plain_transformers_with_identical_logits(tokenizer, extractor, tmp_path):
    model = _tiny_model(len(tokenizer), seed=3).eval()
    _randomize_bn(model)
    out = save_turboctc(model, tokenizer, tmp_path / "turbo")
    names = {p.name for p in out.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= names
    assert "processor_config.json" in names or "preprocessor_config.json" in names

    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "granite_speech5_ctc"
    assert config["architectures"] == ["GraniteSpeech5ForCTC"]
    assert config["pad_token_id"] == 0 and config["vocab_size"] == len(tokenizer)
    assert set(GraniteSpeech5EncoderConfig.__annotations__) <= set(config["encoder_config"])

    audios = [_noise(n, n) for n in (16000, 11111)]
    inputs = extractor(audios, sampling_rate=SR, return_tensors="pt")
    with torch.no_grad():
        before = model(**inputs).logits
        for cls in (AutoModelForCTC, GraniteSpeech5ForCTC):
            reloaded = cls.from_pretrained(out).eval()
            assert isinstance(reloaded, GraniteSpeech5ForCTC)
            assert (reloaded(**inputs).logits - before).abs().max().item() <= 1e-6

    processor = AutoProcessor.from_pretrained(out)
    assert type(AutoFeatureExtractor.from_pretrained(out)) is GraniteSpeech5FeatureExtractor
    reread = processor(audios, sampling_rate=SR, return_tensors="pt")
    assert torch.equal(reread["input_features"], inputs["input_features"])
    assert processor.tokenizer.pad_token_id == BLANK_ID
    labelled = processor(audios[:1], text=[TEXTS[0]], sampling_rate=SR)
    assert list(labelled["labels"][0]) == turboctc_targets(tokenizer, TEXTS[0])

    loaded = load_turboctc(out)
    assert not loaded.model.training
    with torch.no_grad():
        assert (loaded.model(**inputs).logits - before).abs().max().item() <= 1e-6


def test_save_refuses_a_tokenizer_that_does_not_fit_the_head(tokenizer, tmp_path):
    with pytest.raises(ValueError, match="CTC head"):
        save_turboctc(_tiny_model(len(tokenizer) - 1), tokenizer, tmp_path)


# --------------------------------------------------------------------------------------------------
# decoding
# --------------------------------------------------------------------------------------------------
def _one_hot_logits(paths: list[list[int]], vocab: int, frames: int) -> torch.Tensor:
    logits = torch.full((len(paths), frames, vocab), -5.0)
    for b, path in enumerate(paths):
        for t in range(frames):
            logits[b, t, path[t] if t < len(path) else BLANK_ID] = 5.0
    return logits


def test_greedy_decode_of_hand_made_logits(tokenizer):
    sp, hel, lo, wor, ld = tokenizer.convert_tokens_to_ids(["▁", "hel", "lo", "wor", "ld"])
    el = tokenizer.convert_tokens_to_ids("l")
    assert turboctc_targets(tokenizer, "hello world") == [sp, hel, lo, sp, wor, ld]
    paths = [
        [0, sp, sp, hel, 0, lo, lo, sp, wor, wor, 0, ld],  # repeats collapse, blanks vanish
        [sp, el, 0, el, 0, 0],  # a blank between two equal tokens keeps both
        [sp, el, el, el, 0, 0],  # without one they are a single token
        [sp, hel, lo, lo, sp, wor, ld],  # frames past the length (4) are ignored
    ]
    logits = _one_hot_logits(paths, len(tokenizer), frames=12)
    texts = greedy_ctc_decode(logits, [12, 12, 12, 4], tokenizer)
    assert texts == ["hello world", "ll", "l", "hello"]
    assert greedy_ctc_decode(logits[:1], torch.tensor([0]), tokenizer) == [""]


# --------------------------------------------------------------------------------------------------
# it trains
# --------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def utterances(tmp_path_factory) -> list[torch.Tensor]:
    """``TEXTS`` read by espeak-ng at 16 kHz, or speech-like noise bursts where it is not installed."""
    exe = shutil.which("espeak-ng")
    if exe is None:
        clips = []
        for i, text in enumerate(TEXTS):
            n = 1600 * len(text)
            envelope = np.abs(np.sin(np.linspace(0, np.pi * len(text.split()), n)))
            clips.append(torch.from_numpy(_noise(n, 100 + i) * envelope.astype(np.float32)))
        return clips
    folder = tmp_path_factory.mktemp("espeak")
    clips = []
    for i, text in enumerate(TEXTS):
        wav = folder / f"{i}.wav"
        subprocess.run([exe, "-w", str(wav), text], check=True, capture_output=True, timeout=60)
        clips.append(load_audio(wav, target_sr=SR))
    return clips


def test_tiny_model_trains_on_synthetic_speech(tokenizer, extractor, utterances):
    batch = make_turboctc_batch(extractor, tokenizer, utterances, TEXTS)
    assert isinstance(batch, TurboCTCBatch) and batch.dropped == 0
    model = _tiny_model(len(tokenizer))
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)

    model.eval()
    with torch.no_grad():
        start = ctc_loss_turbo(model, batch).item()
    model.train()
    for _ in range(60):
        loss = ctc_loss_turbo(model, batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        end = ctc_loss_turbo(model, batch).item()
        logits = model(input_features=batch.input_features, attention_mask=batch.attention_mask).logits
        generated = model.generate(input_features=batch.input_features, attention_mask=batch.attention_mask)
    assert end < 0.5 * start, (start, end)

    # our decoder agrees with transformers' own greedy path + ParakeetTokenizer's CTC decode
    frames = [turboctc_frames(len(u)) for u in utterances]
    ours = greedy_ctc_decode(logits, frames, tokenizer)
    assert ours == tokenizer.batch_decode(generated, skip_special_tokens=True)


def test_vocabulary_grows_for_a_new_script_and_old_outputs_stay(tokenizer, extractor, tmp_path):
    from granite_train.models.turboctc_vocab import extend_turboctc_folder

    model = _tiny_model(len(tokenizer), seed=5).eval()
    _randomize_bn(model)
    folder = save_turboctc(model, tokenizer, tmp_path / "en")
    greek = list("καλημέρ")
    out = extend_turboctc_folder(folder, greek, tmp_path / "en_el", init="similar")
    grown = load_turboctc(out)
    tok = grown.processor.tokenizer
    old = len(tokenizer)
    assert len(tok) == old + len(greek) and grown.model.config.vocab_size == old + len(greek)
    assert [tok.convert_tokens_to_ids(c) for c in greek] == list(range(old, old + len(greek)))
    for text in TEXTS:  # old texts: the same ids
        assert turboctc_targets(tok, text) == turboctc_targets(tokenizer, text)
    ids = turboctc_targets(tok, "καλη μέρα")
    assert tok.decode(ids, skip_special_tokens=True, group_tokens=False) == "καλη μέρα"
    # the old outputs: log-probabilities over the old ids and the argmax path unchanged
    inputs = extractor([_noise(16000, 1), _noise(12000, 2)], sampling_rate=SR, return_tensors="pt")
    with torch.no_grad():
        before = model(**inputs).logits.log_softmax(-1)
        after = grown.model(**inputs).logits
    assert after.shape[-1] == old + len(greek)
    torch.testing.assert_close(after.log_softmax(-1)[..., :old], before, atol=1e-5, rtol=0)
    assert torch.equal(after.argmax(-1), before.argmax(-1))
    # "similar": a Greek letter's row copies the Latin one its name starts with, 25 below it
    alpha, a = tok.convert_tokens_to_ids("α"), tok.convert_tokens_to_ids("a")
    if a != tok.unk_token_id:
        head = grown.model.encoder.out
        assert torch.equal(head.weight[alpha], model.encoder.out.weight[a])
        assert head.bias[alpha].item() == pytest.approx(model.encoder.out.bias[a].item() - 25.0)
    with pytest.raises(ValueError, match="already in the BPE vocabulary"):
        extend_turboctc_folder(out, ["κ"], tmp_path / "again")
