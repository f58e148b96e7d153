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
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
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

from granite_train.models.config import PROJECTOR_PRESETS, LoraSettings, SpeechLLMModelConfig
from granite_train.models.encoder import CTCEncoder, lengths_to_mask
from granite_train.speech_format import (
    AUDIO_TOKEN,
    CHAT_TEMPLATE,
    DOWNSAMPLE_RATE,
    IGNORE_INDEX,
    WINDOW_SIZE,
    projector_tokens,
)
from granite_train.typed_config import from_mapping

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------------
# the model
# --------------------------------------------------------------------------------------------------
def _full_lengths(features: torch.Tensor, feature_lengths: torch.Tensor | None) -> torch.Tensor:
    """``feature_lengths``, or every row's full length when not given (an unpadded batch)."""
    if feature_lengths is not None:
        return feature_lengths
    return torch.full((features.shape[0],), features.shape[1], device=features.device)


@dataclass
class SpeechLLMOutput:
    """transformers' ``GraniteSpeechCausalLMOutputWithPast`` for training: loss and logits at the
    labelled positions only, plus the projected audio the auxiliary losses of training read."""

    loss: torch.Tensor  # mean next-token cross-entropy over the labelled positions, fp32
    logits: torch.Tensor  # (N, V) fp32: the prediction at each of the N labelled positions
    labels: torch.Tensor  # (N,) the token each of those positions predicts
    audio_embeds: torch.Tensor  # (B, Q, D_llm) projected audio, padded per batch
    audio_token_counts: torch.Tensor  # (B,) real audio tokens per utterance
    encoder: Any = None  # the encoder's EncoderOutput (CTC logits), when it ran here (not cached)

    @property
    def num_tokens(self) -> int:
        return int(self.labels.numel())

    @property
    def num_correct(self) -> int:
        """Labelled positions whose argmax is the label (teacher-forced token accuracy)."""
        return int((self.logits.detach().argmax(-1) == self.labels).sum())


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
        self,
        projector: bool = True,
        lora: bool = True,
        llm: bool = False,
        encoder: bool = False,
        encoder_layers: int = 0,
    ) -> None:
        """Choose what trains. A frozen encoder also stays in eval mode (BatchNorm statistics untouched).

        ``encoder_layers`` > 0 trains the top k conformer layers and the CTC output head only; the
        layers below stay frozen and in eval mode.
        """
        if lora and not self.has_lora:
            raise ValueError("lora=True but the model has no LoRA adapter (set model.lora)")
        num_layers = len(self.encoder.layers)
        if encoder_layers > num_layers:
            raise ValueError(f"encoder_layers={encoder_layers} but the encoder has {num_layers} layers")
        top = {f"model.encoder.layers.{i}." for i in range(num_layers - encoder_layers, num_layers)}
        for name, param in self.hf.named_parameters():
            if "lora_" in name:
                param.requires_grad_(lora)
            elif name.startswith("model.encoder."):
                partial = bool(encoder_layers) and (
                    name.startswith("model.encoder.out.") or any(name.startswith(t) for t in top)
                )
                param.requires_grad_(encoder or partial)
            elif name.startswith("model.projector."):
                param.requires_grad_(projector)
            else:  # LLM body, embeddings and head
                param.requires_grad_(llm)
        self.encoder_top_layers = 0 if encoder else int(encoder_layers)
        trains_encoder = encoder or encoder_layers > 0
        self.frozen = {
            part
            for part, on in (("encoder", trains_encoder), ("projector", projector), ("llm", llm))
            if not on
        }
        self.train(self.training)

    def train(self, mode: bool = True) -> SpeechLLM:
        super().train(mode)
        if "encoder" in self.frozen:
            self.encoder.eval()
        elif getattr(self, "encoder_top_layers", 0):  # only the top layers train; the rest as frozen
            self.encoder.eval()
            for layer in self.encoder.layers[-self.encoder_top_layers :]:
                layer.train(mode)
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

    def set_gradient_checkpointing(self, llm: bool = False, encoder: bool = False) -> None:
        """Recompute the LLM's decoder layers and / or the conformer layers in backward."""
        model = self.language_model
        # transformers 5 renamed gradient_ to activation_checkpointing; either name works there
        enable = (
            getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable
        )
        disable = (
            getattr(model, "activation_checkpointing_disable", None) or model.gradient_checkpointing_disable
        )
        if llm:
            # non-reentrant: works when the layer inputs need no grad (frozen embeddings + LoRA)
            enable({"use_reentrant": False})
        elif self.llm_checkpointing:
            disable()
        self.encoder.gradient_checkpointing = bool(encoder)

    @property
    def llm_checkpointing(self) -> bool:
        return any(getattr(m, "gradient_checkpointing", False) for m in self.language_model.modules())

    # forward --------------------------------------------------------------------------------------
    def encode(self, features: torch.Tensor, feature_lengths: torch.Tensor) -> torch.Tensor:
        """Encoder output (B, T, D_enc) with the padded frames zeroed."""
        return self._encode(features, feature_lengths)[0]

    def _encode(self, features: torch.Tensor, feature_lengths: torch.Tensor) -> tuple[torch.Tensor, Any]:
        """(the zero-padded last hidden state, the encoder's whole output: CTC logits included)."""
        feature_lengths = feature_lengths.to(features.device)
        dtype = next(self.encoder.parameters()).dtype
        # a frozen encoder needs no graph: no activations kept for backward
        with torch.set_grad_enabled(torch.is_grad_enabled() and "encoder" not in self.frozen):
            out = self.encoder(features.to(dtype), feature_lengths)
        hidden = out.last_hidden_state
        # zero the padded frames: the projector pads its last window with zeros, so this makes a
        # padded utterance's windows equal to those of the same utterance alone
        valid = lengths_to_mask(feature_lengths, hidden.shape[1])
        return hidden * valid.unsqueeze(-1).to(hidden.dtype), out

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
        feature_lengths = _full_lengths(features, feature_lengths).to(features.device)
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
        encoder_hidden: torch.Tensor | None = None,
    ) -> SpeechLLMOutput:
        """Mean next-token cross-entropy over the positions with a label (``labels != -100``).

        transformers' forward with ``labels``, computed padding-exact and with the LM head at the
        labelled positions only. ``encoder_hidden``: see :meth:`audio_embeds`.
        """
        encoder_out = None
        if encoder_hidden is None:
            feature_lengths = _full_lengths(features, feature_lengths)
            encoder_hidden, encoder_out = self._encode(features, feature_lengths)
        audio, counts = self.audio_embeds(features, feature_lengths, encoder_hidden)
        inputs_embeds = self._merge_audio(input_ids, audio, counts)
        hidden = self.hf.model.language_model(
            inputs_embeds=inputs_embeds, attention_mask=attention_mask, use_cache=False
        ).last_hidden_state
        # position t predicts token t+1: gather the hidden states of labelled targets only
        targets = labels[:, 1:]
        picked = targets != IGNORE_INDEX
        if not bool(picked.any()):
            raise ValueError("batch has no labelled target tokens")
        logits = self.hf.lm_head(hidden[:, :-1][picked]).float()
        gold = targets[picked]
        return SpeechLLMOutput(
            loss=F.cross_entropy(logits, gold),
            logits=logits,
            labels=gold,
            audio_embeds=audio,
            audio_token_counts=counts,
            encoder=encoder_out,
        )

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
def load_tokenizer(path: str | Path, trust_remote_code: bool = False):
    tokenizer = AutoTokenizer.from_pretrained(str(path), trust_remote_code=trust_remote_code)
    if AUDIO_TOKEN not in tokenizer.get_vocab():
        tokenizer.add_special_tokens({"additional_special_tokens": [AUDIO_TOKEN]})
        log.info(
            "added %s to the tokenizer (id %d)", AUDIO_TOKEN, tokenizer.convert_tokens_to_ids(AUDIO_TOKEN)
        )
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if tokenizer.chat_template is None:
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
    window_size: int = WINDOW_SIZE,
    downsample_rate: int = DOWNSAMPLE_RATE,
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
    tokenizer = load_tokenizer(llm, trust_remote_code)
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


