"""Stage 2: the speech LLM — frozen CTC encoder -> windowed Q-Former projector -> (LoRA) Granite LLM.

The model *is* transformers' ``GraniteSpeechForConditionalGeneration`` (``SpeechLLM.hf``), so its
state dict, config and ``save_pretrained`` folder are the released layout. Two things change for
training, neither of which touches a parameter name:

* the encoder module is our :class:`~granite_train.models.encoder.CTCEncoder` (same keys) so that
  padded batches are exact: padded frames are masked in the encoder and zeroed before the
  projector, which makes every utterance's audio embeddings equal to those it gets alone (what
  transformers computes for a batch of one);
* :meth:`SpeechLLM.forward` computes the LM head only at positions that have a label. Prompts and
  audio are most of a sequence, and at a 100k vocabulary the full logits tensor dominates memory.

Construction (:func:`build_speech_llm`): (a) a stage-1 encoder (exported folder or ``.ckpt``) + a
base Granite LLM (local folder or hub id) + a fresh projector, or (b) an existing GraniteSpeech
folder (merged weights, or the 3.3 layout with a LoRA adapter next to them).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    Blip2QFormerConfig,
    GraniteSpeechConfig,
    GraniteSpeechForConditionalGeneration,
)
from transformers.generation import GenerationMixin

from granite_train.models.encoder import CTCEncoder, lengths_to_mask

log = logging.getLogger(__name__)

AUDIO_TOKEN = "<|audio|>"
IGNORE_INDEX = -100
SAMPLES_PER_FRAME = 160  # 10 ms hop at 16 kHz
FRAME_STACK = 2  # two 10 ms frames per encoder frame (50 Hz)

# Blip2QFormerConfig fields of the projector.
PROJECTOR_PRESETS: dict[str, dict[str, Any]] = {
    # granite-4.0-1b-speech (RECIPE.md, "Projector + LLM stage")
    "granite_4_0_1b": dict(
        hidden_size=1024,
        num_hidden_layers=2,
        num_attention_heads=16,
        intermediate_size=4096,
        cross_attention_frequency=1,
        hidden_act="gelu",
        layer_norm_eps=1e-12,
        hidden_dropout_prob=0.1,
        attention_probs_dropout_prob=0.1,
    ),
    "tiny": dict(
        hidden_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=1024,
        cross_attention_frequency=1,
        hidden_act="gelu",
        layer_norm_eps=1e-12,
        hidden_dropout_prob=0.1,
        attention_probs_dropout_prob=0.1,
    ),
}


# --------------------------------------------------------------------------------------------------
# audio token arithmetic
# --------------------------------------------------------------------------------------------------
def encoder_frames(num_samples: int) -> int:
    """50 Hz encoder frames of ``num_samples`` of 16 kHz audio (odd last 10 ms frame dropped)."""
    return (num_samples // SAMPLES_PER_FRAME + 1) // FRAME_STACK


def projector_tokens(num_frames: torch.Tensor | int, window_size: int = 15, downsample_rate: int = 5):
    """Audio tokens the projector emits for ``num_frames`` encoder frames: whole windows x queries."""
    queries = window_size // downsample_rate
    if isinstance(num_frames, torch.Tensor):
        return torch.div(num_frames + window_size - 1, window_size, rounding_mode="floor") * queries
    return math.ceil(num_frames / window_size) * queries


def audio_token_count(num_samples: int, window_size: int = 15, downsample_rate: int = 5) -> int:
    """The published formula: ``ceil(((n_samples // 160 + 1) // 2) / 15) * 3`` (10 Hz audio tokens)."""
    return projector_tokens(encoder_frames(num_samples), window_size, downsample_rate)


# --------------------------------------------------------------------------------------------------
# the model
# --------------------------------------------------------------------------------------------------
@dataclass
class LoraSettings:
    """LoRA on the LLM (published: rank 64 on the q and v projections; alpha / dropout unpublished)."""

    rank: int = 64
    alpha: float = 64.0
    dropout: float = 0.05
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "v_proj"])

    def peft_config(self):
        from peft import LoraConfig

        return LoraConfig(
            r=int(self.rank),
            lora_alpha=float(self.alpha),
            lora_dropout=float(self.dropout),
            target_modules=list(self.target_modules),
            bias="none",
        )


@dataclass
class SpeechLLMOutput:
    loss: torch.Tensor  # training objective: cross-entropy (+ audio_ctc_weight * audio CTC), fp32
    num_tokens: int  # labelled positions in the batch
    num_correct: int  # of those, argmax == label (teacher-forced token accuracy)
    lm_loss: torch.Tensor | None = None  # mean token cross-entropy over labelled positions
    audio_ctc_loss: torch.Tensor | None = None  # the auxiliary audio-token CTC, when on
    audio_ctc_dropped: int = 0  # utterances left out of it: more target tokens than audio tokens
    audio_rms: float | None = None  # scale of the real audio tokens (vs the text embeddings')
    audio_embed_loss: torch.Tensor | None = None  # the auxiliary pull into the embedding space, when on


def corrupt_target_inputs(
    input_ids: torch.Tensor, labels: torch.Tensor, rate: float, replacements: torch.Tensor
) -> torch.Tensor:
    """``input_ids`` with each labelled (target) token replaced, with probability ``rate``, by one
    drawn uniformly from ``replacements``; prompt, audio and padding positions stay.

    Training-only (``model.loss.target_token_noise``): the labels keep the true tokens, so the
    model still learns to predict them, but from a teacher-forced prefix it cannot fully trust. A
    small LLM trained in full otherwise learns the training transcripts by heart and predicts
    from the prefix instead of reading the audio (RESULTS.md, trial 14). Draws from the global
    torch RNG (seeded per step by the training loop, so resume stays exact).
    """
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"target token noise must be in [0, 1), got {rate}")
    if rate == 0.0:
        return input_ids
    hit = (labels != IGNORE_INDEX) & (torch.rand(labels.shape, device=labels.device) < rate)
    picks = replacements.to(input_ids.device)[
        torch.randint(len(replacements), labels.shape, device=labels.device)
    ]
    return torch.where(hit, picks, input_ids)


