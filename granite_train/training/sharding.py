"""Sharded data parallel (``trainer.strategy=fsdp2``): torch FSDP2 through Lightning's
``ModelParallelStrategy``, for LLMs whose weights, gradients and optimizer state do not fit one
device (the 8B-class Granite 3.3 LLMs).

Every rank holds 1/N of each sharded group and gathers a group's full weights only while it runs
(``fully_shard``). What is sharded (:func:`shard_speech_llm`):

* each decoder layer of the LLM, frozen or not (the bulk of the weights; LoRA lives inside them);
* every other part with trainable weights: the projector, a trained encoder, the training-only
  audio-CTC head, and the rest of the LLM (embeddings, final norm, head) when it trains;
* frozen parts outside the decoder layers (the encoder, the embeddings of a frozen LLM) stay whole
  on every rank: they need no gradient reduction, and the tied audio-CTC head reads the embedding
  table outside the LLM's forward, which a sharded table would not allow.

Gradients of sharded groups are reduce-scattered (averaged over ranks): the same update as DDP's
all-reduce, so a run matches DDP up to float summation order (``tests/test_training_fsdp.py``).
Checkpoints hold the full state dict (``save_distributed_checkpoint=False``): rank 0 writes one
file that ``granite-train export`` and a resume on any number of ranks read as before.

Works on CPU (gloo) and CUDA (nccl). Stage 1 (the CTC encoder, ~100 M parameters) has nothing to
gain from sharding and keeps DDP.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from lightning.pytorch.strategies import ModelParallelStrategy
from torch import nn

log = logging.getLogger(__name__)

STRATEGY_NAME = "fsdp2"


class ShardedDataParallelStrategy(ModelParallelStrategy):
    """FSDP2 over every rank: ``ModelParallelStrategy`` with the data-parallel mesh dimension equal
    to the world size and no tensor parallelism; full-state checkpoints."""

    def __init__(self, **kwargs: Any):
        kwargs.setdefault("save_distributed_checkpoint", False)
        super().__init__(data_parallel_size="auto", tensor_parallel_size=1, **kwargs)

    def setup_environment(self) -> None:
        # the world size is known only now: every rank is one data-parallel shard
        self._data_parallel_size = self.num_nodes * self.num_processes
        super().setup_environment()


def is_sharded(strategy: object) -> bool:
    return isinstance(strategy, ShardedDataParallelStrategy)


def _trains(module: nn.Module | None) -> bool:
    return module is not None and any(p.requires_grad for p in module.parameters())


def decoder_layers(llm: nn.Module) -> list[nn.Module]:
    """The LLM's transformer blocks (``*DecoderLayer`` modules: Granite, Llama and their kin)."""
    return [m for m in llm.modules() if type(m).__name__.endswith("DecoderLayer")]


def shard_speech_llm(module: nn.Module, mesh) -> dict[str, int]:
    """Apply ``fully_shard`` to a :class:`~granite_train.training.speech_llm_module.SpeechLLMModule`
    (see the module doc). Returns how many groups of each kind were sharded.

    Raises ``ValueError`` when the LLM has no ``*DecoderLayer`` modules, or when a tied audio-CTC
    head would have to read a sharded (trained) embedding table.
    """
    from torch.distributed.fsdp import fully_shard

    speech = module.model
    layers = decoder_layers(speech.language_model)
    if not layers:
        raise ValueError(
            f"trainer.strategy={STRATEGY_NAME}: no *DecoderLayer modules in the LLM "
            f"({type(speech.language_model).__name__}); nothing to shard layer by layer"
        )
    for layer in layers:
        fully_shard(layer, mesh=mesh)
    counts = {"decoder_layers": len(layers)}
    for name, part in (
        ("projector", speech.projector),
        ("encoder", speech.encoder),
        ("audio_ctc_head", getattr(module, "audio_ctc_head", None)),
    ):
        if _trains(part):
            fully_shard(part, mesh=mesh)
            counts[name] = 1
    from torch.distributed.tensor import DTensor

    rest = [n for n, p in speech.hf.named_parameters() if p.requires_grad and not isinstance(p, DTensor)]
    if rest:  # the LLM trains outside its layers (embeddings, head): one more group, the rest of it
        head = getattr(module, "audio_ctc_head", None)
        if head is not None and head.tied:
            raise ValueError(
                f"trainer.strategy={STRATEGY_NAME} with a trained LLM outside its layers ({rest[0]}, ...) "
                "and model.loss.audio_ctc_head=tied: the tied head reads the embedding table outside "
                "the LLM's forward, where it is sharded. Use model.loss.audio_ctc_head=linear, "
                "model.loss.audio_ctc_weight=0, or trainer.strategy=ddp"
            )
        fully_shard(speech.hf, mesh=mesh)  # one group: a tied embedding and head stay one tensor
        counts["llm_rest"] = 1
    unsharded = [n for n, p in module.named_parameters() if p.requires_grad and not isinstance(p, DTensor)]
    if unsharded:  # their gradients would never be reduced: ranks would drift apart
        raise ValueError(
            f"trainer.strategy={STRATEGY_NAME}: trainable parameters left unsharded: {unsharded[:5]}"
        )
    held = sum(p.to_local().numel() for layer in layers for p in layer.parameters())
    full = sum(p.numel() for layer in layers for p in layer.parameters())
    log.info(
        "%s: sharded %s; this rank holds %d of %d decoder-layer parameters",
        STRATEGY_NAME,
        ", ".join(f"{k} {v}" for k, v in counts.items()),
        held,
        full,
    )
    return counts


def full_tensor(value: torch.Tensor) -> torch.Tensor:
    """A DTensor's full value (e.g. a gradient norm under FSDP2), or ``value`` itself."""
    return value.full_tensor() if hasattr(value, "full_tensor") else value