def speech_model_class(config_or_type) -> type[GraniteSpeechForConditionalGeneration]:
    """transformers' class for a ``granite_speech`` (4.0 / 3.3) or ``granite_speech_plus`` (4.1-plus)
    config or model type: the family's entries behind one builder."""
    from transformers import GraniteSpeechPlusForConditionalGeneration

    model_type = getattr(config_or_type, "model_type", config_or_type)
    classes = {
        "granite_speech": GraniteSpeechForConditionalGeneration,
        "granite_speech_plus": GraniteSpeechPlusForConditionalGeneration,
    }
    if model_type not in classes:
        raise ValueError(f"model_type {model_type!r} is not a Granite Speech LLM; known: {sorted(classes)}")
    return classes[model_type]


def speech_config_from_dict(values: Mapping[str, Any]) -> GraniteSpeechConfig:
    """The config class of ``values["model_type"]`` (default ``granite_speech``) built from ``values``."""
    cls = speech_model_class(values.get("model_type", "granite_speech")).config_class
    return cls.from_dict(dict(values))


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
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(str(path), trust_remote_code=trust_remote_code)
    hf = speech_model_class(config).from_pretrained(
        str(path), config=config, trust_remote_code=trust_remote_code
    )
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
    tokenizer = load_tokenizer(path, trust_remote_code)
    speech = SpeechLLM(hf, tokenizer, attn_impl=attn_impl)
    if Path(str(path)).is_dir():  # a CTC head grown for a new language: its symbol table beside config.json
        from granite_train.models.export import check_head_matches_vocab, read_ctc_vocab

        vocab = read_ctc_vocab(path)
        if vocab is not None:
            check_head_matches_vocab(speech.encoder.config.output_dim, vocab, str(path))
            speech.encoder.extra_symbols = vocab.extra_symbols
    return speech