class AudioCTCHead(nn.Module):
    """Training-only CTC head on the projected audio tokens: LayerNorm (no affine) + Linear.

    Auxiliary loss ``model.loss.audio_ctc_weight`` (not in the published recipe): each audio token
    predicts the LLM token spoken there, blank = the pad token. It makes the projector carry the
    transcript's content from the first steps, which a Q-Former trained with a small LLM from
    scratch does not otherwise do on a CPU budget (RESULTS.md, "Stage 2: why the tiny model did
    not learn"). The LayerNorm keeps it blind to the audio tokens' scale, which it leaves to the
    LLM. It is not part of the exported model.
    """

    def __init__(self, width: int, vocab_size: int):
        super().__init__()
        self.norm = nn.LayerNorm(width, elementwise_affine=False)
        self.proj = nn.Linear(width, vocab_size)

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        return self.proj(self.norm(audio))


class SpeechLLM(nn.Module):
    """``GraniteSpeechForConditionalGeneration`` with a padding-exact encoder and a training forward.

    Args:
        hf: the transformers model (its encoder is swapped for :class:`CTCEncoder`, same weights).
        tokenizer: the LLM tokenizer; must know ``<|audio|>`` (id ``hf.config.audio_token_index``).
        attn_impl: attention kernel of the encoder.
    """

    def __init__(self, hf: GraniteSpeechForConditionalGeneration, tokenizer, attn_impl: str = "sdpa"):
        super().__init__()
        encoder = hf.model.encoder
        if not isinstance(encoder, CTCEncoder):
            ours = CTCEncoder(hf.config.encoder_config, attn_impl=attn_impl)
            ours.load_state_dict(encoder.state_dict(), strict=True)
            reference = next(encoder.parameters())
            ours.to(device=reference.device, dtype=reference.dtype)
            hf.model.encoder = ours
        self.hf = hf
        self.tokenizer = tokenizer
        audio_id = tokenizer.convert_tokens_to_ids(AUDIO_TOKEN)
        if audio_id != hf.config.audio_token_index:
            raise ValueError(
                f"tokenizer's {AUDIO_TOKEN} id is {audio_id} but the model's audio_token_index is "
                f"{hf.config.audio_token_index}"
            )
        self.frozen: set[str] = set()

    # parts ----------------------------------------------------------------------------------------
    @property
    def config(self) -> GraniteSpeechConfig:
        return self.hf.config

    @property
    def encoder(self) -> CTCEncoder:
        return self.hf.model.encoder

    @property
    def projector(self) -> nn.Module:
        return self.hf.model.projector

    @property
    def language_model(self) -> nn.Module:
        return self.hf.model.language_model

    @property
    def audio_token_id(self) -> int:
        return int(self.hf.config.audio_token_index)

    @property
    def has_lora(self) -> bool:
        return bool(getattr(self.hf, "_hf_peft_config_loaded", False))

    # trainable parts ------------------------------------------------------------------------------
    def add_lora(self, settings: LoraSettings) -> None:
        """Attach LoRA adapters to the LLM (transformers' PEFT integration: the released 3.3 layout)."""
        if self.has_lora:
            raise ValueError("the model already has a LoRA adapter")
        self.hf.add_adapter(settings.peft_config())
        # add_adapter targets module names anywhere in the model: keep it to the LLM
        stray = [n for n, _ in self.hf.named_modules() if "lora_A" in n and ".language_model." not in f".{n}"]
        if stray:
            raise ValueError(f"LoRA target_modules also matched outside the LLM: {stray[:3]}")
        self.config.has_lora_adapter = True

    def set_trainable(
        self, projector: bool = True, lora: bool = True, llm: bool = False, encoder: bool = False
    ) -> None:
        """Choose what trains. A frozen encoder also stays in eval mode (BatchNorm statistics untouched)."""
        if lora and not self.has_lora:
            raise ValueError("lora=True but the model has no LoRA adapter (set model.lora)")
        for name, param in self.hf.named_parameters():
            if "lora_" in name:
                param.requires_grad_(lora)
            elif name.startswith("model.encoder."):
                param.requires_grad_(encoder)
            elif name.startswith("model.projector."):
                param.requires_grad_(projector)
            else:  # LLM body, embeddings and head
                param.requires_grad_(llm)
        self.frozen = {
            part for part, on in (("encoder", encoder), ("projector", projector), ("llm", llm)) if not on
        }
        self.train(self.training)

    def train(self, mode: bool = True) -> SpeechLLM:
        super().train(mode)
        if "encoder" in self.frozen:
            self.encoder.eval()
        return self

    def parameter_counts(self) -> dict[str, int]:
        """Trainable and total parameters, and the trainable ones per part."""
        counts = {"total": 0, "trainable": 0}
        for name, param in self.hf.named_parameters():
            counts["total"] += param.numel()
            if param.requires_grad:
                counts["trainable"] += param.numel()
                part = (
                    "lora"
                    if "lora_" in name
                    else name.split(".")[1]
                    if name.startswith("model.")
                    else "lm_head"
                )
                counts[f"trainable/{part}"] = counts.get(f"trainable/{part}", 0) + param.numel()
        return counts

    # forward --------------------------------------------------------------------------------------
    def encode(self, features: torch.Tensor, feature_lengths: torch.Tensor) -> torch.Tensor:
        """Encoder output (B, T, D_enc) with the padded frames zeroed."""
        feature_lengths = feature_lengths.to(features.device)
        dtype = next(self.encoder.parameters()).dtype
        # a frozen encoder needs no graph: no activations kept for backward
        with torch.set_grad_enabled(torch.is_grad_enabled() and "encoder" not in self.frozen):
            hidden = self.encoder(features.to(dtype), feature_lengths).last_hidden_state
        # zero the padded frames: the projector pads its last window with zeros, so this makes a
        # padded utterance's windows equal to those of the same utterance alone
        valid = lengths_to_mask(feature_lengths, hidden.shape[1])
        return hidden * valid.unsqueeze(-1).to(hidden.dtype)

    def audio_embeds(
        self,
        features: torch.Tensor,
        feature_lengths: torch.Tensor | None,
        encoder_hidden: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Projected audio (B, Q, D_llm) and the real audio tokens per utterance (B,).

        ``encoder_hidden``: the output of :meth:`encode` for these features, computed elsewhere
        (:class:`~granite_train.models.encoder_cache.EncoderOutputCache`); the encoder is skipped.
        """
        if feature_lengths is None:
            feature_lengths = torch.full((features.shape[0],), features.shape[1], device=features.device)
        feature_lengths = feature_lengths.to(features.device)
        hidden = self.encode(features, feature_lengths) if encoder_hidden is None else encoder_hidden
        embeds = self.projector(hidden)
        counts = projector_tokens(feature_lengths, self.config.window_size, self.config.downsample_rate)
        return embeds, counts

    def embed_inputs(
        self, input_ids: torch.Tensor, features: torch.Tensor, feature_lengths: torch.Tensor | None
    ):
        """LLM input embeddings with each utterance's audio tokens written at its ``<|audio|>`` positions."""
        embeds, counts = self.audio_embeds(features, feature_lengths)
        return self._merge_audio(input_ids, embeds, counts)

    def _merge_audio(self, input_ids: torch.Tensor, embeds: torch.Tensor, counts: torch.Tensor):
        n_placeholders = (input_ids == self.audio_token_id).sum(dim=1)
        if not torch.equal(n_placeholders.cpu(), counts.cpu()):
            raise ValueError(
                f"audio placeholders per example {n_placeholders.tolist()} != audio tokens {counts.tolist()}: "
                "build prompts with the same window_size / downsample_rate as the model"
            )
        keep = torch.arange(embeds.shape[1], device=embeds.device)[None, :] < counts[:, None].to(
            embeds.device
        )
        return self.hf.model.get_merged_audio_embeddings(input_ids, embeds, keep)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        features: torch.Tensor,
        feature_lengths: torch.Tensor | None,
        labels: torch.Tensor,
        audio_ctc_head: AudioCTCHead | None = None,
        audio_ctc_weight: float = 0.0,
        audio_embed_weight: float = 0.0,
        encoder_hidden: torch.Tensor | None = None,
    ) -> SpeechLLMOutput:
        """Mean next-token cross-entropy over the positions with a label (``labels != -100``).

        With ``audio_ctc_head`` and ``audio_ctc_weight`` > 0 the loss adds the auxiliary
        audio-token CTC (:class:`AudioCTCHead`, :meth:`audio_ctc_loss`); with ``audio_embed_weight``
        > 0 too, it adds :meth:`audio_embed_loss`. ``encoder_hidden``: see :meth:`audio_embeds`.
        """
        audio, counts = self.audio_embeds(features, feature_lengths, encoder_hidden)
        inputs_embeds = self._merge_audio(input_ids, audio, counts)
        hidden = self.hf.model.language_model(
            inputs_embeds=inputs_embeds, attention_mask=attention_mask, use_cache=False
        ).last_hidden_state
        # position t predicts token t+1: gather the hidden states of labelled targets only
        targets = labels[:, 1:]
        picked = targets != IGNORE_INDEX
        num_tokens = int(picked.sum())
        if num_tokens == 0:
            raise ValueError("batch has no labelled target tokens")
        logits = self.hf.lm_head(hidden[:, :-1][picked]).float()
        gold = targets[picked]
        lm_loss = F.cross_entropy(logits, gold)
        correct = int((logits.detach().argmax(-1) == gold).sum())
        real = inputs_embeds[input_ids == self.audio_token_id].detach()
        out = SpeechLLMOutput(
            loss=lm_loss,
            num_tokens=num_tokens,
            num_correct=correct,
            lm_loss=lm_loss.detach(),
            audio_rms=float(real.float().pow(2).mean().sqrt()) if real.numel() else None,
        )
        if audio_ctc_head is not None and audio_ctc_weight > 0:
            ctc, dropped = self.audio_ctc_loss(audio, counts, labels, audio_ctc_head)
            out.audio_ctc_dropped = dropped
            if ctc is not None:
                out.loss = lm_loss + audio_ctc_weight * ctc
                out.audio_ctc_loss = ctc.detach()
            if audio_embed_weight > 0:
                pull = self.audio_embed_loss(audio, counts, audio_ctc_head)
                out.loss = out.loss + audio_embed_weight * pull
                out.audio_embed_loss = pull.detach()
        return out

    def audio_embed_loss(self, audio: torch.Tensor, counts: torch.Tensor, head: AudioCTCHead) -> torch.Tensor:
        """Squared distance of each real audio token to the LLM input embedding its CTC head reads
        there (posterior-weighted, so mostly the blank = pad embedding between tokens), relative to
        the embeddings' mean squared norm.

        Training-only (``model.loss.audio_embed_weight``). It makes the projector write what a
        copy-pretrained LLM reads: token embeddings among pads, at the embeddings' scale. Without
        it the audio tokens grow to ~25x the embeddings' RMS, which drowns the attention outputs
        at those positions in the residual stream and slows the LLM's reading (RESULTS.md, trial 12).
        Gradient reaches the projector only: the posterior and the embedding table are constants.
        """
        keep = torch.arange(audio.shape[1], device=audio.device)[None, :] < counts[:, None].to(audio.device)
        real = audio[keep].float()
        with torch.no_grad():
            table = self.hf.get_input_embeddings().weight.float()
            probs = head(real).float().softmax(-1)
            width = min(probs.shape[-1], table.shape[0])
            target = probs[:, :width] @ table[:width]
            scale = table.pow(2).sum(-1).mean().clamp_min(1e-12)
        return (real - target).pow(2).sum(-1).mean() / scale

    def audio_ctc_loss(
        self,
        audio: torch.Tensor,
        counts: torch.Tensor,
        labels: torch.Tensor,
        head: AudioCTCHead,
    ) -> tuple[torch.Tensor | None, int]:
        """Mean per-token CTC of ``head`` on the audio tokens (B, Q, D) against each row's targets
        (its labelled tokens but the final EOS); the blank is the pad token.

        Rows whose targets cannot be aligned to their audio tokens (more tokens, counting a blank
        between repeats, than audio tokens) are left out and counted. Returns (loss or None if no
        row is left, dropped).
        """
        blank = self.tokenizer.pad_token_id
        if blank is None:
            raise ValueError("the audio-token CTC uses the pad token as its blank; the tokenizer has none")
        targets = [row[row != IGNORE_INDEX][:-1] for row in labels]
        target_lengths = torch.tensor([len(t) for t in targets])
        # a CTC path needs a frame per token plus a blank between equal neighbours
        needed = torch.tensor([len(t) + int((t[1:] == t[:-1]).sum()) for t in targets])
        counts = counts.cpu()
        keep = (needed <= counts) & (target_lengths > 0)
        dropped = int((~keep).sum())
        if not bool(keep.any()):
            return None, dropped
        rows = keep.nonzero().squeeze(1)
        logits = head(audio[rows.to(audio.device)]).float()
        log_probs = logits.log_softmax(-1).transpose(0, 1)  # (Q, B, V)
        flat = torch.cat([targets[i] for i in rows.tolist()]).to(audio.device)
        loss = F.ctc_loss(
            log_probs,
            flat,
            counts[rows],
            target_lengths[rows],
            blank=blank,
            reduction="sum",
            zero_infinity=True,
        )
        return loss / target_lengths[rows].sum().clamp_min(1).to(loss.device), dropped

    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        features: torch.Tensor,
        feature_lengths: torch.Tensor | None,
        **generate_kwargs: Any,
    ) -> torch.Tensor:
        """Generated token ids (B, N) after left-padded prompts (greedy by default; any HF generate kwarg)."""
        inputs_embeds = self.embed_inputs(input_ids, features, feature_lengths)
        kwargs = dict(do_sample=False, max_new_tokens=200, num_beams=1)
        kwargs.update(generate_kwargs)
        kwargs.setdefault("pad_token_id", self.tokenizer.pad_token_id)
        kwargs.setdefault("eos_token_id", self.tokenizer.eos_token_id)
        # GraniteSpeechForConditionalGeneration.generate switches LoRA off when no input_features
        # are passed; the audio is already in inputs_embeds, so call the generic generate directly.
        return GenerationMixin.generate(
            self.hf, inputs_embeds=inputs_embeds, attention_mask=attention_mask, **kwargs
        )


