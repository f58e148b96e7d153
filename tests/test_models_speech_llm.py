"""Stage 2: SpeechLLM assembly, padding exactness, what trains, LoRA merge, and a tiny training run."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace
from unittest.mock import patch

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM, GraniteSpeechForConditionalGeneration

from granite_train.data.collate import Collator
from granite_train.data.prepare import Example
from granite_train.data.prompts import ASR_INSTRUCTIONS, PromptBuilder, PromptConfig, SpeechLLMCollator
from granite_train.models.config import LoraSettings
from granite_train.models.encoder import CTCEncoder, encoder_config
from granite_train.models.export import export_hf_encoder, read_hf_folder
from granite_train.models.speech_llm import (
    SpeechLLM,
    assemble_speech_llm,
    build_speech_llm,
    load_speech_llm,
)
from granite_train.models.tiny_llm import EOS_TOKEN, PAD_TOKEN, build_tiny_llm
from granite_train.speech_format import AUDIO_TOKEN, IGNORE_INDEX
from granite_train.training.speech_llm_losses import (
    AudioCTCHead,
    audio_ctc_loss,
    audio_embed_loss,
    corrupt_target_inputs,
)
from tests.lora_reference import peft_merge_lora

WORDS = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel"]
SENTENCES = [" ".join(WORDS[i:] + WORDS[:i]) for i in range(8)] * 3 + [
    f"USER: {i}\n ASSISTANT:" for i in ASR_INSTRUCTIONS
] * 2
ENC = dict(
    num_layers=2, hidden_dim=32, num_heads=2, dim_head=16, conv_kernel_size=5, output_dim=40, dropout=0.0
)
PROJ = dict(
    preset="tiny",
    hidden_size=32,
    num_attention_heads=2,
    intermediate_size=64,
    hidden_dropout_prob=0.0,
    attention_probs_dropout_prob=0.0,
)
LORA = LoraSettings(rank=4, alpha=8.0, dropout=0.0)


def _random_encoder(seed: int = 0) -> CTCEncoder:
    torch.manual_seed(seed)
    enc = CTCEncoder(encoder_config("tiny", **ENC))
    # non-trivial BatchNorm statistics, so that "unchanged" and "loaded" mean something
    for name, buf in enc.named_buffers():
        if name.endswith("running_mean"):
            buf.copy_(0.1 * torch.randn_like(buf))
        elif name.endswith("running_var"):
            buf.copy_(1.0 + 0.5 * torch.rand_like(buf))
    return enc.eval()


@pytest.fixture(scope="module")
def parts(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("stage2_parts")
    enc_dir = export_hf_encoder(_random_encoder(), root / "encoder_hf")
    llm_dir = build_tiny_llm(root / "llm", SENTENCES, preset="micro", vocab_size=300)
    return {"root": root, "encoder": enc_dir, "llm": llm_dir}


def _assemble(parts) -> SpeechLLM:
    torch.manual_seed(1)
    return assemble_speech_llm(parts["encoder"], parts["llm"], projector=PROJ)


@pytest.fixture(scope="module")
def speech(parts) -> SpeechLLM:
    return _assemble(parts).eval()


def _examples(lengths=(16000, 7000, 11200)) -> list[Example]:
    out = []
    for i, n in enumerate(lengths):
        g = torch.Generator().manual_seed(10 + i)
        text = " ".join(WORDS[i : i + 3])
        out.append(
            Example(
                {"id": f"u{i}", "source": "s", "language": "en", "text": text},
                0.1 * torch.randn(n, generator=g),
                [],
            )
        )
    return out


def _collate(speech: SpeechLLM, examples):
    builder = PromptBuilder(speech.tokenizer, PromptConfig(vary_instructions=False))
    return SpeechLLMCollator(builder, Collator(compute_features=True))(examples)


def _loss(speech: SpeechLLM, batch, labels=None):
    return speech(
        batch.input_ids,
        batch.attention_mask,
        batch.features,
        batch.feature_lengths,
        batch.labels if labels is None else labels,
    )


# ------------------------------------------------------------------------------------------------
# construction
# ------------------------------------------------------------------------------------------------
def test_assembly_route_a_keeps_weights_and_released_layout(parts, speech):
    _, enc_state = read_hf_folder(parts["encoder"])
    ours = speech.encoder.state_dict()
    assert set(enc_state) <= set(ours)
    for k, v in enc_state.items():
        assert torch.equal(ours[k], v), k
    base = AutoModelForCausalLM.from_pretrained(str(parts["llm"]))
    llm = speech.language_model.state_dict()
    base_state = base.model.state_dict()
    assert set(llm) == set(base_state)
    for k, v in base_state.items():
        assert torch.equal(llm[k], v), k
    assert torch.equal(speech.hf.lm_head.weight, base.lm_head.weight)
    reference = GraniteSpeechForConditionalGeneration(speech.config)
    assert set(speech.hf.state_dict()) == set(reference.state_dict())
    assert speech.audio_token_id == speech.tokenizer.convert_tokens_to_ids(AUDIO_TOKEN)
    assert isinstance(speech.encoder, CTCEncoder)
    assert speech.config.projector_config.hidden_size == 32


def test_tiny_llm_attention_uses_the_standard_softmax_scale(parts):
    # GraniteConfig.attention_multiplier replaces 1/sqrt(head_dim); its default 1.0 would make
    # the tiny LLM's attention 4-8x sharper than standard
    config = AutoModelForCausalLM.from_pretrained(str(parts["llm"])).config
    head_dim = config.hidden_size // config.num_attention_heads
    assert config.attention_multiplier == pytest.approx(head_dim**-0.5)


def test_copy_row_layout():
    from data_prep.base_llm import copy_row

    prompt, audio, blank, eos = [5, 6, 99, 7, 8], 99, 0, 1
    target = [11, 12, 13, 14]
    for seed in range(20):
        gen = torch.Generator().manual_seed(seed)
        ids, labels = copy_row(target, prompt, audio, blank, eos, gen, span_factor=(1.5, 2.0), noise=0.0)
        span = ids[2 : len(ids) - len(target) - 1 - 2]
        assert ids[:2] == [5, 6] and ids[2 + len(span) : 4 + len(span)] == [7, 8]  # prompt kept around it
        assert 6 <= len(span) <= 8 and audio not in ids
        assert [t for t in span if t != blank] == target  # the target in order, among blanks
        assert ids[-5:] == target + [eos] and labels[-5:] == target + [eos]
        assert labels[:-5] == [-100] * (len(ids) - 5)  # loss on the target only
    gen = torch.Generator().manual_seed(0)
    noisy = [copy_row(target * 25, prompt, audio, blank, eos, gen, noise=0.5)[0] for _ in range(4)]
    kept = sum(sum(1 for t in ids[2:-103] if t in target) for ids in noisy) / (4 * 100)
    assert 0.35 < kept < 0.75  # about half the span's tokens swapped for random ones


def test_pretraining_mixes_copy_rows_and_saves(tmp_path):
    """copy_share decides which row types train; the trained weights are written back in place.

    (That copy rows teach the tiny LLM to read takes minutes: RESULTS.md, the copy probe.)"""
    from safetensors.torch import load_file

    from data_prep.base_llm import pretrain_text_lm

    llm = build_tiny_llm(tmp_path / "llm", SENTENCES, preset="micro", vocab_size=300)
    before = load_file(llm / "model.safetensors")
    mixed = pretrain_text_lm(llm, SENTENCES, steps=6, batch_size=8, progress=False, copy_share=0.5)
    assert set(mixed) == {"first_loss", "last_loss", "last_lm_loss", "last_copy_loss"}
    assert all(math.isfinite(v) for v in mixed.values())
    after = load_file(llm / "model.safetensors")
    assert any(not torch.equal(before[k], after[k]) for k in before)
    text_only = pretrain_text_lm(llm, SENTENCES, steps=2, batch_size=4, progress=False)
    assert "last_copy_loss" not in text_only and "last_lm_loss" in text_only
    copy_only = pretrain_text_lm(llm, SENTENCES, steps=2, batch_size=4, progress=False, copy_share=1.0)
    assert "last_lm_loss" not in copy_only and "last_copy_loss" in copy_only
    with pytest.raises(ValueError, match="copy_share"):
        pretrain_text_lm(llm, SENTENCES, steps=1, copy_share=1.5)


def test_base_llm_build_is_reused_only_for_the_same_settings(tmp_path, capsys):
    """A re-run demo must not rebuild (and so change) the LLM under a resumed stage 2."""
    from data_prep.base_llm import PRETRAINING_RECORD, build_base_llm

    out = tmp_path / "llm"
    args = dict(
        preset="micro", vocab_size=300, pretrain_steps=2, copy_share=0.5, batch_size=4, progress=False
    )
    first = build_base_llm(out, SENTENCES, **args)
    assert first["settings"]["copy_share"] == 0.5 and math.isfinite(first["losses"]["last_loss"])
    assert (out / PRETRAINING_RECORD).is_file()
    weights = (out / "model.safetensors").read_bytes()
    capsys.readouterr()
    assert build_base_llm(out, SENTENCES, **args) == first
    assert "reusing" in capsys.readouterr().out
    assert (out / "model.safetensors").read_bytes() == weights
    # other settings: built again (the copy-only build has no LM-row loss)
    again = build_base_llm(out, SENTENCES, **{**args, "copy_share": 1.0})
    assert "last_lm_loss" not in again["losses"] and "last_copy_loss" in again["losses"]
    assert (out / "model.safetensors").read_bytes() != weights
    # as many texts, but other ones: built again too
    other = [t.upper() for t in SENTENCES]
    capsys.readouterr()
    build_base_llm(out, other, **{**args, "copy_share": 1.0, "keep_case": True})
    build_base_llm(out, SENTENCES, **{**args, "copy_share": 1.0, "keep_case": True})
    assert "reusing" not in capsys.readouterr().out


def test_tokenizer_without_audio_token_gets_it_and_embeddings_resize(parts, tmp_path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GraniteConfig, GraniteForCausalLM, PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(
        SENTENCES,
        trainers.BpeTrainer(
            vocab_size=280,
            special_tokens=[EOS_TOKEN, PAD_TOKEN],
            show_progress=False,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        ),
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token=EOS_TOKEN, bos_token=EOS_TOKEN, pad_token=PAD_TOKEN
    )
    assert AUDIO_TOKEN not in fast.get_vocab()
    n = len(fast)
    model = GraniteForCausalLM(
        GraniteConfig(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=1,
            vocab_size=n,
        )
    )
    folder = tmp_path / "llm_no_audio"
    model.save_pretrained(folder)
    fast.save_pretrained(folder)
    speech = assemble_speech_llm(parts["encoder"], folder, projector=PROJ)
    assert speech.tokenizer.convert_tokens_to_ids(AUDIO_TOKEN) == n == speech.audio_token_id
    assert speech.hf.get_input_embeddings().weight.shape[0] == n + 1
    assert speech.config.text_config.vocab_size == n + 1
    assert speech.tokenizer.chat_template  # the default template is supplied
    assert torch.equal(speech.hf.get_input_embeddings().weight[:n], model.get_input_embeddings().weight)


def test_route_b_save_pretrained_roundtrip(parts, speech, tmp_path):
    folder = tmp_path / "gs"
    speech.hf.save_pretrained(folder)
    speech.tokenizer.save_pretrained(folder)
    loaded = load_speech_llm(folder).eval()
    assert isinstance(loaded.encoder, CTCEncoder)
    for k, v in speech.hf.state_dict().items():
        assert torch.equal(loaded.hf.state_dict()[k], v), k
    batch = _collate(speech, _examples())
    with torch.no_grad():
        a, b = _loss(speech, batch), _loss(loaded, batch)
    assert float(a.loss) == pytest.approx(float(b.loss), abs=1e-6)
    assert a.num_tokens == b.num_tokens
    # build_speech_llm(init=...) goes the same way
    built = build_speech_llm({"init": str(folder), "lora": None, "train": {"projector": True}})
    assert not built.has_lora and built.frozen == {"encoder", "llm"}


# ------------------------------------------------------------------------------------------------
# padding exactness
# ------------------------------------------------------------------------------------------------
def test_padded_batch_loss_equals_each_example_alone(speech):
    examples = _examples()
    batch = _collate(speech, examples)
    assert len(set(batch.feature_lengths.tolist())) == 3  # really padded
    with torch.no_grad():
        whole = _loss(speech, batch)
        singles = [_loss(speech, _collate(speech, [e])) for e in examples]
        for i, single in enumerate(singles):
            labels = batch.labels.clone()
            labels[torch.arange(3) != i] = IGNORE_INDEX  # only example i counts
            alone_in_batch = _loss(speech, batch, labels)
            assert alone_in_batch.num_tokens == single.num_tokens
            assert float(alone_in_batch.loss) == pytest.approx(float(single.loss), abs=1e-5)
    weighted = sum(float(s.loss) * s.num_tokens for s in singles) / sum(s.num_tokens for s in singles)
    assert float(whole.loss) == pytest.approx(weighted, abs=1e-5)
    assert whole.num_tokens == sum(s.num_tokens for s in singles)


def _ctc_head(speech: SpeechLLM, seed: int = 3) -> AudioCTCHead:
    torch.manual_seed(seed)
    return AudioCTCHead(speech.config.text_config.hidden_size, len(speech.tokenizer))


def _audio_ctc(speech, out, labels, head):
    return audio_ctc_loss(
        out.audio_embeds, out.audio_token_counts, labels, head, blank=speech.tokenizer.pad_token_id
    )


def test_audio_ctc_equals_ctc_of_each_utterance(speech):
    examples = _examples((16000, 12000, 24000))
    batch = _collate(speech, examples)
    head = _ctc_head(speech)
    with torch.no_grad():
        out = _loss(speech, batch)
        ctc, dropped = _audio_ctc(speech, out, batch.labels, head)
        audio, counts = speech.audio_embeds(batch.features, batch.feature_lengths)
    assert dropped == 0 and ctc is not None
    assert torch.equal(out.audio_embeds, audio) and torch.equal(out.audio_token_counts, counts)
    # by hand, one utterance at a time: pad token as blank, targets = labelled tokens minus EOS
    total, n_targets = 0.0, 0
    for i in range(len(examples)):
        target = batch.labels[i][batch.labels[i] != IGNORE_INDEX]
        assert int(target[-1]) == speech.tokenizer.eos_token_id
        target = target[:-1]
        with torch.no_grad():
            log_probs = head(audio[i, : counts[i]]).log_softmax(-1)
        total += float(
            torch.nn.functional.ctc_loss(
                log_probs,
                target,
                [int(counts[i])],
                [len(target)],
                blank=speech.tokenizer.pad_token_id,
                reduction="sum",
            )
        )
        n_targets += len(target)
    assert float(ctc) == pytest.approx(total / n_targets, rel=1e-4)
    # the head is blind to the audio tokens' scale
    with torch.no_grad():
        assert torch.allclose(head(3.0 * audio), head(audio), atol=2e-3)  # up to the LayerNorm eps


def _widened(batch, extra: int):
    """input_ids / attention_mask / labels of ``batch`` with ``extra`` more right-padding columns."""
    pad = lambda t, v: torch.cat([t, torch.full((t.shape[0], extra), v, dtype=t.dtype)], dim=1)  # noqa: E731
    return pad(batch.input_ids, 1), pad(batch.attention_mask, 0), pad(batch.labels, IGNORE_INDEX)


def _with_target(labels: torch.Tensor, row: int, target: list[int]) -> torch.Tensor:
    """``labels`` with row ``row``'s target replaced by ``target`` + EOS (same start)."""
    labels = labels.clone()
    start = int((labels[row] != IGNORE_INDEX).nonzero()[0])
    labels[row, start:] = IGNORE_INDEX
    labels[row, start : start + len(target) + 1] = torch.tensor(target + [0])
    return labels


