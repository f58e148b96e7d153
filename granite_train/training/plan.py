"""What a recipe costs before it runs: steps, audio hours, FLOPs, GPU-hours and days.

``granite-train plan recipe=NAME`` composes the recipe exactly as ``granite-train train`` does and
hands the resolved mapping to :func:`plan_recipe`. Nothing is built at full size: the model's shapes
come from its configs (a stage-1 preset, a stage-2 encoder / LLM ``config.json``, or the published
shapes in :data:`KNOWN_LLMS`), and the FLOPs are counted analytically, matmul by matmul.

What is counted (:class:`Matmul`): every matrix product and convolution of a training step, as
``torch.utils.flop_counter.FlopCounterMode`` counts them (2 FLOPs per multiply-add): linear layers,
the conformer's 1x1 and depthwise convolutions, block attention (scores, context, Shaw bias), the
Q-Former's self- and cross-attention, the LLM's GQA attention over the whole sequence (a causal
mask computes the full square, as the kernels with an explicit mask do), LoRA's two factors, and
the LM head at labelled positions only (:meth:`SpeechLLM.forward`). Backward costs one forward per
operand gradient autograd computes: 2x for a trained linear layer, 1x for a frozen one whose input
needs a gradient (the LLM under LoRA), 0 for a frozen encoder (stage 2 runs it without a graph).
Left out, as by the torch counter: norms, softmax, activations, embeddings, losses (CTC, cross-
entropy) and the optimizer; also the rotary-position product (a few FLOPs per token), activation
recomputation (checkpointing) and the training-only auxiliary heads (``model.loss.*``, zero in the
published recipes). These are *model* FLOPs, the numerator of MFU.

The batch is a model of the data: every utterance lasts ``utterance_seconds``; a micro-batch holds
as many as fit in ``data.train.max_frames`` padded 50 Hz frames (at least one); ``padding`` of those
frames are padding (duration bucketing leaves ~5% with 32 buckets, RESULTS.md), which costs compute
but is not audio. Each utterance has ``prompt_tokens`` of chat template + instruction and
``target_tokens_per_second`` of transcript (+ EOS) in stage 2.

Time: total FLOPs / (GPUs x peak x MFU), or measured: ``measure=true`` runs a few real training
steps of the recipe (:func:`granite_train.training.run.train`, one device) and multiplies its
seconds per step by ``trainer.max_steps`` (data parallel: each GPU runs its own micro-batches in
the same time; the gradient all-reduce is not in the measurement).
"""

from __future__ import annotations

import copy
import json
import math
import statistics
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from granite_train.speech_format import encoder_frames, projector_tokens
from granite_train.training.config import RecipeConfig, load_recipe_config
from granite_train.training.memory import PROMPT_TOKENS, TARGET_TOKENS_PER_SECOND
from granite_train.typed_config import to_plain

FRAME_RATE = 50  # encoder frames per second of audio
SAMPLE_RATE = 16000
SECONDS_PER_DAY = 86400.0

# dense bf16 peak FLOP/s per GPU (vendor data sheets: no 2:4 sparsity)
GPU_PEAK_FLOPS: dict[str, float] = {"h100": 989e12, "h200": 989e12, "a100": 312e12}
GPU_NAMES = {"h100": "H100 SXM", "h200": "H200", "a100": "A100"}

# granite-4.0-1b-base, the shapes that cost FLOPs (RECIPE.md; feed-forward 4096 from its GGUF
# metadata, as benchmarks/stage2_step.py's GRANITE_4_0_1B_BASE): used when the hub config is not cached
KNOWN_LLMS: dict[str, dict[str, int]] = {
    "ibm-granite/granite-4.0-1b-base": dict(
        vocab_size=100353,
        hidden_size=2048,
        intermediate_size=4096,
        num_hidden_layers=40,
        num_attention_heads=16,
        num_key_value_heads=4,
    ),
}


@dataclass(frozen=True)
class Published:
    """IBM's published compute for a recipe (RECIPE.md, model card C40)."""

    gpus: int
    gpu: str
    days: float
    source: str = "RECIPE.md, model card C40"


PUBLISHED: dict[str, Published] = {
    "ctc_granite_4_0_1b": Published(gpus=8, gpu="h100", days=26.0),
    "speech_llm_granite_4_0_1b": Published(gpus=8, gpu="h100", days=4.0),
}


# --------------------------------------------------------------------------------------------------
# options
# --------------------------------------------------------------------------------------------------
# audio seconds per second that one loader core delivers from staged FLAC shards (issue 29:
# `benchmarks/loader_throughput.py`, the 2-core AMD EPYC development machine, one torch thread)
LOADER_X_REAL_TIME = 1200.0


@dataclass
class PlanOptions:
    """What a recipe does not say: the hardware, the efficiency and the typical utterance.

    Attributes:
        num_gpus: GPUs of the run; null = ``trainer.devices x trainer.num_nodes``, and 8 (one node,
            as the published runs) where ``devices`` is ``auto`` on a GPU recipe (1 on CPU).
        gpu: ``h100``, ``h200`` or ``a100`` (:data:`GPU_PEAK_FLOPS`).
        peak_flops: peak FLOP/s per GPU; overrides ``gpu``'s.
        mfu: model FLOPs utilisation assumed for the analytic time.
        utterance_seconds: length of every utterance of the modelled batch.
        padding: share of a batch's padded frames that are padding (computed, but not audio).
        prompt_tokens: stage 2: text tokens before the target (chat template + instruction).
        target_tokens_per_second: stage 2: transcript tokens per second of speech (+ EOS).
        measure: also time real training steps of the recipe on this machine (one device).
        measure_steps: timed optimizer steps.
        measure_warmup: optimizer steps run before timing (first-step allocation, data start).
        loader_x_real_time: audio seconds one loader core delivers per second (decode, checks,
            bucketing, log-mel) from staged FLAC shards: ``benchmarks/loader_throughput.py``'s figure
            on the 2-core development machine; measure yours and set it.
    """

    num_gpus: int | None = None
    gpu: str = "h100"
    peak_flops: float | None = None
    mfu: float = 0.4
    utterance_seconds: float = 15.0
    padding: float = 0.05
    prompt_tokens: int = PROMPT_TOKENS
    target_tokens_per_second: float = TARGET_TOKENS_PER_SECOND
    measure: bool = False
    measure_steps: int = 5
    measure_warmup: int = 2
    loader_x_real_time: float = LOADER_X_REAL_TIME

    def __post_init__(self) -> None:
        if self.loader_x_real_time <= 0:
            raise ValueError(f"loader_x_real_time must be > 0, got {self.loader_x_real_time}")
        if self.gpu not in GPU_PEAK_FLOPS:
            raise ValueError(f"gpu must be one of {sorted(GPU_PEAK_FLOPS)}, got {self.gpu!r}")
        if not 0.0 < self.mfu <= 1.0:
            raise ValueError(f"mfu must be in (0, 1], got {self.mfu}")
        if not 0.0 <= self.padding < 1.0:
            raise ValueError(f"padding must be in [0, 1), got {self.padding}")
        if self.utterance_seconds <= 0:
            raise ValueError(f"utterance_seconds must be > 0, got {self.utterance_seconds}")
        if self.num_gpus is not None and self.num_gpus < 1:
            raise ValueError(f"num_gpus must be >= 1, got {self.num_gpus}")
        if self.measure_steps < 1 or self.measure_warmup < 1:
            raise ValueError("measure_steps and measure_warmup must be >= 1")

    @property
    def peak(self) -> float:
        return float(self.peak_flops) if self.peak_flops else GPU_PEAK_FLOPS[self.gpu]