# --------------------------------------------------------------------------------------------------
# construction
# --------------------------------------------------------------------------------------------------
def _load_tokenizer(path: str | Path, trust_remote_code: bool = False):
    tokenizer = AutoTokenizer.from_pretrained(str(path), trust_remote_code=trust_remote_code)
    if AUDIO_TOKEN not in tokenizer.get_vocab():
        tokenizer.add_special_tokens({"additional_special_tokens": [AUDIO_TOKEN]})
        log.info(
            "added %s to the tokenizer (id %d)", AUDIO_TOKEN, tokenizer.convert_tokens_to_ids(AUDIO_TOKEN)
        )
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if tokenizer.chat_template is None:
        from granite_train.models.tiny_llm import CHAT_TEMPLATE

        tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


@torch.no_grad()
def _init_projector(projector: nn.Module, std: float) -> None:
    """A new projector's linear layers ~ N(0, std) (its config's ``initializer_range``).

    The model-wide init uses the LLM's range (0.02). At that scale the encoder's contribution to a
    fresh Q-Former's output is a few percent of the learned queries', and a small LLM trained from
    scratch learns to ignore the audio tokens; a larger range for the projector avoids that.
    """
    for module in projector.modules():
        if isinstance(module, nn.Linear):
            module.weight.normal_(0.0, std)
            if module.bias is not None:
                module.bias.zero_()


