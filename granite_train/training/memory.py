"""How much memory a stage-2 training step needs, told before the first step.

Weights, gradients and optimizer state follow from the parameters (what trains, in which dtype).
Activations are not guessed from a formula: the step's forward runs once on the ``meta`` device
(shapes only, no memory, no compute) at the chosen batch, with the same trainable set and
activation checkpointing, and every tensor autograd saves for backward is counted
(:func:`saved_activation_bytes`). The loss's transient (the LM-head logits of the target positions,
in fp32, and their gradient) is added. Activations grow with the batch's frames, so the estimate
also says which batch would fit the device.
"""

from __future__ import annotations

import copy
import math
import os
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from granite_train.speech_format import projector_tokens

GIB = 1024**3
# Adam keeps two moments per trained parameter, in the parameter's dtype
ADAM_STATES = 2
# the batch the estimate assumes (the data's real mix differs; these are typical of read speech)
PROMPT_TOKENS = 24  # chat template + instruction, per utterance
TARGET_TOKENS_PER_SECOND = 4.0  # transcript tokens per second of speech (English, BPE)


@dataclass
class MemoryEstimate:
    """Bytes a training step needs on one device; ``capacity`` is what the device has."""

    weights: int
    gradients: int
    optimizer: int
    activations: int
    batch_frames: int
    device: str
    capacity: int | None
    activation_dtype: str
    activation_bytes_per_frame: float  # the growth with the batch (a part does not grow: position tables)

    @property
    def total(self) -> int:
        return self.weights + self.gradients + self.optimizer + self.activations

    def fits(self, headroom: float = 0.9) -> bool | None:
        """Whether the step fits in ``headroom`` of the device (None: capacity unknown)."""
        return None if self.capacity is None else self.total <= headroom * self.capacity

    def frames_that_fit(self, headroom: float = 0.9) -> int | None:
        """The largest batch (padded 50 Hz frames, a multiple of 100) that fits; 0 when not even the
        weights do; None when the capacity is unknown."""
        if self.capacity is None:
            return None
        fixed = self.activations - self.activation_bytes_per_frame * self.batch_frames
        room = headroom * self.capacity - (self.weights + self.gradients + self.optimizer + fixed)
        if room <= 0:
            return 0
        return int(room / max(self.activation_bytes_per_frame, 1.0)) // 100 * 100

    def report(self) -> str:
        gib = lambda n: f"{n / GIB:.2f} GiB"  # noqa: E731
        lines = [
            f"memory estimate for a batch of {self.batch_frames} frames ({self.batch_frames / 50:.0f} s of audio) "
            f"on {self.device}:",
            f"  weights {gib(self.weights)} + gradients {gib(self.gradients)} + optimizer {gib(self.optimizer)} "
            f"+ activations {gib(self.activations)} ({self.activation_dtype}) = {gib(self.total)}",
        ]
        if self.capacity is None:
            lines.append("  device capacity unknown")
        elif self.fits():
            lines.append(f"  fits: {gib(self.capacity)} on the device (90% used at most)")
        else:
            frames = self.frames_that_fit()
            advice = (
                f"data.train.max_frames={frames} would fit ({frames / 50:.0f} s per batch)"
                if frames
                else "not even the weights and optimizer fit: train fewer parts or use a larger device"
            )
            lines.append(f"  does NOT fit {gib(self.capacity)}: {advice}; activation checkpointing "
                         "(model.gradient_checkpointing.llm=true) also cuts the activations")  # fmt: skip
        return "\n".join(lines)


def device_capacity(device: str | torch.device) -> int | None:
    """Total memory of a CUDA device, or the machine's RAM for the CPU."""
    device = torch.device(device)
    if device.type == "cuda":
        return int(torch.cuda.get_device_properties(device.index or 0).total_memory)
    if device.type == "cpu":
        try:
            return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
        except (ValueError, OSError, AttributeError):
            return None
    return None