# --------------------------------------------------------------------------------------------------
# shapes
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class EncoderShape:
    """The conformer's FLOP-relevant fields (``GraniteSpeechEncoderConfig``)."""

    input_dim: int
    num_layers: int
    hidden_dim: int
    feedforward_mult: int
    num_heads: int
    dim_head: int
    output_dim: int
    context_size: int
    conv_kernel_size: int
    conv_expansion_factor: int

    @classmethod
    def of(cls, config: Any) -> EncoderShape:
        return cls(**{f: int(getattr(config, f)) for f in cls.__dataclass_fields__})


@dataclass(frozen=True)
class TurboCTCShape:
    """A granite-speech-5.0 TurboCTC encoder (``GraniteSpeech5EncoderConfig``): conformer blocks at
    50 Hz in, each of ``subsample_layers`` halving the frame rate (its strided convolution and a
    pooled residual), a BPE CTC head of ``vocab_size`` (the model's ``ctc_head``, tied to ``out``)."""

    input_dim: int
    num_layers: int
    hidden_size: int
    intermediate_size: int
    num_heads: int
    head_dim: int
    vocab_size: int
    context_size: int
    conv_kernel_size: int
    conv_expansion_factor: int
    subsample_layers: tuple[int, ...]

    @classmethod
    def of(cls, config: Any) -> TurboCTCShape:
        """From a ``GraniteSpeech5CTCConfig`` (or its ``encoder_config``)."""
        enc = getattr(config, "encoder_config", config)
        heads = int(enc.num_attention_heads)
        return cls(
            input_dim=4 * int(enc.num_mel_bins),  # log-mel + deltas, pairs of frames stacked
            num_layers=int(enc.num_hidden_layers),
            hidden_size=int(enc.hidden_size),
            intermediate_size=int(enc.intermediate_size),
            num_heads=heads,
            head_dim=int(getattr(enc, "head_dim", None) or enc.hidden_size // heads),
            vocab_size=int(enc.vocab_size),
            context_size=int(enc.context_size),
            conv_kernel_size=int(enc.conv_kernel_size),
            conv_expansion_factor=int(enc.conv_expansion_factor),
            subsample_layers=tuple(int(i) for i in enc.subsample_layers),
        )


@dataclass(frozen=True)
class ProjectorShape:
    """The windowed Q-Former (``Blip2QFormerConfig`` + window / downsample) and its output width."""

    hidden_size: int
    num_layers: int
    num_heads: int
    intermediate_size: int
    cross_attention_frequency: int
    encoder_hidden_size: int
    window_size: int
    downsample_rate: int
    llm_hidden_size: int

    @property
    def queries(self) -> int:
        return self.window_size // self.downsample_rate


@dataclass(frozen=True)
class LLMShape:
    """A dense Granite / Llama decoder: GQA attention + gated MLP + (tied) LM head."""

    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int

    @classmethod
    def of(cls, config: Any) -> LLMShape:
        if getattr(config, "model_type", "") == "granitemoehybrid":
            # granite-4.0 nano: attention-only layers and a dense shared MLP compute what Granite does
            kinds = set(getattr(config, "layer_types", None) or ["attention"])
            if kinds != {"attention"} or getattr(config, "num_local_experts", 0):
                raise ValueError("plan: only attention-only, dense granitemoehybrid LLMs are modelled")
            intermediate = config.shared_intermediate_size
        else:
            intermediate = config.intermediate_size
        heads = int(config.num_attention_heads)
        return cls(
            hidden_size=int(config.hidden_size),
            num_layers=int(config.num_hidden_layers),
            num_heads=heads,
            num_kv_heads=int(getattr(config, "num_key_value_heads", None) or heads),
            head_dim=int(getattr(config, "head_dim", None) or config.hidden_size // heads),
            intermediate_size=int(intermediate),
            vocab_size=int(config.vocab_size),
        )


@dataclass(frozen=True)
class Trainable:
    """What a step trains, which decides what its backward computes.

    Attributes:
        encoder_layers: top conformer layers that train (all in stage 1; 0 = frozen, no graph).
        encoder_ctc: a CTC loss on the encoder's logits (stage 1; stage 2 ``encoder_ctc_weight``).
        projector / llm: those parts train (the LLM in full, embeddings and head included).
        lora_rank: rank of the LLM's LoRA adapter (0: none); it runs in the forward even frozen.
        lora_trains: the adapter trains.
        lora_targets: LLM module names that carry the adapter (``q_proj``, ``v_proj``, ...).
    """

    encoder_layers: int
    encoder_ctc: bool = True
    projector: bool = False
    llm: bool = False
    lora_rank: int = 0
    lora_trains: bool = False
    lora_targets: tuple[str, ...] = ()


@dataclass(frozen=True)
class ModelShape:
    """A stage's model: the encoder alone (stage 1) or encoder + projector + LLM (stage 2).

    ``half_precision``: the encoder's Shaw bias runs as one GEMM over the 2C-1 distances in bf16 /
    fp16 (twice the multiply-adds of the fp32 einsum, :func:`granite_train.models.encoder.shaw_bias`).
    """

    encoder: EncoderShape | TurboCTCShape
    trainable: Trainable
    projector: ProjectorShape | None = None
    llm: LLMShape | None = None
    half_precision: bool = False


@dataclass(frozen=True)
class MicroBatch:
    """One GPU's micro-batch: ``utterances`` of ``frames`` 50 Hz frames each (stage 2: their text).

    ``target_tokens`` are the labelled tokens (transcript + EOS), where the LM head runs.
    """

    utterances: int
    frames: int
    prompt_tokens: int = 0
    target_tokens: int = 0


# --------------------------------------------------------------------------------------------------
# the analytic count
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Matmul:
    """One matrix product (or convolution) of a step: forward FLOPs and the operand gradients
    (0, 1 or 2) its backward computes, each as costly as the forward."""

    part: str
    name: str
    flops: float
    grads: int

    @property
    def backward(self) -> float:
        return self.flops * self.grads


def _linear(part: str, name: str, rows: int, d_in: int, d_out: int, input_grad: bool, weight_grad: bool):
    """(rows, d_in) @ (d_in, d_out); backward: the input's gradient and / or the weight's."""
    return Matmul(part, name, 2.0 * rows * d_in * d_out, int(input_grad) + int(weight_grad))


def _product(part: str, name: str, batch: int, m: int, k: int, n: int, lhs_grad: bool, rhs_grad: bool):
    """``batch`` products (m, k) @ (k, n) of two activations (attention scores / context)."""
    return Matmul(part, name, 2.0 * batch * m * k * n, int(lhs_grad) + int(rhs_grad))


def encoder_matmuls(
    shape: EncoderShape, batch: MicroBatch, trainable: Trainable, half_precision: bool = False
) -> list[Matmul]:
    """The conformer's products for ``batch`` (:class:`~granite_train.models.encoder.CTCEncoder`).

    Block attention pads every utterance to whole ``context_size`` blocks before its q / kv
    projections; the CTC head runs after layer ``num_layers // 2`` (self-conditioning, with
    ``out_mid`` back to the hidden size) and at the end.
    """
    part, s = "encoder", shape
    rows = batch.utterances * batch.frames
    blocks = batch.utterances * math.ceil(batch.frames / s.context_size)
    padded_rows, heads = blocks * s.context_size, blocks * s.num_heads
    inner, expand, ctx = s.num_heads * s.dim_head, s.hidden_dim * s.conv_expansion_factor, s.context_size
    first_trained = s.num_layers - trainable.encoder_layers  # layers above this index train
    whole = trainable.encoder_layers >= s.num_layers
    head = trainable.encoder_layers > 0  # the CTC head `out` trains with any encoder layer
    # the input features need no gradient: input_linear computes only its weight's
    out = [_linear(part, "input_linear", rows, s.input_dim, s.hidden_dim, False, whole)]
    act = whole  # whether the hidden state needs a gradient
    for idx in range(1, s.num_layers + 1):
        t = idx > first_trained
        a = act or t  # a trained layer's norms train: its inputs to every product need a gradient
        name = f"layers.{idx - 1}"
        wide = s.hidden_dim * s.feedforward_mult
        shaw_columns = 2 * ctx - 1 if half_precision else ctx
        for ff in ("ff1", "ff2"):
            out += [
                _linear(part, f"{name}.{ff}.up_proj", rows, s.hidden_dim, wide, a, t),
                _linear(part, f"{name}.{ff}.down_proj", rows, wide, s.hidden_dim, a, t),
            ]
        out += [
            _linear(part, f"{name}.attn.to_q", padded_rows, s.hidden_dim, inner, a, t),
            _linear(part, f"{name}.attn.to_kv", padded_rows, s.hidden_dim, 2 * inner, a, t),
            # queries x the relative-position table (trained with the layer)
            _product(part, f"{name}.attn.shaw_bias", heads, ctx, s.dim_head, shaw_columns, a, t),
            _product(part, f"{name}.attn.scores", heads, ctx, s.dim_head, ctx, a, a),
            _product(part, f"{name}.attn.context", heads, ctx, ctx, s.dim_head, a, a),
            _linear(part, f"{name}.attn.to_out", rows, inner, s.hidden_dim, a, t),
            _linear(part, f"{name}.conv.up_conv", rows, s.hidden_dim, 2 * expand, a, t),
            Matmul(
                part, f"{name}.conv.depth_conv", 2.0 * rows * expand * s.conv_kernel_size, int(a) + int(t)
            ),
            _linear(part, f"{name}.conv.down_conv", rows, expand, s.hidden_dim, a, t),
        ]
        act = a
        if idx == s.num_layers // 2:  # self-conditioning: h += out_mid(softmax(out(h)))
            mid = act or head  # a trained `out` puts the mid logits, and all above, in the graph
            # out_mid trains only with the whole encoder (top-k training trains `out.` alone)
            out += [
                _linear(part, "out (mid)", rows, s.hidden_dim, s.output_dim, act, head),
                _linear(part, "out_mid", rows, s.output_dim, s.hidden_dim, mid, whole),
            ]
            act = mid
    loss = trainable.encoder_ctc and head  # the final logits feed a loss
    out.append(_linear(part, "out", rows, s.hidden_dim, s.output_dim, loss and act, loss))
    return out


def turboctc_matmuls(shape: TurboCTCShape, batch: MicroBatch, trainable: Trainable) -> list[Matmul]:
    """The 5.0 TurboCTC products for ``batch`` (transformers' ``GraniteSpeech5ForCTC``).

    A subsampling block runs its first feed-forward, attention and the convolution's first
    pointwise layer at its input rate; the strided depthwise convolution, the second pointwise
    layer and the second feed-forward at half of it. Attention pads to whole ``context_size``
    blocks for q / k / v (the output projection runs on the real frames). Self-conditioning after
    layer ``num_layers // 2`` as in 4.0; the CTC head runs at the final 12.5 Hz.
    """
    part, s = "encoder", shape
    frames = batch.frames
    first_trained = s.num_layers - trainable.encoder_layers
    whole = trainable.encoder_layers >= s.num_layers
    head = trainable.encoder_layers > 0
    inner, expand, ctx, dh = (
        s.num_heads * s.head_dim,
        s.hidden_size * s.conv_expansion_factor,
        s.context_size,
        s.head_dim,
    )
    out = [_linear(part, "input_linear", batch.utterances * frames, s.input_dim, s.hidden_size, False, whole)]
    act = whole
    for idx in range(s.num_layers):
        t = idx >= first_trained
        a = act or t
        name, rows = f"layers.{idx}", batch.utterances * frames
        half = idx in s.subsample_layers
        rows_out = batch.utterances * (frames // 2 if half else frames)
        blocks = batch.utterances * math.ceil(frames / ctx)
        padded, heads = blocks * ctx, blocks * s.num_heads
        out += [
            _linear(part, f"{name}.ff1.linear1", rows, s.hidden_size, s.intermediate_size, a, t),
            _linear(part, f"{name}.ff1.linear2", rows, s.intermediate_size, s.hidden_size, a, t),
            *(_linear(part, f"{name}.attn.{p}", padded, s.hidden_size, inner, a, t) for p in ("q", "k", "v")),
            _product(part, f"{name}.attn.shaw_bias", heads, ctx, dh, ctx, a, t),
            _product(part, f"{name}.attn.scores", heads, ctx, dh, ctx, a, a),
            _product(part, f"{name}.attn.context", heads, ctx, ctx, dh, a, a),
            _linear(part, f"{name}.attn.o_proj", rows, inner, s.hidden_size, a, t),
            _linear(part, f"{name}.conv.pointwise_lin1", rows, s.hidden_size, 2 * expand, a, t),
            Matmul(
                part, f"{name}.conv.depthwise", 2.0 * rows_out * expand * s.conv_kernel_size, int(a) + int(t)
            ),
            _linear(part, f"{name}.conv.pointwise_lin2", rows_out, expand, s.hidden_size, a, t),
            _linear(part, f"{name}.ff2.linear1", rows_out, s.hidden_size, s.intermediate_size, a, t),
            _linear(part, f"{name}.ff2.linear2", rows_out, s.intermediate_size, s.hidden_size, a, t),
        ]
        act = a
        frames = frames // 2 if half else frames
        if idx + 1 == s.num_layers // 2:
            mid = act or head
            rows = batch.utterances * frames
            out += [
                _linear(part, "out (mid)", rows, s.hidden_size, s.vocab_size, act, head),
                _linear(part, "out_mid", rows, s.vocab_size, s.hidden_size, mid, whole),
            ]
            act = mid
    out.append(_linear(part, "ctc_head", batch.utterances * frames, s.hidden_size, s.vocab_size, act, head))
    return out


def projector_matmuls(shape: ProjectorShape, batch: MicroBatch, trainable: Trainable) -> list[Matmul]:
    """The windowed Q-Former (transformers' ``GraniteSpeechEncoderProjector``) and its output linear.

    The learned queries enter as one batch row: the first layer's self-attention runs once, and
    its cross-attention broadcasts them over every window (B x ceil(T / window) rows).
    """
    part, s = "projector", shape
    windows = batch.utterances * math.ceil(batch.frames / s.window_size)
    q, dh, hidden = s.queries, s.hidden_size // s.num_heads, s.hidden_size
    trains, encoder_grad = trainable.projector, trainable.encoder_layers > 0
    rows, act = 1, trains  # batch rows of the running hidden state; does it need a gradient
    out: list[Matmul] = []
    for layer in range(s.num_layers):
        name, tokens = f"qformer.layer.{layer}", rows * q
        out += [
            _linear(part, f"{name}.attention.{p}", tokens, hidden, hidden, act, trains)
            for p in ("query", "key", "value", "output")
        ]
        out += [
            _product(part, f"{name}.attention.scores", rows * s.num_heads, q, dh, q, act, act),
            _product(part, f"{name}.attention.context", rows * s.num_heads, q, q, dh, act, act),
        ]
        if layer % s.cross_attention_frequency == 0:
            cross, frames, wheads = f"{name}.crossattention", windows * s.window_size, windows * s.num_heads
            keys = trains or encoder_grad  # keys / values come from the encoder's frames
            out += [
                _linear(part, f"{cross}.query", tokens, hidden, hidden, act, trains),
                _linear(part, f"{cross}.key", frames, s.encoder_hidden_size, hidden, encoder_grad, trains),
                _linear(part, f"{cross}.value", frames, s.encoder_hidden_size, hidden, encoder_grad, trains),
                _product(part, f"{cross}.scores", wheads, q, dh, s.window_size, act, keys),
                _product(part, f"{cross}.context", wheads, q, s.window_size, dh, act or keys, keys),
            ]
            rows, act = windows, act or keys  # from here on, one row per window
            out.append(_linear(part, f"{cross}.output", rows * q, hidden, hidden, act, trains))
        out += [
            _linear(part, f"{name}.intermediate_query", rows * q, hidden, s.intermediate_size, act, trains),
            _linear(part, f"{name}.output_query", rows * q, s.intermediate_size, hidden, act, trains),
        ]
    out.append(_linear(part, "linear", windows * q, hidden, s.llm_hidden_size, act, trains))
    return out


def sequence_length(shape: ModelShape, batch: MicroBatch) -> int:
    """LLM tokens per utterance: prompt + audio tokens + labelled target tokens."""
    assert shape.projector is not None
    audio = projector_tokens(batch.frames, shape.projector.window_size, shape.projector.downsample_rate)
    return batch.prompt_tokens + int(audio) + batch.target_tokens


def llm_matmuls(shape: LLMShape, seq_len: int, batch: MicroBatch, trainable: Trainable) -> list[Matmul]:
    """The decoder over ``batch.utterances`` sequences of ``seq_len`` tokens, LM head at the targets.

    Gradient flow decides the backward: a frozen linear layer still computes its input's gradient
    whenever that input depends on something that trains (the audio embeddings from a training
    projector, an earlier LoRA), but never its weight's; LoRA's factors compute both.
    """
    part, s = "llm", shape
    rows = batch.utterances * seq_len
    full, lora = trainable.llm, trainable.lora_rank
    lora_grad = trainable.lora_trains
    upstream = trainable.projector or trainable.encoder_layers > 0  # the audio embeddings need a gradient
    act = upstream or full
    out: list[Matmul] = []

    def linear(name: str, d_in: int, d_out: int, input_grad: bool) -> bool:
        """Append the layer (+ its LoRA); returns whether its output needs a gradient."""
        out.append(_linear(part, name, rows, d_in, d_out, input_grad, full))
        adapted = bool(lora) and name.rsplit(".", 1)[-1] in trainable.lora_targets
        if adapted:
            out.append(_linear(part, f"{name}.lora_A", rows, d_in, lora, input_grad, lora_grad))
            out.append(_linear(part, f"{name}.lora_B", rows, lora, d_out, input_grad or lora_grad, lora_grad))
        return input_grad or full or (adapted and lora_grad)

    q_width, kv_width = s.num_heads * s.head_dim, s.num_kv_heads * s.head_dim
    heads = batch.utterances * s.num_heads  # GQA: every query head meets its (shared) key head
    for layer in range(s.num_layers):
        name = f"layers.{layer}"
        normed = act or full  # RMSNorm weights train with the LLM
        q_grad = linear(f"{name}.self_attn.q_proj", s.hidden_size, q_width, normed)
        k_grad = linear(f"{name}.self_attn.k_proj", s.hidden_size, kv_width, normed)
        v_grad = linear(f"{name}.self_attn.v_proj", s.hidden_size, kv_width, normed)
        probs = q_grad or k_grad
        out += [
            _product(part, f"{name}.self_attn.scores", heads, seq_len, s.head_dim, seq_len, q_grad, k_grad),
            _product(part, f"{name}.self_attn.context", heads, seq_len, seq_len, s.head_dim, probs, v_grad),
        ]
        o_grad = linear(f"{name}.self_attn.o_proj", q_width, s.hidden_size, probs or v_grad)
        act = act or o_grad
        normed = act or full
        gate = linear(f"{name}.mlp.gate_proj", s.hidden_size, s.intermediate_size, normed)
        up = linear(f"{name}.mlp.up_proj", s.hidden_size, s.intermediate_size, normed)
        act = linear(f"{name}.mlp.down_proj", s.intermediate_size, s.hidden_size, gate or up) or act
    labelled = batch.utterances * batch.target_tokens
    out.append(_linear(part, "lm_head", labelled, s.hidden_size, s.vocab_size, act or full, full))
    return out


def step_matmuls(shape: ModelShape, batch: MicroBatch) -> list[Matmul]:
    """Every product of one training micro-batch of ``shape`` (forward and what backward needs)."""
    if isinstance(shape.encoder, TurboCTCShape):
        return turboctc_matmuls(shape.encoder, batch, shape.trainable)
    out = encoder_matmuls(shape.encoder, batch, shape.trainable, shape.half_precision)
    if shape.projector is not None:
        out += projector_matmuls(shape.projector, batch, shape.trainable)
    if shape.llm is not None:
        out += llm_matmuls(shape.llm, sequence_length(shape, batch), batch, shape.trainable)
    return out


@dataclass
class FlopCount:
    """Forward and backward FLOPs per part (``encoder``, ``projector``, ``llm``)."""

    forward: dict[str, float]
    backward: dict[str, float]

    @classmethod
    def of(cls, matmuls: list[Matmul]) -> FlopCount:
        forward: dict[str, float] = {}
        backward: dict[str, float] = {}
        for m in matmuls:
            forward[m.part] = forward.get(m.part, 0.0) + m.flops
            backward[m.part] = backward.get(m.part, 0.0) + m.backward
        return cls(forward, backward)

    @property
    def total_forward(self) -> float:
        return sum(self.forward.values())

    @property
    def total_backward(self) -> float:
        return sum(self.backward.values())

    @property
    def total(self) -> float:
        return self.total_forward + self.total_backward


def count_flops(shape: ModelShape, batch: MicroBatch) -> FlopCount:
    """Analytic forward / backward FLOPs of one training micro-batch."""
    return FlopCount.of(step_matmuls(shape, batch))


# --------------------------------------------------------------------------------------------------
# shapes from a recipe
# --------------------------------------------------------------------------------------------------
Stage1Lookup = Callable[[str], Mapping[str, Any]]


def _half_precision(precision: str, accelerator: str) -> bool:
    """Whether the encoder computes in bf16 / fp16 (autocast or true half weights)."""
    precision = str(precision)
    if precision == "auto":  # as resolve_precision decides: bf16 on CUDA, on a CPU only when native
        import torch

        from granite_train.training.precision import cpu_has_native_bf16

        on_gpu = accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())
        return on_gpu or cpu_has_native_bf16()
    return precision.startswith(("bf16", "16"))


def _encoder_config(preset: str, overrides: Mapping[str, Any]):
    from granite_train.models.encoder import encoder_config

    return encoder_config(preset, **dict(overrides or {}))


def _encoder_config_at(path: Path):
    """The encoder config of an exported folder (encoder or whole speech model) or a stage-1 .ckpt."""
    from transformers import GraniteSpeechConfig, GraniteSpeechEncoderConfig

    if path.is_dir():
        values = json.loads((path / "config.json").read_text())
        if values.get("model_type") == GraniteSpeechConfig.model_type:
            return GraniteSpeechConfig.from_dict(values).encoder_config
        return GraniteSpeechEncoderConfig.from_dict(values)
    import torch

    from granite_train.models.checkpoints import ENCODER_CONFIG_KEY

    ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    return GraniteSpeechEncoderConfig(**ckpt[ENCODER_CONFIG_KEY])


def _stage1_config(model):
    """A stage-1 recipe's encoder config: ``model.init``'s (head grown by the new symbols) or the preset's."""
    if not model.init:
        return _encoder_config(model.preset, model.encoder)
    if not Path(model.init).exists():
        raise ValueError(f"plan: model.init {model.init} does not exist (an encoder folder or stage-1 .ckpt)")
    config = _encoder_config_at(Path(model.init))
    # at most: extra symbols already in init's table are not added again (a head row is negligible)
    grown = config.output_dim + len(model.extra_symbols)
    config.output_dim = int((model.encoder or {}).get("output_dim", grown))
    return config


def _stage1_encoder(path: Path, stage1: Stage1Lookup | None, notes: list[str]):
    """A stage-2 encoder's config: read from ``path``, or, before stage 1 has run, the shape of the
    stage-1 recipe whose run writes it (``.../experiments/<recipe name>/encoder_hf``)."""
    if path.exists():
        return _encoder_config_at(path)
    name = path.parent.parent.name if path.parent.name == "checkpoints" else path.parent.name
    recipe = None
    if stage1 is not None:
        try:
            recipe = stage1(name)
        except (ValueError, OSError):  # not a recipe name
            recipe = None
    if recipe is None or recipe.get("stage") != "ctc":
        raise ValueError(
            f"plan: the stage-2 encoder {path} does not exist and no stage-1 recipe named {name!r} "
            "writes it: point model.encoder at an exported encoder folder or stage-1 checkpoint"
        )
    model = recipe.get("model") or {}
    notes.append(f"encoder {path} not there yet: the shape of stage-1 recipe {name!r}, which writes it")
    return _encoder_config(model.get("preset", "granite_4_0_1b"), model.get("encoder") or {})


def _llm_config(name: str, notes: list[str]):
    """An LLM's config without downloading: a local folder, the hub cache, or :data:`KNOWN_LLMS`."""
    from transformers import AutoConfig, GraniteConfig

    try:
        return AutoConfig.from_pretrained(name, local_files_only=True)
    except (OSError, ValueError):
        pass
    if name in KNOWN_LLMS:
        notes.append(f"LLM {name}: not cached here; its published shape (plan.KNOWN_LLMS)")
        return GraniteConfig(**KNOWN_LLMS[name])
    raise ValueError(
        f"plan: LLM {name!r} is neither a local folder nor in the hub cache (nothing is downloaded): "
        f"point model.llm at a folder (a tiny one: python -m data_prep.base_llm); known without one: "
        f"{sorted(KNOWN_LLMS)}"
    )


def _projector_shape(projector: Mapping[str, Any], encoder, llm, window: int, downsample: int):
    from granite_train.models.config import PROJECTOR_PRESETS

    values = dict(projector or {})
    fields = {**PROJECTOR_PRESETS[values.pop("preset", "granite_4_0_1b")], **values}
    return ProjectorShape(
        hidden_size=int(fields["hidden_size"]),
        num_layers=int(fields["num_hidden_layers"]),
        num_heads=int(fields["num_attention_heads"]),
        intermediate_size=int(fields["intermediate_size"]),
        cross_attention_frequency=int(fields.get("cross_attention_frequency", 1)),
        encoder_hidden_size=int(encoder.hidden_dim),
        window_size=int(window),
        downsample_rate=int(downsample),
        llm_hidden_size=int(llm.hidden_size),
    )


def _turboctc_config(init: str, notes: list[str]):
    """A 5.0 TurboCTC config: ``init``'s ``config.json`` when it is a local folder; the release's
    (transformers' class defaults, which are its values) for its hub id when not cached here."""
    from transformers import GraniteSpeech5CTCConfig

    from granite_train.models.turboctc import RELEASED_CHECKPOINT

    if Path(init).is_dir():
        return GraniteSpeech5CTCConfig.from_pretrained(init)
    try:
        return GraniteSpeech5CTCConfig.from_pretrained(init, local_files_only=True)
    except OSError:
        if init != RELEASED_CHECKPOINT:
            raise ValueError(f"plan: model.init {init!r} is not a local folder nor cached") from None
    notes.append(f"{init} not cached: transformers' GraniteSpeech5CTCConfig defaults (the released values)")
    return GraniteSpeech5CTCConfig()


def _speech_llm_shape(cfg: RecipeConfig, stage1: Stage1Lookup | None, notes: list[str]):
    """(encoder config, projector shape, LLM shape, LoRA (rank, targets)) of a stage-2 model config."""
    model = cfg.model
    lora = (model.lora.rank, tuple(model.lora.target_modules)) if model.lora else (0, ())
    if model.init:  # an existing GraniteSpeech checkpoint: its own config says it all
        from transformers import GraniteSpeechConfig

        try:
            config = GraniteSpeechConfig.from_pretrained(model.init, local_files_only=True)
        except OSError as err:
            raise ValueError(f"plan: model.init {model.init!r} is not available locally ({err})") from None
        qformer = config.projector_config
        projector = ProjectorShape(
            hidden_size=qformer.hidden_size,
            num_layers=qformer.num_hidden_layers,
            num_heads=qformer.num_attention_heads,
            intermediate_size=qformer.intermediate_size,
            cross_attention_frequency=qformer.cross_attention_frequency,
            encoder_hidden_size=config.encoder_config.hidden_dim,
            window_size=config.window_size,
            downsample_rate=config.downsample_rate,
            llm_hidden_size=config.text_config.hidden_size,
        )
        adapter = Path(model.adapter or model.init) / "adapter_config.json"
        if not model.lora and adapter.is_file():
            values = json.loads(adapter.read_text())
            lora = (int(values["r"]), tuple(values.get("target_modules") or ()))
        return config.encoder_config, projector, LLMShape.of(config.text_config), lora
    if not model.encoder or not model.llm:
        raise ValueError("plan: model needs `init` or both `encoder` and `llm`")
    encoder = _stage1_encoder(Path(model.encoder), stage1, notes)
    llm = LLMShape.of(_llm_config(model.llm, notes))
    projector = _projector_shape(model.projector, encoder, llm, model.window_size, model.downsample_rate)
    return encoder, projector, llm, lora


def model_shape(cfg: RecipeConfig, stage1: Stage1Lookup | None = None, notes: list[str] | None = None):
    """The :class:`ModelShape` of a recipe's model, from configs only (nothing is built).

    ``stage1`` composes a recipe by name (``granite_train.recipes.load_recipe``): a stage-2 recipe
    whose encoder does not exist yet takes the shape of the stage-1 recipe that writes it.
    """
    notes = notes if notes is not None else []
    half = _half_precision(cfg.trainer.precision, cfg.trainer.accelerator)
    if cfg.stage == "ctc":
        encoder = EncoderShape.of(_stage1_config(cfg.model))
        return ModelShape(encoder, Trainable(encoder_layers=encoder.num_layers), half_precision=half)
    if cfg.stage == "turboctc":
        shape = TurboCTCShape.of(_turboctc_config(cfg.model.init, notes))
        top = cfg.model.train_top_layers
        layers = shape.num_layers if top is None else int(top)
        return ModelShape(shape, Trainable(encoder_layers=layers), half_precision=half)
    encoder_cfg, projector, llm, (rank, targets) = _speech_llm_shape(cfg, stage1, notes)
    encoder = EncoderShape.of(encoder_cfg)
    train = cfg.model.train
    trainable = Trainable(
        encoder_layers=encoder.num_layers if train.encoder else int(train.encoder_layers),
        encoder_ctc=cfg.model.loss.encoder_ctc_weight > 0,
        projector=bool(train.projector),
        llm=bool(train.llm),
        lora_rank=int(rank),
        lora_trains=bool(rank) and train.lora is not False,
        lora_targets=targets,
    )
    return ModelShape(encoder, trainable, projector, llm, half_precision=half)


def micro_batch(cfg: RecipeConfig, options: PlanOptions) -> MicroBatch:
    """The modelled micro-batch of one GPU: whole utterances of ``utterance_seconds`` under the
    frame budget (at least one; ``max_batch_size`` caps them), and their prompt / target tokens."""
    frames = encoder_frames(round(options.utterance_seconds * SAMPLE_RATE))
    budget = int(cfg.data.train.get("max_frames", 20_000))
    utterances = max(1, budget // frames)
    if cfg.data.train.get("max_batch_size"):
        utterances = min(utterances, int(cfg.data.train["max_batch_size"]))
    if cfg.stage in ("ctc", "turboctc"):
        return MicroBatch(utterances, frames)
    transcript = math.ceil(options.target_tokens_per_second * options.utterance_seconds)
    targets = min(transcript, int(cfg.prompts.max_target_tokens)) + 1  # + EOS, labelled too
    return MicroBatch(utterances, frames, int(options.prompt_tokens), targets)


def _num_gpus(cfg: RecipeConfig, options: PlanOptions) -> tuple[int, str]:
    """(GPUs, where the number came from)."""
    if options.num_gpus:
        return int(options.num_gpus), "num_gpus"
    devices, nodes = cfg.trainer.devices, int(cfg.trainer.num_nodes)
    if isinstance(devices, int) or str(devices).isdigit():
        return int(devices) * nodes, f"trainer.devices x num_nodes = {devices} x {nodes}"
    if cfg.trainer.accelerator == "cpu":
        return nodes, "trainer.devices=auto on CPU: one process per node"
    return (
        8 * nodes,
        f"trainer.devices={devices}: assumed 8 per node (one node of the published runs) x {nodes}",
    )


# --------------------------------------------------------------------------------------------------
# measurement
# --------------------------------------------------------------------------------------------------
@dataclass
class Measurement:
    """Seconds per optimizer step of the recipe on this machine (one device)."""

    seconds_per_step: float
    mean_seconds_per_step: float
    steps: int
    warmup: int
    audio_seconds_per_step: float  # real audio per step (the run's own counter)
    device: str


def _step_timer():
    import lightning as L

    class StepTimer(L.Callback):
        """When each optimizer step ends (micro-batches inside accumulation do not count)."""

        def __init__(self) -> None:
            self.ends: list[float] = []
            self.audio: list[float] = []
            self.step = 0
            self.device = "cpu"

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            if trainer.global_step == self.step:
                return
            self.step = trainer.global_step
            self.device = str(pl_module.device)
            if pl_module.device.type == "cuda":
                import torch

                torch.cuda.synchronize(pl_module.device)
            self.ends.append(time.perf_counter())
            self.audio.append(float(pl_module.counters["audio_seconds"]))

    return StepTimer()


def measure_step_time(values: Mapping[str, Any], steps: int = 5, warmup: int = 2) -> Measurement:
    """Run ``warmup + steps`` optimizer steps of a composed recipe (the real training code path:
    :func:`granite_train.training.run.train`) on one device, nothing kept, and time the last ``steps``.

    The run writes to a temporary folder; validation, checkpoints, the export and wandb are off.
    """
    from granite_train.training.run import train

    values = copy.deepcopy(dict(values))
    timer = _step_timer()
    with tempfile.TemporaryDirectory(prefix="granite-plan-") as tmp:
        values.update(output_dir=tmp, resume=None)
        values["trainer"] = {
            **values.get("trainer", {}),
            "max_steps": warmup + steps,
            "devices": 1,
            "num_nodes": 1,
            "strategy": "auto",
            "val_every_n_steps": None,
            "checkpoint_every_n_steps": 10**9,
            "export_hf": False,
            "enable_progress_bar": False,
        }
        values["logger"] = {**values.get("logger", {}), "wandb": {"enabled": False}}
        train(values, extra_callbacks=[timer])
    if len(timer.ends) < warmup + steps:
        raise RuntimeError(f"measure: only {len(timer.ends)} of {warmup + steps} steps ran")
    ends = timer.ends[warmup - 1 : warmup + steps]
    gaps = [b - a for a, b in zip(ends, ends[1:])]
    audio = (timer.audio[warmup + steps - 1] - timer.audio[warmup - 1]) / steps
    return Measurement(
        seconds_per_step=statistics.median(gaps),
        mean_seconds_per_step=statistics.fmean(gaps),
        steps=steps,
        warmup=warmup,
        audio_seconds_per_step=audio,
        device=timer.device,
    )


# --------------------------------------------------------------------------------------------------
# the plan
# --------------------------------------------------------------------------------------------------
@dataclass
class Plan:
    """A recipe's cost: what it trains on, what it computes, how long it takes."""

    recipe: str
    stage: str
    steps: int
    num_gpus: int
    num_gpus_from: str
    accumulate: int
    max_frames: int
    batch: MicroBatch
    sequence_tokens: int | None  # stage 2: LLM tokens per utterance
    padding: float
    flops: FlopCount  # per GPU micro-batch
    gpu: str
    peak_flops: float
    mfu: float
    published: Published | None = None
    measured: Measurement | None = None
    notes: list[str] = field(default_factory=list)
    loader_x_real_time: float = LOADER_X_REAL_TIME

    # the batch ------------------------------------------------------------------------------------
    @property
    def micro_batches_per_step(self) -> int:
        return self.accumulate * self.num_gpus

    @property
    def global_utterances(self) -> int:
        return self.batch.utterances * self.micro_batches_per_step

    @property
    def global_frames(self) -> int:
        """Padded 50 Hz frames per optimizer step, all GPUs."""
        return self.batch.utterances * self.batch.frames * self.micro_batches_per_step

    @property
    def audio_seconds_per_step(self) -> float:
        return self.global_frames * (1.0 - self.padding) / FRAME_RATE

    @property
    def audio_hours(self) -> float:
        return self.steps * self.audio_seconds_per_step / 3600.0

    # compute ------------------------------------------------------------------------------------
    @property
    def flops_per_step(self) -> float:
        return self.flops.total * self.micro_batches_per_step

    @property
    def total_flops(self) -> float:
        return self.flops_per_step * self.steps

    def days_at(self, mfu: float, gpus: int | None = None, peak: float | None = None) -> float:
        gpus, peak = gpus or self.num_gpus, peak or self.peak_flops
        return self.total_flops / (gpus * peak * mfu) / SECONDS_PER_DAY

    @property
    def days(self) -> float:
        return self.days_at(self.mfu)

    @property
    def gpu_hours(self) -> float:
        return self.days * 24.0 * self.num_gpus

    @property
    def implied_mfu(self) -> float | None:
        """The MFU at which this count takes IBM's published time on IBM's GPUs."""
        if self.published is None:
            return None
        p = self.published
        return self.total_flops / (p.gpus * GPU_PEAK_FLOPS[p.gpu] * p.days * SECONDS_PER_DAY)

    @property
    def measured_days(self) -> float | None:
        if self.measured is None:
            return None
        return self.steps * self.measured.seconds_per_step / SECONDS_PER_DAY

    # the data loader ------------------------------------------------------------------------------
    @property
    def step_seconds(self) -> float:
        """Seconds per optimizer step: measured when measured, else the analytic time at the MFU."""
        days = self.measured_days if self.measured is not None else self.days
        return days * SECONDS_PER_DAY / self.steps

    @property
    def loader_demand_per_gpu(self) -> float:
        """Audio seconds per second each GPU consumes at the planned step time."""
        return self.audio_seconds_per_step / self.num_gpus / self.step_seconds

    @property
    def loader_cores_per_gpu(self) -> float:
        """Loader cores each GPU needs at ``loader_x_real_time`` per core."""
        return self.loader_demand_per_gpu / self.loader_x_real_time

    # output -------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Everything, inputs and results, as plain JSON data."""
        return {
            "recipe": self.recipe,
            "stage": self.stage,
            "steps": self.steps,
            "num_gpus": self.num_gpus,
            "num_gpus_from": self.num_gpus_from,
            "accumulate_grad_batches": self.accumulate,
            "max_frames": self.max_frames,
            "micro_batch": asdict(self.batch),
            "sequence_tokens": self.sequence_tokens,
            "padding": self.padding,
            "global_batch": {
                "utterances": self.global_utterances,
                "padded_frames": self.global_frames,
                "audio_seconds": self.audio_seconds_per_step,
            },
            "audio_hours": self.audio_hours,
            "flops_per_micro_batch": {
                "forward": self.flops.forward,
                "backward": self.flops.backward,
                "total": self.flops.total,
            },
            "flops_per_step": self.flops_per_step,
            "total_flops": self.total_flops,
            "gpu": self.gpu,
            "peak_flops": self.peak_flops,
            "mfu": self.mfu,
            "days": self.days,
            "gpu_hours": self.gpu_hours,
            "published": asdict(self.published) if self.published else None,
            "implied_mfu": self.implied_mfu,
            "measured": asdict(self.measured) if self.measured else None,
            "measured_days": self.measured_days,
            "loader": {
                "step_seconds": self.step_seconds,
                "demand_audio_seconds_per_second_per_gpu": self.loader_demand_per_gpu,
                "x_real_time_per_core": self.loader_x_real_time,
                "cores_per_gpu": self.loader_cores_per_gpu,
            },
            "measured_gpu_hours": self.measured_days * 24.0 * self.num_gpus if self.measured else None,
            "notes": self.notes,
        }

    def format(self) -> str:
        """A readable table."""
        b, gpu = self.batch, GPU_NAMES.get(self.gpu, self.gpu)
        scale, unit = (1e12, "TFLOP") if self.flops.total >= 1e12 else (1e9, "GFLOP")
        num = lambda x: f"{x / scale:,.2f}"  # noqa: E731
        lines = [
            f"plan: {self.recipe} ({ {'ctc': 'stage 1', 'speech_llm': 'stage 2'}.get(self.stage, 'a 5.0 TurboCTC model') }: {self.stage})",
            "",
            f"  optimizer steps       {self.steps:,} (trainer.max_steps)",
            f"  devices               {self.num_gpus} ({self.num_gpus_from})",
            f"  micro-batch / device  {b.utterances} utterances x {b.frames} frames = "
            f"{b.utterances * b.frames:,} padded frames (max_frames {self.max_frames:,})",
        ]
        if self.sequence_tokens is not None:
            audio = self.sequence_tokens - b.prompt_tokens - b.target_tokens
            lines.append(
                f"  LLM tokens / utt.     {self.sequence_tokens} ({b.prompt_tokens} prompt + {audio} audio + "
                f"{b.target_tokens} labelled)"
            )
        lines += [
            f"  global batch          {self.global_utterances:,} utterances, {self.global_frames:,} frames "
            f"(x {self.accumulate} accumulation x {self.num_gpus} devices), "
            f"{self.audio_seconds_per_step / 60:,.1f} min of audio",
            f"  audio seen            {self.audio_hours:,.0f} hours ({100 * self.padding:g}% of frames padding)",
            "",
            f"  {unit + ' per micro-batch':<26}{'forward':>11}{'backward':>11}{'total':>11}",
        ]
        for part in self.flops.forward:
            fwd, bwd = self.flops.forward[part], self.flops.backward[part]
            lines.append(f"    {part:<24}{num(fwd):>11}{num(bwd):>11}{num(fwd + bwd):>11}")
        lines += [
            f"    {'total':<24}{num(self.flops.total_forward):>11}{num(self.flops.total_backward):>11}"
            f"{num(self.flops.total):>11}",
            f"  per optimizer step          {self.flops_per_step:.3e} FLOP (all devices)",
            f"  whole run                   {self.total_flops:.3e} FLOP",
            "",
            f"  at MFU {self.mfu:.2f} on {self.num_gpus} x {gpu} ({self.peak_flops / 1e12:,.0f} TFLOP/s each): "
            f"{_duration(self.days)}, {self.gpu_hours:,.1f} GPU-hours",
        ]
        if self.published is not None:
            p = self.published
            same = self.days_at(self.mfu, p.gpus, GPU_PEAK_FLOPS[p.gpu])
            lines.append(
                f"  published ({p.source}): {p.gpus} x {GPU_NAMES[p.gpu]}, {p.days:g} days; this count takes "
                f"{_duration(same)} there at MFU {self.mfu:.2f}: implied MFU {100 * self.implied_mfu:.1f}%"
            )
        if self.measured is not None:
            m = self.measured
            lines.append(
                f"  measured on {m.device}: {m.seconds_per_step:.3f} s/step (median of {m.steps}; mean "
                f"{m.mean_seconds_per_step:.3f}; {m.audio_seconds_per_step:.1f} s of audio/step) -> "
                f"{_duration(self.measured_days)}, {self.measured_days * 24 * self.num_gpus:,.1f} "
                f"device-hours ({self.num_gpus} devices)"
            )
        timing = "measured" if self.measured is not None else f"at MFU {self.mfu:.2f}"
        lines += [
            "",
            f"  data loader           {self.step_seconds:.3f} s/step ({timing}): each device consumes "
            f"{self.loader_demand_per_gpu:,.0f} s of audio per second; at {self.loader_x_real_time:,.0f}x real "
            f"time per loader core (staged FLAC, benchmarks/loader_throughput.py) that is "
            f"{self.loader_cores_per_gpu:.2f} cores per device",
        ]
        if self.notes:
            lines += ["", "  notes:"] + [f"    - {n}" for n in self.notes]
        return "\n".join(lines)


def _duration(days: float) -> str:
    """Days, or hours / minutes when shorter."""
    if days >= 1.0:
        return f"{days:,.2f} days"
    hours = days * 24.0
    if hours >= 1.0:
        return f"{hours:.2f} hours"
    return f"{hours * 60.0:.1f} minutes" if hours * 60.0 >= 1.0 else f"{hours * 3600.0:.1f} seconds"


def plan_recipe(
    values: Mapping[str, Any] | RecipeConfig,
    options: PlanOptions | None = None,
    stage1: Stage1Lookup | None = None,
) -> Plan:
    """The :class:`Plan` of a composed recipe (what ``granite-train train`` would run).

    ``values``: the resolved recipe mapping (``granite_train.recipes.load_recipe``); ``stage1``: how
    to compose a stage-1 recipe by name (see :func:`model_shape`).
    """
    options = options or PlanOptions()
    cfg = load_recipe_config(values)
    notes: list[str] = []
    shape = model_shape(cfg, stage1, notes)
    batch = micro_batch(cfg, options)
    gpus, gpus_from = _num_gpus(cfg, options)
    measured = None
    if options.measure:
        plain = values if isinstance(values, Mapping) else to_plain(values)
        measured = measure_step_time(plain, options.measure_steps, options.measure_warmup)
    if cfg.stage == "speech_llm" and cfg.model.encoder_cache_gb:
        notes.append("encoder_cache_gb: the frozen encoder's forward is counted every step (an upper bound)")
    notes.append(
        f"utterances of {options.utterance_seconds:g} s; the encoder runs in "
        f"{'bf16/fp16' if shape.half_precision else 'fp32'} (Shaw-bias GEMM width follows it)"
    )
    return Plan(
        recipe=str(cfg.name),
        stage=cfg.stage,
        steps=int(cfg.trainer.max_steps),
        num_gpus=gpus,
        num_gpus_from=gpus_from,
        accumulate=int(cfg.optim.accumulate_grad_batches),
        max_frames=int(cfg.data.train.get("max_frames", 20_000)),
        batch=batch,
        sequence_tokens=sequence_length(shape, batch) if shape.projector else None,
        padding=options.padding,
        flops=count_flops(shape, batch),
        gpu=options.gpu if options.peak_flops is None else "custom",
        peak_flops=options.peak,
        mfu=options.mfu,
        published=PUBLISHED.get(str(cfg.name)),
        measured=measured,
        notes=notes,
        loader_x_real_time=options.loader_x_real_time,
    )


def write_plan(plan: Plan, path: str | Path) -> Path:
    """``plan`` as JSON at ``path`` (parents created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(plan.to_dict(), indent=2) + "\n")
    return path


__all__ = [
    "GPU_PEAK_FLOPS",
    "KNOWN_LLMS",
    "PUBLISHED",
    "EncoderShape",
    "FlopCount",
    "LLMShape",
    "Matmul",
    "Measurement",
    "MicroBatch",
    "ModelShape",
    "Plan",
    "PlanOptions",
    "ProjectorShape",
    "Published",
    "Trainable",
    "TurboCTCShape",
    "count_flops",
    "encoder_matmuls",
    "llm_matmuls",
    "measure_step_time",
    "micro_batch",
    "model_shape",
    "plan_recipe",
    "projector_matmuls",
    "sequence_length",
    "step_matmuls",
    "turboctc_matmuls",
    "write_plan",
]