def replace_encoder(speech: SpeechLLM, encoder: str | Path | CTCEncoder, attn_impl: str = "sdpa") -> None:
    """Put another stage-1 encoder into ``speech`` (e.g. one continued on a new language, with a
    larger CTC head); the projector reads its hidden states, so the widths must match."""
    from granite_train.models.export import load_encoder

    where = str(encoder)
    if not isinstance(encoder, CTCEncoder):
        encoder = load_encoder(encoder, attn_impl=attn_impl)
    old = speech.encoder
    if encoder.config.hidden_dim != old.config.hidden_dim or encoder.config.input_dim != old.config.input_dim:
        raise ValueError(
            f"model.encoder ({where}) has hidden_dim {encoder.config.hidden_dim} and input_dim "
            f"{encoder.config.input_dim}; the projector of model.init reads hidden_dim {old.config.hidden_dim}, "
            f"input_dim {old.config.input_dim}: they must match"
        )
    reference = next(old.parameters())
    encoder.to(device=reference.device, dtype=reference.dtype)
    speech.hf.model.encoder = encoder
    speech.hf.config.encoder_config = type(speech.hf.config.encoder_config)(**encoder.config.to_dict())
    log.info("encoder of model.init replaced by %s (%d CTC outputs)", where, encoder.config.output_dim)


def build_speech_llm(model: SpeechLLMModelConfig | Mapping[str, Any]) -> SpeechLLM:
    """The stage-2 model from its config (:class:`SpeechLLMModelConfig`, or its mapping form).

    ``init`` (an existing GraniteSpeech folder / hub id: route b) or ``encoder`` + ``llm`` (route a);
    then a LoRA adapter when ``lora`` is set and the model has none, and ``train`` picks what trains.
    """
    cfg = from_mapping(SpeechLLMModelConfig, model, "model")
    if cfg.init:
        speech = load_speech_llm(
            cfg.init, adapter=cfg.adapter, attn_impl=cfg.attn_impl, trust_remote_code=cfg.trust_remote_code
        )
        if cfg.encoder:  # route c: a trained speech LLM continued on another encoder (a new language's)
            replace_encoder(speech, cfg.encoder, attn_impl=cfg.attn_impl)
    else:
        if not cfg.encoder or not cfg.llm:
            raise ValueError("model needs `init` (a GraniteSpeech checkpoint) or both `encoder` and `llm`")
        speech = assemble_speech_llm(
            cfg.encoder,
            cfg.llm,
            projector=cfg.projector,
            window_size=int(cfg.window_size),
            downsample_rate=int(cfg.downsample_rate),
            attn_impl=cfg.attn_impl,
            trust_remote_code=cfg.trust_remote_code,
        )
    if cfg.lora and not speech.has_lora:
        speech.add_lora(cfg.lora)
    train = asdict(cfg.train)
    if train["lora"] is None:
        train["lora"] = speech.has_lora
    speech.set_trainable(**train)
    speech.set_gradient_checkpointing(**asdict(cfg.gradient_checkpointing))
    return speech


def format_counts(counts: Mapping[str, int]) -> str:
    parts = ", ".join(
        f"{k.split('/', 1)[1]} {v:,}" for k, v in sorted(counts.items()) if k.startswith("trainable/")
    )
    share = 100.0 * counts["trainable"] / max(counts["total"], 1)
    return f"trainable {counts['trainable']:,} / {counts['total']:,} parameters ({share:.2f}%): {parts or 'none'}"


__all__: Sequence[str] = [
    "LoraSettings",
    "PROJECTOR_PRESETS",
    "SpeechLLM",
    "SpeechLLMOutput",
    "assemble_speech_llm",
    "build_speech_llm",
    "format_counts",
    "load_speech_llm",
    "load_tokenizer",
]
