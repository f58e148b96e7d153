"""Typed model sections of a recipe (``configs/model/*.yaml``): stage 1 and stage 2.

Each field's default lives here, once; the YAML files set only what a preset changes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from granite_train.speech_format import DOWNSAMPLE_RATE, WINDOW_SIZE
from granite_train.typed_config import check_keys

ATTN_IMPLS = ("sdpa", "math")

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


def _check_attn_impl(value: str, where: str) -> None:
    if value not in ATTN_IMPLS:
        raise ValueError(f"{where} must be one of {ATTN_IMPLS}, got {value!r}")


# --------------------------------------------------------------------------------------------------
# stage 1
# --------------------------------------------------------------------------------------------------
@dataclass
class CTCLossConfig:
    """Self-conditioned CTC (RECIPE.md): ``final_weight`` x CTC on the final logits +
    ``mid_weight`` x CTC on the logits of layer ``num_layers // 2``."""

    final_weight: float = 0.8
    mid_weight: float = 0.2


@dataclass
class CTCModelConfig:
    """The stage-1 CTC conformer.

    Attributes:
        preset: a :data:`granite_train.models.encoder.PRESETS` name (``granite_4_0_1b``, the
            published 16 x 1024 conformer, or ``tiny``).
        encoder: ``GraniteSpeechEncoderConfig`` fields that override the preset. With ``init``,
            the architecture is the init's: a field set here must equal it, except ``dropout``
            (applied) and ``output_dim`` (must equal the final vocabulary size).
        init: an encoder to continue from (an exported folder, a stage-1 ``.ckpt`` or a whole
            granite_speech folder): its weights, architecture and CTC symbol table; null = a new
            encoder of the preset.
        extra_symbols: characters the CTC vocabulary must have besides the base 348 (and init's
            table): those not in it yet are appended, in this order, as new ids; the head grows
            without changing old outputs (:mod:`granite_train.models.vocab_surgery`), and the data
            pipeline encodes them as targets. Without ``init``, ``output_dim`` must be 348 + their
            number.
        attn_impl: ``sdpa`` (fused kernels) or ``math`` (the reference computation).
        gradient_checkpointing: recompute each block in backward: less activation memory, slower.
        loss: the CTC loss weights.
    """

    preset: str = "granite_4_0_1b"
    encoder: dict[str, Any] = field(default_factory=dict)
    init: str | None = None
    extra_symbols: list[str] = field(default_factory=list)
    attn_impl: str = "sdpa"
    gradient_checkpointing: bool = False
    loss: CTCLossConfig = field(default_factory=CTCLossConfig)

    def __post_init__(self) -> None:
        from granite_train.models.encoder import PRESETS, GraniteSpeechEncoderConfig
        from granite_train.text.vocab import VOCAB_SIZE, CharVocab

        if self.preset not in PRESETS:
            raise ValueError(f"model.preset must be one of {sorted(PRESETS)}, got {self.preset!r}")
        valid = set(GraniteSpeechEncoderConfig().to_dict()) - {"model_type", "transformers_version"}
        check_keys(self.encoder or {}, valid, "model.encoder")
        _check_attn_impl(self.attn_impl, "model.attn_impl")
        if isinstance(self.extra_symbols, str):
            raise ValueError(
                f"model.extra_symbols must be a list of characters, e.g. [α, β], not {self.extra_symbols!r}"
            )
        self.extra_symbols = [str(c) for c in self.extra_symbols or []]
        try:
            new = CharVocab(extra_symbols=self.new_symbols(CharVocab())).extra_symbols  # each one checked
        except ValueError as err:
            raise ValueError(f"model.extra_symbols: {err}") from None
        if not self.init:
            output_dim = (self.encoder or {}).get("output_dim", PRESETS[self.preset]["output_dim"])
            if output_dim != VOCAB_SIZE + len(new):
                raise ValueError(
                    f"model.encoder.output_dim is {output_dim} but the CTC vocabulary has "
                    f"{VOCAB_SIZE + len(new)} symbols ({VOCAB_SIZE} base + {len(new)} of model.extra_symbols): "
                    f"set model.encoder.output_dim={VOCAB_SIZE + len(new)}"
                )

    def new_symbols(self, vocab: Any) -> list[str]:
        """``extra_symbols`` not in ``vocab`` yet (a ``CharVocab``), once each, in order."""
        return [c for c in dict.fromkeys(self.extra_symbols) if c not in vocab]