def assemble_speech_llm(
    encoder: str | Path | CTCEncoder,
    llm: str | Path,
    projector: Mapping[str, Any] | None = None,
    window_size: int = 15,
    downsample_rate: int = 5,
    attn_impl: str = "sdpa",
    trust_remote_code: bool = False,
) -> SpeechLLM:
    """(a) A stage-1 encoder + a base Granite LLM (folder or hub id) + a new Q-Former projector.

    Args:
        encoder: an exported encoder folder, a stage-1 ``.ckpt``, or a :class:`CTCEncoder`.
        llm: ``AutoModelForCausalLM`` path or hub id (its tokenizer is loaded from the same place;
            ``<|audio|>`` is added to the vocabulary when missing).
        projector: ``{"preset": name, **Blip2QFormerConfig overrides}`` (default preset ``tiny``).
    """
    from granite_train.models.export import load_encoder

    if not isinstance(encoder, CTCEncoder):
        encoder = load_encoder(encoder, attn_impl=attn_impl)
    tokenizer = _load_tokenizer(llm, trust_remote_code)
    base = AutoModelForCausalLM.from_pretrained(str(llm), trust_remote_code=trust_remote_code)
    if base.config.model_type not in ("granite", "granitemoe", "granitemoehybrid", "llama"):
        log.warning("LLM model_type %r is not a Granite model; assembling anyway", base.config.model_type)
    if len(tokenizer) > base.config.vocab_size:
        base.resize_token_embeddings(len(tokenizer))
    projector = dict(projector or {})
    preset = projector.pop("preset", "tiny")
    if preset not in PROJECTOR_PRESETS:
        raise ValueError(f"unknown projector preset {preset!r}; choose from {sorted(PROJECTOR_PRESETS)}")
    qformer = Blip2QFormerConfig(
        **{**PROJECTOR_PRESETS[preset], **projector}, encoder_hidden_size=encoder.config.hidden_dim
    )
    config = GraniteSpeechConfig(
        text_config=base.config.to_dict(),
        encoder_config=encoder.config.to_dict(),
        projector_config=qformer.to_dict(),
        audio_token_index=tokenizer.convert_tokens_to_ids(AUDIO_TOKEN),
        has_lora_adapter=False,
        window_size=window_size,
        downsample_rate=downsample_rate,
        tie_word_embeddings=bool(getattr(base.config, "tie_word_embeddings", True)),
    )
    hf = GraniteSpeechForConditionalGeneration(config)
    _init_projector(hf.model.projector, qformer.initializer_range)
    hf.model.encoder = encoder
    hf.model.language_model.load_state_dict(base.model.state_dict(), strict=True)
    if config.tie_word_embeddings:
        hf.tie_weights()
    else:
        hf.lm_head.load_state_dict(base.lm_head.state_dict())
    hf.to(base.dtype)
    hf.generation_config.pad_token_id = tokenizer.pad_token_id
    hf.generation_config.eos_token_id = tokenizer.eos_token_id
    return SpeechLLM(hf, tokenizer, attn_impl=attn_impl)


