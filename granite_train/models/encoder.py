"""Stage-1 CTC conformer encoder, parameter-compatible with transformers' ``GraniteSpeechCTCEncoder``.

The reference (``transformers.models.granite_speech``) is an inference module: it has no padding mask,
always runs the math attention kernel and cannot checkpoint activations. ``CTCEncoder`` keeps its
parameters key for key (``input_linear``, ``layers.{i}.{ff1,attn,conv,ff2,post_norm}``, ``out``,
``out_mid``), so a state dict moves either way with ``strict=True``, and adds what training needs:

* a padding mask from per-utterance frame counts: attention keys past a sample's length are masked
  (block attention included), padded frames are zeroed before the depthwise conv and left out of
  BatchNorm statistics in training, so a sample's outputs do not depend on its batch's padding;
* ``attn_impl="sdpa"`` (``F.scaled_dot_product_attention`` with the Shaw bias as ``attn_mask``) or
  ``"math"`` (the explicit reference computation);
* per-layer activation checkpointing;
* final and mid-layer (self-conditioning) CTC logits in the output.

Feature, FF and attention sub-modules are transformers' own classes (sub-classed where only the forward
changes), so parameter names and initialisation stay theirs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint
from transformers.models.granite_speech.configuration_granite_speech import GraniteSpeechEncoderConfig
from transformers.models.granite_speech.modeling_granite_speech import (
    GraniteSpeechConformerAttention,
    GraniteSpeechConformerConvModule,
    GraniteSpeechConformerFeedForward,
)

from granite_train.text.vocab import VOCAB_SIZE, CharVocab

AttnImpl = Literal["sdpa", "math"]

__all__ = [
    "PRESETS",
    "AttnImpl",
    "CTCEncoder",
    "EncoderOutput",
    "GraniteSpeechEncoderConfig",
    "encoder_config",
    "lengths_to_mask",
]


# --------------------------------------------------------------------------------------------------
# presets
# --------------------------------------------------------------------------------------------------
# granite-4.0-1b-speech encoder (see shared/RECIPE.md, Encoder).
_GRANITE_4_0_1B = dict(
    input_dim=160,
    num_layers=16,
    hidden_dim=1024,
    feedforward_mult=4,
    num_heads=8,
    dim_head=128,
    output_dim=348,
    context_size=200,
    max_pos_emb=512,
    dropout=0.1,
    conv_kernel_size=15,
    conv_expansion_factor=2,
)
PRESETS: dict[str, dict] = {
    # CPU tests and the tiny end-to-end recipe (~2 M parameters): the published block, only smaller.
    "tiny": {**_GRANITE_4_0_1B, "num_layers": 4, "hidden_dim": 128, "num_heads": 4, "dim_head": 32},
    "granite_4_0_1b": _GRANITE_4_0_1B,
}


def encoder_config(preset: str, **overrides) -> GraniteSpeechEncoderConfig:
    """Return the ``GraniteSpeechEncoderConfig`` of a named preset, with optional field overrides."""
    if preset not in PRESETS:
        raise KeyError(f"unknown encoder preset {preset!r}; known: {sorted(PRESETS)}")
    return GraniteSpeechEncoderConfig(**{**PRESETS[preset], **overrides})


# --------------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------------
def lengths_to_mask(lengths: torch.Tensor, max_len: int) -> torch.Tensor:
    """(B,) frame counts -> (B, max_len) bool, True on valid frames."""
    return torch.arange(max_len, device=lengths.device)[None, :] < lengths[:, None]


def attention_dists(context_size: int, max_pos_emb: int, device: torch.device | None = None) -> torch.Tensor:
    """Shaw relative-position indices (context_size, context_size), as the reference's buffer.

    Computed on the fly (a few microseconds) rather than kept as a non-persistent buffer, so a model
    built on the ``meta`` device and materialised later needs no re-initialisation.
    """
    seq = torch.arange(context_size, device=device)
    relpos_dist = seq.view(-1, 1) - seq.view(1, -1)
    return torch.clamp(relpos_dist, -context_size, context_size) + max_pos_emb


def masked_batch_norm(
    bn: nn.BatchNorm1d, x: torch.Tensor, valid: torch.Tensor | None, update_stats: bool = True
) -> torch.Tensor:
    """BatchNorm1d over (B, C, T) whose training statistics use only valid frames.

    Eval mode (or training without padding) uses the module itself. ``update_stats=False`` normalises
    with batch statistics but leaves the running statistics alone (checkpoint recomputation).
    """
    if not bn.training or (valid is None and update_stats):
        return bn(x)

    xf = x.float()  # statistics in fp32, also under autocast
    if valid is None:
        m = None
        count = torch.tensor(float(xf.shape[0] * xf.shape[2]), device=xf.device)
    else:
        m = valid[:, None, :].to(xf.dtype)  # (B, 1, T)
        count = m.sum().clamp_min(1.0)
    mean = (xf if m is None else xf * m).sum(dim=(0, 2)) / count
    sq = (xf - mean[None, :, None]) ** 2
    var = (sq if m is None else sq * m).sum(dim=(0, 2)) / count  # biased, as BatchNorm normalises
    if update_stats and bn.track_running_stats:
        with torch.no_grad():
            bn.num_batches_tracked.add_(1)
            momentum = 1.0 / float(bn.num_batches_tracked) if bn.momentum is None else bn.momentum
            unbiased = var * count / (count - 1).clamp_min(1.0)
            bn.running_mean.lerp_(mean.to(bn.running_mean.dtype), momentum)
            bn.running_var.lerp_(unbiased.to(bn.running_var.dtype), momentum)
    y = (xf - mean[None, :, None]) * torch.rsqrt(var[None, :, None] + bn.eps)
    if bn.affine:
        y = y * bn.weight[None, :, None] + bn.bias[None, :, None]
    return y.to(x.dtype)


def shaw_bias(query: torch.Tensor, table: torch.Tensor, max_pos_emb: int) -> torch.Tensor:
    """Shaw bias ``q_i . table[i - j + max_pos_emb]`` of one (C, C) block, as a single GEMM.

    The reference gathers a (C, C, Dh) embedding tensor and contracts it per query position (a
    batched matmul over C with permuted copies). Here the queries meet the 2C-1 distinct distance
    rows once, and the (i, j) band is read out by re-striding the flat scores (Transformer-XL's
    relative shift): same values, twice the multiply-adds, no gather. Faster in bf16 on CPU, where
    copies rather than FLOPs bound the step (``benchmarks/encoder_step.py``).

    query (..., C, Dh) -> (..., C, C). Distances stay within +-(C-1), so the reference's clamp
    at +-C never applies.
    """
    c = query.shape[-2]
    rows = table[max_pos_emb - c + 1 : max_pos_emb + c].flip(0)  # row m: distance i - j = c-1-m
    scores = torch.matmul(query, rows.t().to(query.dtype))  # (..., C, 2C-1)
    lead = scores.shape[:-2]
    # scores[i, c-1-i+j] sits at flat offset (c-1) + i*(2c-2) + j: a (C, 2C-2) view, first C columns
    flat = scores.reshape(*lead, c * (2 * c - 1))[..., c - 1 : c - 1 + c * (2 * c - 2)]
    return flat.reshape(*lead, c, 2 * c - 2)[..., :c]


# --------------------------------------------------------------------------------------------------
# blocks: transformers' modules with a masked forward (same __init__, hence the same parameters)
# --------------------------------------------------------------------------------------------------
class MaskedConformerAttention(GraniteSpeechConformerAttention):
    """Block (context_size) self-attention with Shaw rel-pos bias and a key padding mask."""

    def forward(  # type: ignore[override]
        self,
        hidden_states: torch.Tensor,
        attention_dists: torch.Tensor,
        valid: torch.Tensor | None = None,
        attn_impl: AttnImpl = "sdpa",
    ) -> torch.Tensor:
        hidden_states = self.pre_norm(hidden_states)
        bsz, num_features, _ = hidden_states.shape
        ctx = self.context_size
        num_blocks = math.ceil(num_features / ctx)
        pad = num_blocks * ctx - num_features
        if pad:
            hidden_states = F.pad(hidden_states, (0, 0, 0, pad))  # (B, nb*C, D)

        query = self.to_q(hidden_states)
        key, value = self.to_kv(hidden_states).chunk(2, dim=-1)
        flat_bsz = bsz * num_blocks
        # (B, nb*C, H*Dh) -> (B*nb, H, C, Dh)
        query = query.reshape(flat_bsz, ctx, self.num_heads, -1).transpose(1, 2)
        key = key.reshape(flat_bsz, ctx, self.num_heads, -1).transpose(1, 2)
        value = value.reshape(flat_bsz, ctx, self.num_heads, -1).transpose(1, 2)

        # Shaw relative-position bias: (B*nb, H, C, C)
        if query.dtype in (torch.bfloat16, torch.float16):
            bias = shaw_bias(query, self.rel_pos_emb.weight, self.max_pos_emb) * self.scale
        else:  # as the reference computes it (in fp32 also the faster of the two on CPU)
            rel_pos_emb = self.rel_pos_emb(attention_dists)  # (C, C, Dh)
            bias = torch.einsum("b h c d, c r d -> b h c r", query, rel_pos_emb) * self.scale
        bias = bias.to(query.dtype)  # sdpa needs attn_mask in q's dtype (autocast may differ)

        if valid is not None or pad:
            if valid is None:
                key_valid = torch.ones(bsz, num_features, dtype=torch.bool, device=bias.device)
            else:
                key_valid = valid
            if pad:
                key_valid = F.pad(key_valid, (0, pad), value=False)
            key_valid = key_valid.reshape(flat_bsz, 1, 1, ctx)
            # finite fill: fully padded blocks get uniform (finite) attention instead of NaN
            bias = bias.masked_fill(~key_valid, torch.finfo(bias.dtype).min)

        if attn_impl == "sdpa":
            out = F.scaled_dot_product_attention(query, key, value, attn_mask=bias, scale=self.scale)
        elif attn_impl == "math":
            scores = torch.matmul(query, key.transpose(-2, -1)) * self.scale + bias
            out = torch.matmul(scores.softmax(dim=-1), value)
        else:
            raise ValueError(f"attn_impl must be 'sdpa' or 'math', got {attn_impl!r}")

        out = out.transpose(1, 2).reshape(bsz, num_blocks * ctx, -1)  # (B, nb*C, H*Dh)
        out = self.to_out(out[:, :num_features, :])
        return self.dropout(out)


class MaskedConformerConvModule(GraniteSpeechConformerConvModule):
    """Conformer conv module; padded frames are zeroed before the depthwise conv and left out of BN stats."""

    def forward(  # type: ignore[override]
        self, hidden_states: torch.Tensor, valid: torch.Tensor | None = None, update_stats: bool = True
    ) -> torch.Tensor:
        hidden_states = self.norm(hidden_states)
        hidden_states = self.up_conv(hidden_states.permute(0, 2, 1))  # (B, T, D) -> (B, 2*E, T)
        hidden_states = self.glu(hidden_states)  # (B, E, T)
        if valid is not None:
            hidden_states = hidden_states.masked_fill(~valid[:, None, :], 0.0)
        if hidden_states.device.type == "cpu" and torch.is_autocast_enabled("cpu"):
            # oneDNN's bf16 depthwise-conv backward is ~1.5x slower than fp32 on CPU
            with torch.autocast("cpu", enabled=False):
                hidden_states = self.depth_conv(hidden_states.to(self.depth_conv.conv.weight.dtype))
        else:
            hidden_states = self.depth_conv(hidden_states)
        hidden_states = self.silu(masked_batch_norm(self.batch_norm, hidden_states, valid, update_stats))
        hidden_states = self.down_conv(hidden_states).permute(0, 2, 1)  # (B, T, D)
        return self.dropout(hidden_states)


class MaskedConformerBlock(nn.Module):
    """Macaron conformer block; attribute names match ``GraniteSpeechConformerBlock``."""

    def __init__(self, config: GraniteSpeechEncoderConfig):
        super().__init__()
        self.ff1 = GraniteSpeechConformerFeedForward(config)
        self.attn = MaskedConformerAttention(config)
        self.conv = MaskedConformerConvModule(config)
        self.ff2 = GraniteSpeechConformerFeedForward(config)
        self.post_norm = nn.LayerNorm(config.hidden_dim)

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_dists: torch.Tensor,
        valid: torch.Tensor | None = None,
        attn_impl: AttnImpl = "sdpa",
        update_stats: bool = True,
    ) -> torch.Tensor:
        hidden_states = 0.5 * self.ff1(hidden_states) + hidden_states
        hidden_states = self.attn(hidden_states, attention_dists, valid, attn_impl) + hidden_states
        hidden_states = self.conv(hidden_states, valid, update_stats) + hidden_states
        hidden_states = 0.5 * self.ff2(hidden_states) + hidden_states
        return self.post_norm(hidden_states)


# --------------------------------------------------------------------------------------------------
# encoder
# --------------------------------------------------------------------------------------------------
@dataclass
class EncoderOutput:
    """Outputs of :class:`CTCEncoder` (shapes for input (B, T, input_dim))."""

    last_hidden_state: torch.Tensor
    """(B, T, hidden_dim): final hidden states (what the reference returns; the projector's input);
    with ``config.cat_hidden_layers`` (granite_speech_plus) those layers' outputs concatenated
    before them: (B, T, hidden_dim * (len(cat_hidden_layers) + 1))."""
    logits: torch.Tensor
    """(B, T, output_dim): final CTC logits, ``out`` of the final hidden states."""
    mid_logits: torch.Tensor | None
    """(B, T, output_dim): self-conditioning logits after layer num_layers//2 (None if that is 0)."""
    lengths: torch.Tensor
    """(B,): valid output frames per utterance (the encoder keeps the frame rate)."""


class CTCEncoder(nn.Module):
    """Granite-Speech conformer CTC encoder with padding masks, kernel choice and checkpointing.

    Data flow::

        input_features (B, T, 160) --input_linear--> (B, T, D)
          -> N x [ff1/2 -> block attn (rel-pos, key mask) -> conv (masked) -> ff2/2 -> LN]
             after layer N//2: mid_logits = out(h); h += out_mid(softmax(mid_logits))
          -> last_hidden_state (B, T, D) --out--> logits (B, T, output_dim)

    Args:
        config: the transformers ``GraniteSpeechEncoderConfig`` (see :func:`encoder_config`).
        attn_impl: ``"sdpa"`` (fused kernels where available) or ``"math"`` (explicit reference math).
        gradient_checkpointing: recompute each layer's activations in backward.
        extra_symbols: the CTC symbols after the base vocabulary's 348 (a new language's letters;
            see :class:`~granite_train.text.vocab.CharVocab`); ``output_dim`` must then be 348 plus
            their number. Not a tensor: exports and checkpoints carry it as a symbol table.
    """

    def __init__(
        self,
        config: GraniteSpeechEncoderConfig,
        attn_impl: AttnImpl = "sdpa",
        gradient_checkpointing: bool = False,
        extra_symbols: Sequence[str] = (),
    ):
        super().__init__()
        if attn_impl not in ("sdpa", "math"):
            raise ValueError(f"attn_impl must be 'sdpa' or 'math', got {attn_impl!r}")
        self.extra_symbols: tuple[str, ...] = CharVocab(extra_symbols=extra_symbols).extra_symbols
        if self.extra_symbols and config.output_dim != VOCAB_SIZE + len(self.extra_symbols):
            raise ValueError(
                f"output_dim is {config.output_dim} but the CTC vocabulary has "
                f"{VOCAB_SIZE + len(self.extra_symbols)} symbols ({VOCAB_SIZE} base + "
                f"{len(self.extra_symbols)} extra): they must be equal"
            )
        self.config = config
        self.attn_impl: AttnImpl = attn_impl
        self.gradient_checkpointing = gradient_checkpointing
        self.num_layers = config.num_layers
        self.input_linear = nn.Linear(config.input_dim, config.hidden_dim, bias=True)
        self.layers = nn.ModuleList([MaskedConformerBlock(config) for _ in range(config.num_layers)])
        self.out = nn.Linear(config.hidden_dim, config.output_dim, bias=True)
        self.out_mid = nn.Linear(config.output_dim, config.hidden_dim, bias=True)

    def ctc_vocab(self, oov_policy: str = "drop") -> CharVocab:
        """The vocabulary of the CTC head (base + :attr:`extra_symbols`).

        Raises:
            ValueError: the head has more outputs than the vocabulary has symbols (some ids could
                not be decoded), naming both sizes.
        """
        vocab = CharVocab(oov_policy, extra_symbols=self.extra_symbols)
        if self.config.output_dim > len(vocab):
            raise ValueError(
                f"the CTC head has {self.config.output_dim} outputs but its vocabulary only "
                f"{len(vocab)} symbols: load the encoder with its symbol table (ctc_vocab.json)"
            )
        return vocab

    def _layer(self, layer: MaskedConformerBlock, hidden: torch.Tensor, dists, valid) -> torch.Tensor:
        if not (self.gradient_checkpointing and torch.is_grad_enabled()):
            return layer(hidden, dists, valid, self.attn_impl)
        calls = [0]

        def run(h: torch.Tensor, d: torch.Tensor, v: torch.Tensor | None) -> torch.Tensor:
            # BatchNorm running stats are updated on the first call only, not on recomputation
            calls[0] += 1
            return layer(h, d, v, self.attn_impl, update_stats=calls[0] == 1)

        return checkpoint(run, hidden, dists, valid, use_reentrant=False)

    def forward(
        self, input_features: torch.Tensor, lengths: torch.Tensor | None = None, **_: object
    ) -> EncoderOutput:
        """input_features (B, T, input_dim); lengths (B,) valid frames per utterance, None = all T.

        Other keyword arguments (``return_dict`` from ``GraniteSpeechModel``) are ignored, so this
        module can stand in for the reference inside ``GraniteSpeechForConditionalGeneration``.
        """
        bsz, num_frames, _ = input_features.shape
        if lengths is None:
            valid = None
            out_lengths = torch.full((bsz,), num_frames, dtype=torch.long, device=input_features.device)
        else:
            # an unpadded batch needs no masks; checked only where it costs no device sync
            unpadded = lengths.device.type == "cpu" and bool((lengths >= num_frames).all())
            lengths = lengths.to(device=input_features.device, dtype=torch.long)
            valid = None if unpadded else lengths_to_mask(lengths, num_frames)  # (B, T)
            out_lengths = lengths
        dists = attention_dists(self.config.context_size, self.config.max_pos_emb, input_features.device)

        hidden = self.input_linear(input_features)  # (B, T, 160) -> (B, T, D)
        # granite_speech_plus: these layers' outputs (0 = the input projection) go to the projector
        # too, concatenated before the last one (the CTC logits read the last one alone)
        cat_layers = set(getattr(self.config, "cat_hidden_layers", None) or ())
        exported = [hidden] if 0 in cat_layers else []
        mid_logits = None
        for idx, layer in enumerate(self.layers, start=1):
            hidden = self._layer(layer, hidden, dists, valid)
            if idx == self.num_layers // 2:
                mid_logits = self.out(hidden)  # (B, T, V)
                hidden = hidden + self.out_mid(mid_logits.softmax(dim=-1))
            if idx in cat_layers:  # after the self-conditioning: transformers adds it in place
                exported.append(hidden)
        logits = self.out(hidden)
        projected = torch.cat([*exported, hidden], dim=-1) if exported else hidden
        return EncoderOutput(
            last_hidden_state=projected, logits=logits, mid_logits=mid_logits, lengths=out_lengths
        )