# --------------------------------------------------------------------------------------------------
# stage 2
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
class TrainableParts:
    """What trains in stage 2. A frozen encoder also stays in eval mode (BatchNorm untouched).

    Attributes:
        lora: the LoRA adapter; None = whenever the model has one.
        llm: the whole LLM (full fine-tuning; e.g. a tiny LLM trained from scratch).
        encoder: the whole encoder.
        encoder_layers: > 0 trains only the top k conformer layers and the CTC output head (the
            rest of the encoder stays frozen, in eval mode); needs ``loss.encoder_ctc_weight`` > 0
            so that the CTC head stays valid (the speculative-decoding draft).
    """

    projector: bool = True
    lora: bool | None = None
    llm: bool = False
    encoder: bool = False
    encoder_layers: int = 0

    def __post_init__(self) -> None:
        if self.encoder_layers < 0:
            raise ValueError(f"model.train.encoder_layers must be >= 0, got {self.encoder_layers}")


@dataclass
class GradientCheckpointing:
    """Recompute activations in backward instead of keeping them (less memory, ~a third slower).

    Attributes:
        llm: each LLM decoder layer (transformers' own checkpointing; needed at full size: 40
            layers x batch tokens x 2048 per saved tensor).
        encoder: each conformer layer (only matters when encoder layers train).
    """

    llm: bool = False
    encoder: bool = False


AUDIO_CTC_HEADS = ("linear", "tied")


@dataclass
class SpeechLLMLossConfig:
    """Training-only objectives beside the cross-entropy (none published: 0 in the published recipe).

    Attributes:
        audio_ctc_weight: > 0 adds a CTC of the audio tokens against the target tokens through a
            training-only head (:mod:`granite_train.training.speech_llm_losses`).
        audio_ctc_head: that head's form: ``linear`` (its own (V, D) matrix: fits a small LLM
            trained in full) or ``tied`` (a scaled cosine against the LLM's input embeddings, no
            matrix: for a frozen pretrained LLM with a large vocabulary).
        audio_embed_weight: > 0 (needs the CTC head) pulls the audio tokens to the embeddings the
            head reads.
        target_token_noise: share of teacher-forced target inputs replaced by random tokens.
        projector_warmup_steps: the first steps train the projector on the audio-token CTC (and the
            embedding pull) alone, without running the LLM: ~30x cheaper steps on a 135 M LLM, so
            the projector writes token embeddings before the LLM loss starts (needs
            ``audio_ctc_weight`` > 0; hold the LLM's LoRA with ``optim.start_step`` to match).
        encoder_ctc_weight: > 0 adds the encoder's own self-conditioned character CTC (needs CTC
            targets in the data: ``prepare.ctc_targets: true``): keeps a training encoder's CTC
            head valid.
    """

    audio_ctc_weight: float = 0.0
    audio_ctc_head: str = "linear"
    audio_embed_weight: float = 0.0
    target_token_noise: float = 0.0
    encoder_ctc_weight: float = 0.0
    projector_warmup_steps: int = 0

    def __post_init__(self) -> None:
        if self.audio_ctc_weight < 0:
            raise ValueError(f"model.loss.audio_ctc_weight must be >= 0, not {self.audio_ctc_weight}")
        if self.audio_ctc_head not in AUDIO_CTC_HEADS:
            raise ValueError(
                f"model.loss.audio_ctc_head must be one of {', '.join(AUDIO_CTC_HEADS)}, not {self.audio_ctc_head!r}"
            )
        if self.audio_embed_weight < 0:
            raise ValueError(f"model.loss.audio_embed_weight must be >= 0, not {self.audio_embed_weight}")
        if self.audio_embed_weight > 0 and self.audio_ctc_weight <= 0:
            raise ValueError(
                "model.loss.audio_embed_weight reads its targets from the audio-token CTC head: "
                "set model.loss.audio_ctc_weight > 0 too"
            )
        if self.projector_warmup_steps < 0:
            raise ValueError(
                f"model.loss.projector_warmup_steps must be >= 0, not {self.projector_warmup_steps}"
            )
        if self.projector_warmup_steps > 0 and self.audio_ctc_weight <= 0:
            raise ValueError(
                "model.loss.projector_warmup_steps trains the projector on the audio-token CTC alone: "
                "set model.loss.audio_ctc_weight > 0 too"
            )
        if self.encoder_ctc_weight < 0:
            raise ValueError(f"model.loss.encoder_ctc_weight must be >= 0, not {self.encoder_ctc_weight}")
        if not 0.0 <= self.target_token_noise < 1.0:
            raise ValueError(
                f"model.loss.target_token_noise must be in [0, 1), not {self.target_token_noise}"
            )