def saved_activation_bytes(step: Callable[[], torch.Tensor]) -> int:
    """Bytes of the distinct tensors autograd saves for backward while ``step`` runs its forward.

    A tensor and its views count once (a tensor saved by two ops, too); inside activation
    checkpointing only the checkpoint's own inputs are saved, so that is what is counted.
    """
    seen: dict[int, int] = {}
    keep: list[torch.Tensor] = []  # holds each base alive, so that its id is not reused

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        if tensor.requires_grad and tensor.is_leaf:
            return tensor  # a parameter: counted as a weight, not an activation
        base = tensor._base if tensor._base is not None else tensor
        if id(base) not in seen:
            keep.append(base)
            seen[id(base)] = base.untyped_storage().nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        step()
    return sum(seen.values())


@contextmanager
def default_dtype(dtype: torch.dtype):
    """Tensors created inside are ``dtype`` by default (a model built straight in its dtype)."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


_SDPA = torch.nn.functional.scaled_dot_product_attention


def _flash_shaped_sdpa(
    query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False
):
    """``scaled_dot_product_attention`` on ``meta`` with what a fused kernel saves for backward.

    On ``meta`` the op decomposes into the math path, which keeps the (T x T) probabilities of every
    head; the fused kernels used for real (flash / memory-efficient, CPU and CUDA) keep the output
    and a log-sum-exp instead.
    """
    if attn_mask is not None and attn_mask.requires_grad:  # a trained bias: the math path, as for real
        return _SDPA(query, key, value, attn_mask, dropout_p, is_causal, scale=scale, enable_gqa=enable_gqa)
    if enable_gqa and key.shape[-3] != query.shape[-3]:
        repeat = query.shape[-3] // key.shape[-3]
        key, value = key.repeat_interleave(repeat, -3), value.repeat_interleave(repeat, -3)
    batch = max(query.shape[0], key.shape[0])  # sdpa broadcasts (learned queries: batch 1)
    query, key, value = (t.expand(batch, *t.shape[1:]) for t in (query, key, value))
    if attn_mask is not None and attn_mask.dtype == torch.bool:
        attn_mask = torch.zeros(attn_mask.shape, dtype=query.dtype, device=query.device)
    return torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
        query, key, value, dropout_p, is_causal, attn_mask=attn_mask, scale=scale
    )[0]


@contextmanager
def _fused_attention_on_meta(device: torch.device):
    if device.type != "meta":
        yield
        return
    torch.nn.functional.scaled_dot_product_attention = _flash_shaped_sdpa
    try:
        yield
    finally:
        torch.nn.functional.scaled_dot_product_attention = _SDPA


class _AudioTokenOnly:
    """The one tokenizer call :class:`SpeechLLM` makes when it is built."""

    def __init__(self, audio_id: int):
        self.audio_id = audio_id

    def convert_tokens_to_ids(self, _token: str) -> int:
        return self.audio_id


def meta_twin(speech, dtype: torch.dtype):
    """``speech``'s architecture on ``meta`` in ``dtype``: same LoRA, trainable set, checkpointing."""
    from transformers import GraniteSpeechForConditionalGeneration

    from granite_train.models.speech_llm import SpeechLLM

    with torch.device("meta"), default_dtype(dtype):
        hf = GraniteSpeechForConditionalGeneration(copy.deepcopy(speech.config))
        hf.to(dtype)
        if speech.has_lora:
            (name,) = list(speech.hf.peft_config)
            hf.add_adapter(copy.deepcopy(speech.hf.peft_config[name]))
        twin = SpeechLLM(hf, _AudioTokenOnly(speech.audio_token_id), attn_impl=speech.encoder.attn_impl)
    trainable = {name: p.requires_grad for name, p in speech.hf.named_parameters()}
    for name, param in twin.hf.named_parameters():
        param.requires_grad_(trainable.get(name, False))
    twin.frozen = set(speech.frozen)
    twin.encoder_top_layers = getattr(speech, "encoder_top_layers", 0)
    twin.set_gradient_checkpointing(
        llm=speech.llm_checkpointing,
        encoder=bool(speech.encoder.gradient_checkpointing),
    )
    return twin.train()


def utterance_frames(batch_frames: int, utterance_seconds: float) -> int:
    """Frames per utterance of the assumed batch (utterances of ``utterance_seconds``, fewer when
    the batch is shorter)."""
    return max(2, min(int(batch_frames), int(utterance_seconds * 50)))