def load_speech_llm(
    path: str | Path,
    adapter: str | Path | None = None,
    attn_impl: str = "sdpa",
    trust_remote_code: bool = False,
) -> SpeechLLM:
    """(b) An existing GraniteSpeech checkpoint (folder or hub id) in the released layout.

    Merged weights load as they are. In the 3.3 layout (``adapter_config.json`` +
    ``adapter_model.safetensors`` beside the model, ``has_lora_adapter: true``) transformers'
    ``from_pretrained`` already loads the adapter from the same folder (wherever the folder has moved:
    a local folder wins over the adapter config's ``base_model_name_or_path``); it is loaded here when
    it did not. ``adapter`` names a separate adapter folder instead, for a folder without its own.
    """
    hf = GraniteSpeechForConditionalGeneration.from_pretrained(str(path), trust_remote_code=trust_remote_code)
    loaded = bool(getattr(hf, "_hf_peft_config_loaded", False))
    if adapter is not None:
        if not (Path(adapter) / "adapter_config.json").exists():
            raise FileNotFoundError(f"no adapter_config.json in {adapter}")
        if loaded:
            raise ValueError(
                f"{path} has its own LoRA adapter (adapter_config.json); cannot add {adapter} too"
            )
        hf.load_adapter(str(adapter))
    elif not loaded and (Path(path) / "adapter_config.json").exists():
        hf.load_adapter(str(path))
    has_lora = bool(getattr(hf, "_hf_peft_config_loaded", False))
    if hf.config.has_lora_adapter and not has_lora:
        log.warning(
            "%s: config says has_lora_adapter but no adapter was found; using the weights alone", path
        )
    hf.config.has_lora_adapter = has_lora
    tokenizer = _load_tokenizer(path, trust_remote_code)
    return SpeechLLM(hf, tokenizer, attn_impl=attn_impl)