@dataclass
class SpeechLLMModelConfig:
    """The stage-2 speech LLM: built from ``init`` (an existing GraniteSpeech folder / hub id) or
    from ``encoder`` + ``llm`` + a new projector.

    Attributes:
        init: a GraniteSpeech checkpoint (folder or hub id) to start from; merged weights or the
            3.3 layout with its LoRA adapter beside them.
        adapter: a separate LoRA adapter folder for ``init``.
        encoder: a stage-1 export folder or ``.ckpt``: with ``llm`` when ``init`` is not set, or
            with ``init`` to replace its encoder (a speech LLM continued on a new language's encoder).
        llm: a base Granite LLM, local folder or hub id.
        projector: ``{preset: granite_4_0_1b (published) | tiny, **Blip2QFormerConfig overrides}``.
        window_size / downsample_rate: encoder frames per Q-Former window, and the ratio of frames
            to queries (15 / 5: 3 queries per 0.3 s, 10 Hz audio tokens as published).
        lora: LoRA settings, or None for no adapter.
        train: what trains.
        loss: training-only auxiliary objectives.
        encoder_cache_gb: > 0 keeps the frozen encoder's outputs in memory (up to that size).
        gradient_checkpointing: ``{llm, encoder}``: recompute those parts' activations in backward.
        attn_impl: the encoder's attention kernel.
        trust_remote_code: let transformers run code from the checkpoint (off unless asked).
    """

    init: str | None = None
    adapter: str | None = None
    encoder: str | None = None
    llm: str | None = None
    projector: dict[str, Any] = field(default_factory=lambda: {"preset": "granite_4_0_1b"})
    window_size: int = WINDOW_SIZE
    downsample_rate: int = DOWNSAMPLE_RATE
    lora: LoraSettings | None = field(default_factory=LoraSettings)
    train: TrainableParts = field(default_factory=TrainableParts)
    loss: SpeechLLMLossConfig = field(default_factory=SpeechLLMLossConfig)
    encoder_cache_gb: float = 0.0
    gradient_checkpointing: GradientCheckpointing = field(default_factory=GradientCheckpointing)
    attn_impl: str = "sdpa"
    trust_remote_code: bool = False

    def __post_init__(self) -> None:
        from transformers import Blip2QFormerConfig

        projector = dict(self.projector or {})
        preset = projector.pop("preset", "granite_4_0_1b")
        if preset not in PROJECTOR_PRESETS:
            raise ValueError(
                f"model.projector.preset must be one of {sorted(PROJECTOR_PRESETS)}, got {preset!r}"
            )
        check_keys(projector, set(Blip2QFormerConfig().to_dict()) | {"preset"}, "model.projector")
        _check_attn_impl(self.attn_impl, "model.attn_impl")
        if self.train.encoder_layers and self.loss.encoder_ctc_weight <= 0:
            raise ValueError(
                "model.train.encoder_layers: a training encoder keeps its CTC head valid with the encoder CTC loss: set "
                "model.loss.encoder_ctc_weight > 0 (e.g. 0.2) and data.train.prepare.ctc_targets=true"
            )


@dataclass
class TurboCTCModelConfig:
    """Stage ``turboctc``: a granite-speech-5.0 TurboCTC model (``GraniteSpeech5ForCTC``) trained on
    its own CTC loss over its own BPE vocabulary (:mod:`granite_train.models.turboctc`).

    Attributes:
        init: the folder to start from, in the released layout (``config.json``, weights and the
            processor: feature extractor + tokenizer); ``ibm-granite/granite-speech-5.0-470m-turboctc``
            downloaded, or a tiny one built for tests.
        train_top_layers: train only the top N conformer layers and the CTC heads; null trains the
            whole model (what IBM's notebook does).
        normalize_targets: lowercase, punctuation-free targets (synthetic speech carries neither);
            the released model writes case and punctuation, so false for it.
    """

    init: str = ""
    train_top_layers: int | None = None
    normalize_targets: bool = False

    def __post_init__(self) -> None:
        if not self.init:
            raise ValueError(
                "model.init: give the TurboCTC folder to start from (config.json + weights + processor)"
            )
        if self.train_top_layers is not None and self.train_top_layers < 1:
            raise ValueError(
                f"model.train_top_layers must be >= 1 or null (the whole model), got {self.train_top_layers}"
            )


__all__ = [
    "ATTN_IMPLS",
    "PROJECTOR_PRESETS",
    "CTCLossConfig",
    "CTCModelConfig",
    "GradientCheckpointing",
    "LoraSettings",
    "SpeechLLMLossConfig",
    "SpeechLLMModelConfig",
    "TrainableParts",
    "TurboCTCModelConfig",
]