def step_activation_bytes(speech, batch_frames: int, utterance_seconds: float = 15.0) -> int:
    """Activation bytes of one training forward of ``speech`` (built on ``meta``: :func:`meta_twin`)
    at a batch of ``batch_frames`` padded 50 Hz frames split into utterances of ``utterance_seconds``.

    The forward is the training step's: encoder (no graph when frozen), projector, the audio tokens
    and prompt + target embeddings into the LLM, the LM head at the target positions only.
    """
    frames = utterance_frames(batch_frames, utterance_seconds)
    utterances = max(1, batch_frames // frames)
    lengths = torch.full((utterances,), frames, dtype=torch.long)
    audio = int(projector_tokens(lengths, speech.config.window_size, speech.config.downsample_rate)[0])
    targets = max(1, math.ceil(TARGET_TOKENS_PER_SECOND * frames / 50))
    text = PROMPT_TOKENS + targets
    dtype = next(speech.parameters()).dtype
    device = next(speech.parameters()).device  # meta for a dry run; a real device measures

    def forward() -> torch.Tensor:
        features = torch.zeros(
            utterances, frames, speech.encoder.config.input_dim, device=device, dtype=dtype
        )
        hidden = speech.encode(features, lengths.to(device))
        audio_embeds = speech.projector(hidden)[:, :audio]
        ids = torch.zeros(utterances, text, dtype=torch.long, device=device)
        embeds = torch.cat([audio_embeds, speech.language_model.embed_tokens(ids)], dim=1)
        # a ready 4-D mask (as a padded batch gets): transformers' own mask building reads values
        length = embeds.shape[1]
        mask = (
            torch.ones(length, length, dtype=torch.bool, device=device).tril().expand(utterances, 1, -1, -1)
        )
        out = speech.language_model(
            inputs_embeds=embeds, attention_mask=mask, use_cache=False
        ).last_hidden_state
        logits = speech.hf.lm_head(out[:, -targets - 1 : -1].reshape(-1, out.shape[-1])).float()
        labels = torch.zeros(logits.shape[0], dtype=torch.long, device=device)
        return torch.nn.functional.cross_entropy(logits, labels)

    with _fused_attention_on_meta(device):
        saved = saved_activation_bytes(forward)
    # the loss's transient: fp32 logits of the targets, their softmax and gradient
    vocab = speech.hf.lm_head.out_features
    return saved + 3 * utterances * targets * vocab * 4


def estimate_step_memory(
    speech,
    batch_frames: int,
    precision: str = "32-true",
    device: str | torch.device = "cpu",
    utterance_seconds: float = 15.0,
) -> MemoryEstimate:
    """The :class:`MemoryEstimate` of training ``speech`` (as configured: trainable set, LoRA,
    checkpointing) with AdamW at ``batch_frames`` per batch in Lightning ``precision``."""
    params = list(speech.parameters())
    trained = [p for p in params if p.requires_grad]
    weight_bytes = sum(p.numel() * p.element_size() for p in params)
    if precision.startswith("bf16-true") or precision == "bf16":
        state_size, compute = 2, torch.bfloat16
    elif precision.startswith("16-true"):
        state_size, compute = 2, torch.float16
    else:  # fp32 weights (mixed precision keeps them; the optimizer works on them)
        state_size = 4
        compute = (
            torch.bfloat16
            if precision.startswith("bf16")
            else torch.float16
            if precision.startswith("16")
            else torch.float32
        )
    trained_numel = sum(p.numel() for p in trained)
    twin = meta_twin(speech, compute)
    activations = step_activation_bytes(twin, batch_frames, utterance_seconds)
    # one utterance more: how the activations grow with the batch
    frames = utterance_frames(batch_frames, utterance_seconds)
    per_frame = (step_activation_bytes(twin, batch_frames + frames, utterance_seconds) - activations) / frames
    return MemoryEstimate(
        weights=weight_bytes,
        gradients=trained_numel * state_size,
        optimizer=trained_numel * state_size * ADAM_STATES,
        activations=activations,
        batch_frames=int(batch_frames),
        device=str(torch.device(device)),
        capacity=device_capacity(device),
        activation_dtype=str(compute).removeprefix("torch."),
        activation_bytes_per_frame=per_frame,
    )


__all__ = [
    "MemoryEstimate",
    "default_dtype",
    "device_capacity",
    "estimate_step_memory",
    "meta_twin",
    "saved_activation_bytes",
    "step_activation_bytes",
    "utterance_frames",
]