def build_speech_llm(model: Mapping[str, Any]) -> SpeechLLM:
    """The stage-2 model from a ``configs/model/speech_llm_*.yaml`` mapping.

    Keys: ``init`` (an existing GraniteSpeech folder / hub id: route b) or ``encoder`` + ``llm``
    (route a) with ``projector``, ``window_size``, ``downsample_rate``; ``lora`` (LoraSettings
    fields, or null), ``train`` (``{projector, lora, llm, encoder}`` booleans), ``attn_impl``,
    ``trust_remote_code``.
    """
    attn_impl = model.get("attn_impl", "sdpa")
    trust = bool(model.get("trust_remote_code", False))
    if model.get("init"):
        speech = load_speech_llm(
            model["init"], adapter=model.get("adapter"), attn_impl=attn_impl, trust_remote_code=trust
        )
    else:
        if not model.get("encoder") or not model.get("llm"):
            raise ValueError("model needs `init` (a GraniteSpeech checkpoint) or both `encoder` and `llm`")
        speech = assemble_speech_llm(
            model["encoder"],
            model["llm"],
            projector=model.get("projector"),
            window_size=int(model.get("window_size", 15)),
            downsample_rate=int(model.get("downsample_rate", 5)),
            attn_impl=attn_impl,
            trust_remote_code=trust,
        )
    lora = model.get("lora")
    if lora and not speech.has_lora:
        speech.add_lora(LoraSettings(**lora))
    train = {"projector": True, "lora": bool(lora) or speech.has_lora, "llm": False, "encoder": False}
    train.update(model.get("train") or {})
    speech.set_trainable(**train)
    return speech


