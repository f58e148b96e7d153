"""Training checkpoints on disk: their keys, safe reading, and which stage wrote them.

A granite-train checkpoint is a Lightning ``.ckpt`` (a dict) with, besides Lightning's own keys:

* ``state_dict``: the LightningModule's tensors; a stage-1 encoder under ``encoder.``, a stage-2
  :class:`~granite_train.models.speech_llm.SpeechLLM` under ``model.hf.`` (transformers' keys);
* ``encoder_config`` (stage 1): ``GraniteSpeechEncoderConfig.to_dict()``;
* ``ctc_vocab`` (stage 1): the CTC symbol table, :meth:`CharVocab.to_table`
  (absent in older checkpoints: the base vocabulary);
* ``speech_llm`` (stage 2): ``{"config": GraniteSpeechConfig.to_dict(), "lora": LoraConfig fields
  or None}`` in JSON types (:func:`speech_llm_metadata`);
* ``granite_train``: the run counters and the position inside gradient accumulation.

Everything is read with ``torch.load(weights_only=True)``: tensors and plain containers only,
never arbitrary pickles. This module is the one place that knows these keys.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

STATE_KEY = "state_dict"
ENCODER_CONFIG_KEY = "encoder_config"  # marks a stage-1 checkpoint
CTC_VOCAB_KEY = "ctc_vocab"  # stage 1: the CTC symbol table (CharVocab.to_table())
SPEECH_LLM_KEY = "speech_llm"  # marks a stage-2 checkpoint
TRAINING_STATE_KEY = "granite_train"
ENCODER_PREFIX = "encoder."  # stage-1 encoder keys inside state_dict
SPEECH_LLM_PREFIX = "model.hf."  # stage-2 transformers keys inside state_dict


class CheckpointError(ValueError):
    """A file that is not a readable granite-train checkpoint (the message says why)."""


def strip_compile_prefix(key: str) -> str:
    """``key`` without torch.compile's ``_orig_mod.`` wrapper names."""
    return key.replace("_orig_mod.", "")


def load_checkpoint(path: str | Path, error: type[Exception] = CheckpointError) -> Any:
    """``torch.load(path, weights_only=True)`` on CPU, memory-mapped when the format allows.

    A file that ``weights_only`` refuses (arbitrary objects) raises ``error`` naming the file.
    """
    path = Path(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError:  # mmap needs the zip format: retry for legacy files
        pass
    except Exception as err:  # weights_only refuses arbitrary objects (UnpicklingError and kin)
        raise error(
            f"{path}: cannot be read with torch.load(weights_only=True) ({type(err).__name__}: {err}); "
            "a checkpoint must hold tensors and plain containers only"
        ) from err
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise error(
            f"{path}: cannot be read with torch.load(weights_only=True) ({type(err).__name__}: {err})"
        ) from err


def prefixed_state(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The entries of ``state`` under ``prefix``, with the prefix (and compile wrappers) removed."""
    out = {}
    for key, value in state.items():
        key = strip_compile_prefix(key)
        if key.startswith(prefix):
            out[key[len(prefix) :]] = value
    return out


def checkpoint_stage(path: str | Path) -> int:
    """1 for a stage-1 encoder checkpoint or an exported folder, 2 for a stage-2 checkpoint.

    Folders are stage 1 (an exported encoder, re-exported); a file is stage 2 when it has
    ``ckpt["speech_llm"]``. Unreadable files raise :class:`CheckpointError`.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint at {path}")
    if path.is_dir():
        return 1
    ckpt = load_checkpoint(path)
    return 2 if isinstance(ckpt, dict) and SPEECH_LLM_KEY in ckpt else 1


def plain(value: Any) -> Any:
    """JSON types only: what ``torch.load(weights_only=True)`` reads back (no sets, enums, dataclasses)."""
    return json.loads(
        json.dumps(value, default=lambda v: sorted(v) if isinstance(v, set | frozenset) else str(v))
    )


def speech_llm_metadata(speech: Any) -> dict[str, Any]:
    """``ckpt["speech_llm"]`` of a :class:`~granite_train.models.speech_llm.SpeechLLM` (not imported:
    this module stays below the model classes): the model config and LoRA settings as plain data.

    ``LoraConfig.to_dict()`` holds a ``set`` and a ``PeftType`` enum, which
    ``torch.load(weights_only=True)`` refuses; this is the same content in JSON types.
    """
    lora = None
    if speech.has_lora:
        names = list(speech.hf.peft_config)
        if len(names) != 1:
            raise CheckpointError(f"expected exactly one LoRA adapter on the model, found {names}")
        lora = plain(speech.hf.peft_config[names[0]].to_dict())
    return {"config": plain(speech.config.to_dict()), "lora": lora}


__all__ = [
    "CTC_VOCAB_KEY",
    "ENCODER_CONFIG_KEY",
    "ENCODER_PREFIX",
    "SPEECH_LLM_KEY",
    "SPEECH_LLM_PREFIX",
    "STATE_KEY",
    "TRAINING_STATE_KEY",
    "CheckpointError",
    "checkpoint_stage",
    "load_checkpoint",
    "plain",
    "prefixed_state",
    "speech_llm_metadata",
    "strip_compile_prefix",
]
