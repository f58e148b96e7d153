"""Greedy-CTC evaluation of a granite-speech-5.0 TurboCTC folder through the same path as a 4.0
encoder (:func:`granite_train.eval.run.evaluate_ctc`): same pipeline, accounting, scoring and RTFx.

Only the two ends differ, and both are the folder's own (:mod:`granite_train.models.turboctc`):
the input is its ``GraniteSpeech5FeatureExtractor`` (computed from the waveforms inside each
timed batch, as the leaderboard times features), the output its BPE tokenizer's greedy decoding.
``granite-train eval model_path=<5.0 folder>`` takes this path when the folder's ``config.json``
says ``granite_speech5_ctc``.
"""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from torch import nn

from granite_train.models.turboctc import greedy_ctc_decode, load_turboctc

MODEL_TYPE = "granite_speech5_ctc"
SAMPLE_RATE = 16_000


def is_turboctc_folder(path: str | Path) -> bool:
    """Whether ``path`` is a folder whose ``config.json`` names the 5.0 TurboCTC model type."""
    config = Path(path) / "config.json"
    if not config.is_file():
        return False
    try:
        return json.loads(config.read_text()).get("model_type") == MODEL_TYPE
    except (OSError, ValueError):
        return False


class TurboCTCFrontend:
    """``(waveforms (B, S), lengths (B,))`` -> the model's ``input_features`` and ``attention_mask``."""

    def __init__(self, feature_extractor, device: torch.device):
        self.feature_extractor = feature_extractor
        self.device = device

    def __call__(self, waveforms: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        clips = [w[: int(n)].float().cpu().numpy() for w, n in zip(waveforms, lengths)]
        out = self.feature_extractor(clips, sampling_rate=SAMPLE_RATE, return_tensors="pt")
        return out["input_features"].to(self.device), out["attention_mask"].to(self.device)


class TurboCTCLogits(nn.Module):
    """The model called as an encoder is: ``(features, attention_mask)`` -> ``.logits`` and the
    valid output frames ``.lengths`` (the mask floored by 2 per subsampling block)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.config = model.config
        self.num_subsample_layers = len(model.config.encoder_config.subsample_layers)

    def forward(self, features: torch.Tensor, attention_mask: torch.Tensor) -> SimpleNamespace:
        logits = self.model(input_features=features, attention_mask=attention_mask).logits
        lengths = attention_mask.sum(-1)
        for _ in range(self.num_subsample_layers):
            lengths = lengths // 2
        return SimpleNamespace(logits=logits, lengths=lengths.clamp(max=logits.shape[1]))


def turboctc_eval_parts(folder: str | Path, device: torch.device) -> tuple[nn.Module, dict[str, Any]]:
    """The wrapped model and the ``frontend`` / ``decode`` keywords of ``evaluate_ctc`` for ``folder``."""
    loaded = load_turboctc(folder)
    tokenizer = loaded.processor.tokenizer
    frontend = TurboCTCFrontend(loaded.processor.feature_extractor, device)
    return TurboCTCLogits(loaded.model), {
        "frontend": frontend,
        "decode": partial(_decode, tokenizer=tokenizer),
    }


def _decode(logits: torch.Tensor, lengths: torch.Tensor, tokenizer) -> list[str]:
    return [" ".join(t.split()) for t in greedy_ctc_decode(logits, lengths.cpu(), tokenizer)]