def test_audio_ctc_drops_and_counts_utterances_it_cannot_align(speech):
    batch = _collate(speech, _examples((16000, 7000)))
    n_audio = [int((ids == speech.audio_token_id).sum()) for ids in batch.input_ids]
    input_ids, attention_mask, wide = _widened(batch, 2 * max(n_audio) + 2)
    head = _ctc_head(speech)

    def run(labels):
        with torch.no_grad():
            out = speech(input_ids, attention_mask, batch.features, batch.feature_lengths, labels)
            return _audio_ctc(speech, out, labels, head)

    with torch.no_grad():
        audio, counts = speech.audio_embeds(batch.features, batch.feature_lengths)
        first_alone, dropped = audio_ctc_loss(
            audio[:1], counts[:1], wide[:1], head, blank=speech.tokenizer.pad_token_id
        )
    assert dropped == 0 and counts.tolist() == n_audio
    # more target tokens than audio tokens: left out and counted; the CTC term is the other row's
    ctc, dropped = run(_with_target(wide, 1, [5, 6] * n_audio[1]))
    assert dropped == 1
    assert float(ctc) == pytest.approx(float(first_alone), rel=1e-5)
    # as many tokens as audio tokens, but repeats need blanks between them: not alignable either
    assert run(_with_target(wide, 1, [5] * n_audio[1]))[1] == 1
    assert run(_with_target(wide, 1, [5, 6] * (n_audio[1] // 2)))[1] == 0  # fits
    # nothing alignable: no CTC term at all
    labels = _with_target(_with_target(wide, 0, [5] * n_audio[0]), 1, [5] * n_audio[1])
    assert run(labels) == (None, 2)


def test_audio_ctc_trains_projector_and_head_not_the_llm(parts):
    speech = _assemble(parts)
    speech.set_trainable(projector=True, lora=False, llm=True)
    head = _ctc_head(speech)
    batch = _collate(speech, _examples((16000, 24000)))
    audio, counts = speech.audio_embeds(batch.features, batch.feature_lengths)
    ctc, dropped = audio_ctc_loss(audio, counts, batch.labels, head, blank=speech.tokenizer.pad_token_id)
    assert dropped == 0
    ctc.backward()
    llm = [p for p in speech.language_model.parameters() if p.requires_grad]
    assert llm and all(p.grad is None for p in llm)
    grads = {n: p.grad for n, p in speech.projector.named_parameters()}
    for name in ("query", "linear.weight"):
        assert grads[name] is not None and float(grads[name].abs().max()) > 0, name
    assert float(head.proj.weight.grad.abs().max()) > 0


def test_tied_audio_ctc_head_reads_the_llm_embeddings_by_cosine_and_trains_none_of_them(parts):
    speech = _assemble(parts)
    speech.set_trainable(projector=True, lora=False, llm=True)
    table = speech.hf.get_input_embeddings().weight
    vocab = len(speech.tokenizer)
    blank = speech.tokenizer.pad_token_id
    head = AudioCTCHead(speech.config.text_config.hidden_size, vocab, tied_to=lambda: table, blank=blank)
    # no (V, D) matrix: a temperature and a bias per token; the blank starts at a cosine of 0.4
    assert sum(p.numel() for p in head.parameters()) == vocab + 1
    assert float(head.bias[blank]) == pytest.approx(0.4 * 24.0) and float(
        head.bias.abs().sum()
    ) == pytest.approx(9.6)
    with torch.no_grad():
        head.bias.copy_(torch.linspace(-1, 1, vocab))
    audio = torch.randn(2, 7, table.shape[1]) * 3 + 0.5
    logits = head(audio)
    # by hand: 24 x cosine(audio, embedding row), both centred on the mean embedding, + bias
    # (torch's cosine_similarity); the blank is read from its bias alone
    rows = table[:vocab].detach()
    center = rows.mean(0)
    cosine = F.cosine_similarity((audio - center)[:, :, None, :], (rows - center)[None, None], dim=-1)
    cosine[..., blank] = 0.0
    assert torch.allclose(logits, 24.0 * cosine + head.bias, atol=1e-4)
    # the embedding pull reads blank as silence: a token the head reads as blank is pulled to zero
    with torch.no_grad():
        head.bias.fill_(-100.0)
        head.bias[blank] = 100.0
    pull = audio_embed_loss(audio, torch.tensor([7, 7]), head, table)
    expected = audio.pow(2).sum(-1).mean() / table.detach().pow(2).sum(-1).mean()
    assert float(pull) == pytest.approx(float(expected), rel=1e-5)
    # with no bias, an audio token equal to an embedding row is read as that token
    with torch.no_grad():
        head.bias.zero_()
    picks = torch.tensor([5, 9, 11])
    assert head(table[picks].detach()[None]).argmax(-1).tolist() == [picks.tolist()]
    # the gradient reaches the audio and the head, never the LLM's table
    audio.requires_grad_(True)
    head(audio).logsumexp(-1).sum().backward()
    assert audio.grad is not None and float(audio.grad.abs().max()) > 0
    assert head.log_scale.grad is not None and table.grad is None


def test_tied_audio_ctc_reads_the_heard_tokens_only(speech):
    table = speech.hf.get_input_embeddings().weight
    blank, vocab = speech.tokenizer.pad_token_id, len(speech.tokenizer)
    head = AudioCTCHead(speech.config.text_config.hidden_size, vocab, tied_to=lambda: table, blank=blank)
    batch = _collate(speech, _examples((16000, 12000)))
    with torch.no_grad():
        out = _loss(speech, batch)
        ctc, dropped = _audio_ctc(speech, out, batch.labels, head)
    targets = [row[row != IGNORE_INDEX][:-1] for row in batch.labels]
    heard = sorted({blank, *torch.cat(targets).tolist()})
    assert dropped == 0 and head.heard.nonzero().squeeze(1).tolist() == heard
    # by hand: torch's CTC over the logits of the heard rows, targets renumbered into them
    ids = torch.tensor(heard)
    with torch.no_grad():
        logits = head(out.audio_embeds, rows=ids).float().log_softmax(-1).transpose(0, 1)
    renumber = {t: i for i, t in enumerate(heard)}
    flat = torch.tensor([renumber[t] for t in torch.cat(targets).tolist()])
    lengths = torch.tensor([len(t) for t in targets])
    expected = F.ctc_loss(
        logits, flat, out.audio_token_counts, lengths, blank=renumber[blank], reduction="sum"
    )
    assert float(ctc) == pytest.approx(float(expected) / int(lengths.sum()), rel=1e-5)
    # the heard set is kept with the checkpoint
    assert torch.equal(head.state_dict()["heard"], head.heard)


def test_audio_embed_loss_pulls_only_the_projector_to_the_embeddings_the_head_reads(parts):
    speech = _assemble(parts)
    speech.set_trainable(projector=True, lora=False, llm=True)
    head = _ctc_head(speech)
    batch = _collate(speech, _examples((16000, 9000)))
    audio, counts = speech.audio_embeds(batch.features, batch.feature_lengths)
    embeddings = speech.hf.get_input_embeddings().weight
    pull = audio_embed_loss(audio, counts, head, embeddings)
    # by hand: real audio tokens only, target = head posterior x embedding table
    table = speech.hf.get_input_embeddings().weight.detach()
    total, n = 0.0, 0
    for i in range(2):
        real = audio[i, : counts[i]].detach()
        with torch.no_grad():
            target = head(real).softmax(-1)[:, : table.shape[0]] @ table
        total += float((real - target).pow(2).sum())
        n += int(counts[i])
    assert float(pull.detach()) == pytest.approx(total / n / float(table.pow(2).sum(-1).mean()), rel=1e-4)
    # padded audio tokens do not count: changing them leaves the loss as it is
    assert counts[1] < audio.shape[1]
    moved = audio.detach().clone()
    moved[1, counts[1] :] += 5.0
    assert float(audio_embed_loss(moved, counts, head, embeddings)) == pytest.approx(float(pull), rel=1e-6)
    # tokens that are already the embeddings the head reads cost nothing
    with torch.no_grad():
        hard = torch.zeros_like(audio)
        for i in range(2):
            hard[i, : counts[i]] = table[speech.tokenizer.pad_token_id]
        head.proj.weight.zero_()
        head.proj.bias.fill_(-30.0)
        head.proj.bias[speech.tokenizer.pad_token_id] = 30.0  # the head reads blank everywhere
    assert float(audio_embed_loss(hard, counts, head, embeddings)) < 1e-8
    # the gradient reaches the projector only: the posterior and the table are constants
    pull.backward()
    assert float(speech.projector.linear.weight.grad.abs().max()) > 0
    assert all(p.grad is None for p in speech.language_model.parameters())
    assert head.proj.weight.grad is None


def test_audio_embed_weight_needs_the_ctc_head(parts, tmp_path):
    from granite_train.training.speech_llm_module import SpeechLLMModule

    model = dict(
        encoder=str(parts["encoder"]),
        llm=str(parts["llm"]),
        lora=None,
        loss={"audio_ctc_weight": 0.0, "audio_embed_weight": 1.0},
    )
    with pytest.raises(ValueError, match="audio_ctc_weight"):
        SpeechLLMModule(model, {"lr": 1e-3}, total_steps=10)


def test_stage2_module_adds_the_auxiliary_losses_the_exported_model_does_not_carry(parts):
    from granite_train.training.speech_llm_module import SpeechLLMModule

    model = dict(encoder=str(parts["encoder"]), llm=str(parts["llm"]), lora=None, projector=PROJ,
                 train={"projector": True, "llm": True},
                 loss={"audio_ctc_weight": 0.5, "audio_embed_weight": 0.25})  # fmt: skip
    module = SpeechLLMModule(model, {"lr": 1e-3}, total_steps=10)
    batch = _collate(module.model, _examples((16000, 12000)))
    with torch.no_grad():
        loss, extra = module.compute_loss(batch)
        out = _loss(module.model, batch)
        ctc, _ = _audio_ctc(module.model, out, batch.labels, module.audio_ctc_head)
        embeddings = module.model.hf.get_input_embeddings().weight
        pull = audio_embed_loss(out.audio_embeds, out.audio_token_counts, module.audio_ctc_head, embeddings)
    expected = float(out.loss) + 0.5 * float(ctc) + 0.25 * float(pull)
    assert float(loss) == pytest.approx(expected, rel=1e-6)
    assert float(extra["lm_loss"]) == pytest.approx(float(out.loss), rel=1e-6)
    assert float(extra["audio_ctc_loss"]) == pytest.approx(float(ctc), rel=1e-6)
    # the head trains with the module but is no part of the model that is exported
    assert not any("audio_ctc" in n for n in module.model.state_dict())
    assert any(n.startswith("audio_ctc_head.") for n in module.state_dict())


def test_projector_warmup_steps_train_the_projector_on_the_audio_losses_without_running_the_llm(parts):
    from granite_train.training.speech_llm_module import SpeechLLMModule

    model = dict(encoder=str(parts["encoder"]), llm=str(parts["llm"]), lora={"rank": 4}, projector=PROJ,
                 train={"projector": True, "lora": True},
                 loss={"audio_ctc_weight": 0.5, "audio_ctc_head": "tied", "audio_embed_weight": 0.25,
                       "projector_warmup_steps": 3})  # fmt: skip
    module = SpeechLLMModule(model, {"lr": 1e-3}, total_steps=10).train()
    assert sum(p.numel() for p in module.audio_ctc_head.parameters()) == len(module.tokenizer) + 1
    batch = _collate(module.model, _examples((16000, 12000)))
    calls = []
    hook = module.model.language_model.register_forward_hook(lambda *a: calls.append(1))
    loss, extra = module.compute_loss(batch)  # global_step 0 < 3: warm-up
    assert calls == [] and "lm_loss" not in extra
    with torch.no_grad():
        audio, counts = module.model.audio_embeds(batch.features, batch.feature_lengths)
        ctc, _ = _audio_ctc(module.model, SimpleNamespace(audio_embeds=audio, audio_token_counts=counts),
                            batch.labels, module.audio_ctc_head)  # fmt: skip
        pull = audio_embed_loss(
            audio, counts, module.audio_ctc_head, module.model.hf.get_input_embeddings().weight
        )
    assert float(loss) == pytest.approx(0.5 * float(ctc) + 0.25 * float(pull), rel=1e-5)
    loss.backward()
    assert float(module.model.projector.linear.weight.grad.abs().max()) > 0
    lora = [p for n, p in module.model.language_model.named_parameters() if "lora_" in n]
    assert lora and all(p.grad is not None and float(p.grad.abs().max()) == 0.0 for p in lora)  # DDP-safe
    # from step 3 on the LLM runs and its loss is added
    module.zero_grad()
    with patch.object(type(module), "global_step", new=property(lambda self: 3)):
        loss, extra = module.compute_loss(batch)
    assert calls and "lm_loss" in extra
    hook.remove()


def test_projector_warmup_needs_the_audio_ctc(parts):
    from granite_train.training.speech_llm_module import SpeechLLMModule

    model = dict(encoder=str(parts["encoder"]), llm=str(parts["llm"]), lora=None, projector=PROJ,
                 loss={"projector_warmup_steps": 10})  # fmt: skip
    with pytest.raises(ValueError, match="projector_warmup_steps.*audio_ctc_weight"):
        SpeechLLMModule(model, {"lr": 1e-3}, total_steps=10)
    with pytest.raises(ValueError, match="audio_ctc_head must be one of linear, tied, not 'big'"):
        SpeechLLMModule(
            {**model, "loss": {"audio_ctc_weight": 1.0, "audio_ctc_head": "big"}}, {"lr": 1e-3}, 10
        )


def test_audio_ctc_head_keeps_a_zero_gradient_when_every_utterance_is_dropped(parts):
    """A DDP rank whose batch has no alignable utterance still reduces a gradient for the head."""
    from granite_train.training.speech_llm_module import SpeechLLMModule

    model = dict(encoder=str(parts["encoder"]), llm=str(parts["llm"]), lora=None, projector=PROJ,
                 train={"projector": True, "llm": True}, loss={"audio_ctc_weight": 0.5})  # fmt: skip
    module = SpeechLLMModule(model, {"lr": 1e-3}, total_steps=10).train()
    batch = _collate(module.model, _examples((1600, 1600)))  # 0.1 s: fewer audio tokens than words
    loss, extra = module.compute_loss(batch)
    assert module.counters["skipped/audio_ctc_too_short"] == 2 and "audio_ctc_loss" not in extra
    assert float(loss) == pytest.approx(float(extra["lm_loss"]), rel=1e-6)
    loss.backward()
    grads = [p.grad for p in module.audio_ctc_head.parameters()]
    assert grads and all(g is not None and float(g.abs().max()) == 0.0 for g in grads)


def test_target_token_noise_replaces_only_target_inputs():
    torch.manual_seed(0)
    input_ids = torch.randint(0, 50, (64, 40))
    labels = torch.full_like(input_ids, IGNORE_INDEX)
    labels[:, 25:38] = input_ids[:, 25:38]  # prompt before, padding after
    allowed = torch.tensor([100, 101, 102])
    assert corrupt_target_inputs(input_ids, labels, 0.0, allowed) is input_ids
    noisy = corrupt_target_inputs(input_ids, labels, 0.3, allowed)
    changed = noisy != input_ids
    assert not changed[labels == IGNORE_INDEX].any()  # prompt, audio and padding untouched
    assert set(noisy[changed].tolist()) <= {100, 101, 102}
    share = float(changed[labels != IGNORE_INDEX].float().mean())
    assert 0.25 < share < 0.35  # 832 draws at 0.3
    torch.manual_seed(0)
    input_ids2 = torch.randint(0, 50, (64, 40))
    assert torch.equal(corrupt_target_inputs(input_ids2, labels, 0.3, allowed), noisy)  # seeded: resumable
    with pytest.raises(ValueError, match="noise"):
        corrupt_target_inputs(input_ids, labels, 1.0, allowed)


def test_encoder_cache_serves_the_frozen_encoder_exactly(parts):
    from granite_train.training.speech_llm_module import SpeechLLMModule

    model = dict(
        encoder=str(parts["encoder"]),
        llm=str(parts["llm"]),
        lora=None,
        projector=PROJ,
        train={"projector": True, "llm": True},
        encoder_cache_gb=0.01,
    )
    torch.manual_seed(1)
    cached = SpeechLLMModule(model, {"lr": 1e-3}, total_steps=10).train()
    torch.manual_seed(1)
    plain = SpeechLLMModule({**model, "encoder_cache_gb": 0}, {"lr": 1e-3}, total_steps=10).train()
    assert plain.encoder_cache is None
    calls = []
    cached.model.encoder.register_forward_hook(lambda *args: calls.append(1))
    batch = _collate(cached.model, _examples())
    reference, _ = plain.compute_loss(batch)
    for expected_calls in (3, 3):  # encoded on the first pass only, each utterance alone
        loss, _ = cached.compute_loss(batch)
        assert len(calls) == expected_calls
        assert float(loss.detach()) == pytest.approx(float(reference.detach()), rel=1e-5)
    assert cached.counters["encoder_cache/hits"] == 3 and cached.counters["encoder_cache/misses"] == 3
    loss.backward()  # the projector still trains through cached outputs
    assert float(cached.model.projector.linear.weight.grad.abs().max()) > 0
    # validation does not use it
    cached.eval()
    cached.compute_loss(batch)
    assert len(calls) == 4
    with pytest.raises(ValueError, match="frozen encoder"):
        SpeechLLMModule(
            {**model, "train": {"projector": True, "encoder": True}}, {"lr": 1e-3}, total_steps=10
        )


def test_module_rejects_bad_target_token_noise(parts):
    from granite_train.training.speech_llm_module import SpeechLLMModule

    model = dict(
        encoder=str(parts["encoder"]), llm=str(parts["llm"]), lora=None, loss={"target_token_noise": -0.1}
    )
    with pytest.raises(ValueError, match="target_token_noise"):
        SpeechLLMModule(model, {"lr": 1e-3}, total_steps=10)


def test_audio_embeddings_equal_transformers_reference(speech):
    reference = GraniteSpeechForConditionalGeneration(speech.config).eval()
    reference.load_state_dict(speech.hf.state_dict(), strict=True)
    assert not isinstance(reference.model.encoder, CTCEncoder)
    examples = _examples()
    batch = _collate(speech, examples)
    with torch.no_grad():
        merged = speech.embed_inputs(batch.input_ids, batch.features, batch.feature_lengths)
        table = speech.hf.get_input_embeddings().weight
        for i, e in enumerate(examples):
            single = _collate(speech, [e])
            ref = reference.get_audio_features(single.features).pooler_output[0]  # (Q, D)
            is_audio = batch.input_ids[i] == speech.audio_token_id
            assert int(is_audio.sum()) == ref.shape[0]
            torch.testing.assert_close(merged[i][is_audio], ref, atol=1e-5, rtol=0)
            # text positions keep their token embeddings
            assert torch.equal(merged[i][~is_audio], table[batch.input_ids[i][~is_audio]])


# ------------------------------------------------------------------------------------------------
# what trains
# ------------------------------------------------------------------------------------------------
def test_projector_and_lora_train_everything_else_is_frozen(parts):
    speech = _assemble(parts)
    with pytest.raises(ValueError, match="no LoRA"):
        speech.set_trainable(projector=True, lora=True)
    speech.add_lora(LORA)
    assert speech.has_lora and speech.config.has_lora_adapter
    lora_modules = [n for n, _ in speech.hf.named_modules() if n.endswith("lora_A")]
    assert lora_modules and all(".language_model." in f".{n}" for n in lora_modules)
    assert {n.split(".")[-2] for n in lora_modules} == {"q_proj", "v_proj"}
    speech.set_trainable(projector=True, lora=True)
    counts = speech.parameter_counts()
    params = dict(speech.hf.named_parameters())
    assert counts["trainable"] == sum(p.numel() for p in params.values() if p.requires_grad)
    assert counts["total"] == sum(p.numel() for p in params.values())
    assert counts["trainable"] == counts["trainable/projector"] + counts["trainable/lora"]
    assert counts["trainable/lora"] == sum(p.numel() for n, p in params.items() if "lora_" in n)

    speech.train()
    assert not speech.encoder.training and not any(m.training for m in speech.encoder.modules())
    assert speech.projector.training and speech.language_model.training
    before = {k: v.detach().clone() for k, v in speech.hf.state_dict().items()}
    optimizer = torch.optim.AdamW([p for p in speech.parameters() if p.requires_grad], lr=1e-2)
    batch = _collate(speech, _examples())
    for _ in range(3):
        optimizer.zero_grad()
        _loss(speech, batch).loss.backward()
        optimizer.step()
    after = speech.hf.state_dict()
    changed = {k for k, v in before.items() if not torch.equal(v, after[k])}
    assert changed, "nothing trained"
    bad = [k for k in changed if not (k.startswith("model.projector.") or "lora_" in k)]
    assert not bad, bad
    assert any("lora_A" in k for k in changed) and any("lora_B" in k for k in changed)
    assert any(k.startswith("model.projector.") for k in changed)
    assert not any(k.startswith("model.encoder.") for k in changed)  # BatchNorm stats included
    assert any("running_mean" in k for k in before if k.startswith("model.encoder."))


def test_lora_targets_outside_llm_rejected(parts):
    speech = _assemble(parts)
    with pytest.raises(ValueError, match="outside the LLM"):
        speech.add_lora(LoraSettings(rank=2, target_modules=["query", "q_proj"]))  # Q-Former's "query"


def test_merge_lora_keeps_outputs(parts):
    speech = _assemble(parts)
    speech.add_lora(LORA)
    torch.manual_seed(3)
    with torch.no_grad():
        for name, p in speech.hf.named_parameters():
            if "lora_B" in name:  # B starts at zero: make the adapter do something
                p.copy_(0.2 * torch.randn_like(p))
    speech.eval()
    batch = _collate(speech, _examples())
    with torch.no_grad():
        embeds = speech.embed_inputs(batch.input_ids, batch.features, batch.feature_lengths)
        hidden = speech.language_model(
            inputs_embeds=embeds, attention_mask=batch.attention_mask
        ).last_hidden_state
        loss = float(_loss(speech, batch).loss)
        peft_merge_lora(speech)
        assert not speech.has_lora and not speech.config.has_lora_adapter
        assert not any("lora_" in n for n, _ in speech.hf.named_parameters())
        hidden2 = speech.language_model(
            inputs_embeds=embeds, attention_mask=batch.attention_mask
        ).last_hidden_state
        loss2 = float(_loss(speech, batch).loss)
    # the adapter mattered, and merging kept it
    base = _assemble(parts).eval()
    with torch.no_grad():
        hidden0 = base.language_model(
            inputs_embeds=embeds, attention_mask=batch.attention_mask
        ).last_hidden_state
    assert (hidden0 - hidden).abs().max() > 1e-3
    torch.testing.assert_close(hidden2, hidden, atol=1e-5, rtol=0)
    assert loss2 == pytest.approx(loss, abs=1e-5)
    assert set(speech.hf.state_dict()) == set(
        GraniteSpeechForConditionalGeneration(speech.config).state_dict()
    )


# ------------------------------------------------------------------------------------------------
# a tiny training run
# ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    from tests.corpus import make_corpus

    root = tmp_path_factory.mktemp("s2corpus")
    make_corpus(root, "train", n=4, num_shards=1, durations=(0.5, 0.8), seed=1)
    make_corpus(root, "test", n=2, num_shards=1, durations=(0.5, 0.8), seed=2)
    return root


def _run_overrides(parts, corpus: Path, out: Path, *extra: str) -> list[str]:
    proj = [f"++model.projector.{k}={v}" for k, v in PROJ.items() if k != "preset"]
    return [
        f"output_dir={out}",
        f"model.encoder={parts['encoder']}",
        f"model.llm={parts['llm']}",
        *proj,
        f"data.train.sources=[{{name: tr, path: '{corpus}/train', kind: parquet, language: en, task: asr}}]",
        f"data.val.sources=[{{name: te, path: '{corpus}/test', kind: parquet, language: en, task: asr}}]",
        "data.train.max_frames=200",
        "data.train.shuffle_buffer=4",
        "data.train.num_buckets=1",
        "data.val.max_frames=400",
        "data.num_workers=0",
        "logger=csv",
        "trainer.enable_progress_bar=false",
        "trainer.log_every_n_steps=1",
        "trainer.threads=1",
        "trainer.precision=32-true",
        "trainer.export_hf=false",
        "optim.lr=3e-3",
        "optim.schedule.warmup_steps=2",
        "validation.max_new_tokens=8",
        *extra,
    ]


def test_training_run_overfits_and_checkpoints(parts, corpus, tmp_path, capfd):
    from granite_train.recipes import load_recipe
    from granite_train.training.callbacks import read_metrics_csv
    from granite_train.training.run import train

    cfg = load_recipe(
        "speech_llm_tiny_en",
        _run_overrides(
            parts,
            corpus,
            tmp_path,
            "trainer.max_steps=20",
            "trainer.val_every_n_steps=20",
            "trainer.checkpoint_every_n_steps=20",
            "optim.start_step.language_model=10",  # the recipe holds the LLM for 300 steps
        ),
    )
    assert cfg["optim"]["start_step"] == {"language_model": 10}
    result = train(cfg)
    assert result.global_step == 20
    printed = capfd.readouterr()
    assert "[stage 2] trainable" in printed.out + printed.err
    rows = read_metrics_csv(tmp_path / "metrics.csv")
    losses = [r["train/loss"] for r in rows if "train/loss" in r]
    assert len(losses) >= 15
    first, last = sum(losses[:3]) / 3, sum(losses[-3:]) / 3
    assert last < 0.7 * first, losses
    assert any("val/wer" in r for r in rows) and any("val/loss" in r for r in rows)
    assert (tmp_path / "processor").is_dir()
    ckpt = torch.load(result.last_checkpoint, map_location="cpu", weights_only=True)
    info = ckpt["speech_llm"]
    assert info["config"]["model_type"] == "granite_speech" and info["lora"] is None
    assert info["config"]["projector_config"]["hidden_size"] == 32
    _, enc_state = read_hf_folder(parts["encoder"])
    state = ckpt["state_dict"]
    for k, v in enc_state.items():  # the frozen encoder (BatchNorm statistics too) is as it was
        assert torch.equal(state[f"model.hf.model.encoder.{k}"], v), k
    # the LLM trained (recipe: llm=true) once its held steps were over, so the run did change it
    base = AutoModelForCausalLM.from_pretrained(str(parts["llm"]))
    assert not torch.equal(state["model.hf.model.language_model.norm.weight"], base.model.norm.weight)


def test_training_run_skips_nan_step(parts, corpus, tmp_path):
    from granite_train.recipes import load_recipe
    from granite_train.training.callbacks import read_metrics_csv
    from granite_train.training.run import train

    cfg = load_recipe(
        "speech_llm_tiny_en",
        _run_overrides(
            parts,
            corpus,
            tmp_path,
            "trainer.max_steps=4",
            "trainer.val_every_n_steps=null",
            "debug.fault_injection={nan_loss_at_steps: [2]}",
            "model.loss.audio_ctc_weight=0.5",
        ),
    )
    result = train(cfg)
    assert result.global_step == 4
    assert result.counters["nonfinite_steps"] == 1
    assert result.counters["target_tokens"] > 0
    # the auxiliary CTC head trains and is logged, but stays out of the model (and its export)
    rows = read_metrics_csv(tmp_path / "metrics.csv")
    ctc = [r["train/audio_ctc_loss"] for r in rows if "train/audio_ctc_loss" in r]
    assert ctc and all(math.isfinite(v) and v > 0 for v in ctc)
    pairs = [(r["train/lm_loss"], r["train/loss"]) for r in rows if "train/lm_loss" in r]
    assert pairs and all(lm <= total for lm, total in pairs if math.isfinite(total))
    state = torch.load(result.last_checkpoint, map_location="cpu", weights_only=True)["state_dict"]
    assert "audio_ctc_head.proj.weight" in state
    assert not any("audio_ctc" in k for k in state if k.startswith("model."))


def test_top_encoder_layers_train_with_the_encoder_ctc_as_an_auxiliary(parts):
    from granite_train.models.ctc_loss import SelfConditionedCTCLoss
    from granite_train.text.vocab import CharVocab
    from granite_train.training.speech_llm_module import SpeechLLMModule

    model = dict(encoder=str(parts["encoder"]), llm=str(parts["llm"]), lora=None, projector=PROJ,
                 train={"projector": True, "encoder_layers": 1}, loss={"encoder_ctc_weight": 0.5})  # fmt: skip
    module = SpeechLLMModule(model, {"lr": 1e-3}, total_steps=10).train()
    speech = module.model
    top = len(speech.encoder.layers) - 1
    trainable = {
        n for n, p in speech.hf.named_parameters() if p.requires_grad and n.startswith("model.encoder.")
    }
    assert trainable and all(
        n.startswith((f"model.encoder.layers.{top}.", "model.encoder.out.")) for n in trainable
    )
    assert not speech.encoder.training and speech.encoder.layers[top].training  # frozen layers stay in eval
    assert not speech.encoder.layers[0].training
    vocab = CharVocab()
    examples = _examples((16000, 12000))
    for e in examples:
        e.targets = vocab.encode(e.record["text"])
    batch = _collate(speech, examples)
    loss, extra = module.compute_loss(batch)
    enc = speech.encoder(batch.features, batch.feature_lengths)
    ctc = SelfConditionedCTCLoss()(
        enc.logits, enc.lengths, batch.targets, batch.target_lengths, enc.mid_logits
    )
    plain = _loss(speech, batch)
    assert float(loss) == pytest.approx(float(plain.loss) + 0.5 * float(ctc.loss), rel=1e-5)
    assert float(extra["encoder_ctc_loss"]) == pytest.approx(float(ctc.loss), rel=1e-5)
    loss.backward()
    grads = {n: p.grad for n, p in speech.hf.named_parameters() if n.startswith("model.encoder.")}
    assert float(grads["model.encoder.out.weight"].abs().max()) > 0
    assert all(g is None for n, g in grads.items() if n.startswith("model.encoder.layers.0."))
    # without CTC targets in the data the auxiliary cannot run: a clear error, not a crash
    with pytest.raises(ValueError, match="ctc_targets"):
        module.compute_loss(_collate(speech, _examples((16000,))))
    with pytest.raises(ValueError, match="encoder_ctc_weight"):
        SpeechLLMModule({**model, "loss": {}}, {"lr": 1e-3}, total_steps=10)