def merge_lora(speech: SpeechLLM) -> SpeechLLM:
    """Fold the LoRA adapter into the LLM weights in place (W += B A * alpha / r) and drop it."""
    if not speech.has_lora:
        return speech
    from peft.tuners.lora import LoraLayer

    for name, module in list(speech.hf.named_modules()):
        if isinstance(module, LoraLayer):
            module.merge()
            parent_name, _, child = name.rpartition(".")
            setattr(speech.hf.get_submodule(parent_name), child, module.get_base_layer())
    speech.hf._hf_peft_config_loaded = False
    speech.hf.peft_config = {}
    speech.config.has_lora_adapter = False
    return speech


def format_counts(counts: Mapping[str, int]) -> str:
    parts = ", ".join(
        f"{k.split('/', 1)[1]} {v:,}" for k, v in sorted(counts.items()) if k.startswith("trainable/")
    )
    share = 100.0 * counts["trainable"] / max(counts["total"], 1)
    return f"trainable {counts['trainable']:,} / {counts['total']:,} parameters ({share:.2f}%): {parts or 'none'}"


__all__: Sequence[str] = [
    "AUDIO_TOKEN",
    "IGNORE_INDEX",
    "AudioCTCHead",
    "LoraSettings",
    "PROJECTOR_PRESETS",
    "SpeechLLM",
    "SpeechLLMOutput",
    "assemble_speech_llm",
    "audio_token_count",
    "build_speech_llm",
    "encoder_frames",
    "format_counts",
    "load_speech_llm",
    "merge_lora",
    "projector_tokens",
]
