"""Stage ``turboctc``: a granite-speech-5.0 TurboCTC model trained (or fine-tuned) as a LightningModule.

The network, its features, its BPE targets and its loss are transformers' own
(:mod:`granite_train.models.turboctc`); what this adds is our data path and trainer: streaming
sources and mixtures, exact resume, step skipping, counters, validation WER. A batch of the
pipeline (waveforms + texts) becomes the model's inputs in :class:`TurboCTCCollator`:

* features: the folder's ``GraniteSpeech5FeatureExtractor`` over each clip's own samples;
* targets: the folder's tokenizer (:func:`~granite_train.models.turboctc.turboctc_targets`),
  optionally normalised (``model.normalize_targets``);
* an utterance with more targets than output frames (12.5 Hz) cannot be aligned: it stays in the
  batch but out of the loss, counted as ``skipped/too_many_targets`` (the released notebook drops
  them too), and so does a text the tokenizer cannot write without the blank or its unknown token
  (``skipped/target_has_unk``: a character outside the BPE vocabulary, which ``add-language``
  adds).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from granite_train.data.collate import Batch, Collator, ExampleBatch
from granite_train.data.prepare import Example
from granite_train.data.prompts import normalize_target
from granite_train.models.config import TurboCTCModelConfig
from granite_train.models.turboctc import (
    SAMPLE_RATE,
    greedy_ctc_decode,
    load_turboctc,
    pad_labels,
    too_many_targets,
    turboctc_targets,
)
from granite_train.training.config import OptimConfig
from granite_train.training.step_module import StepSkippingModule
from granite_train.typed_config import from_mapping

log = logging.getLogger(__name__)


@dataclass
class TurboCTCTrainBatch(Batch):
    """A :class:`Batch` plus the model's inputs; ``usable`` marks the utterances in the loss."""

    input_features: torch.Tensor | None = None  # (B, F, 320) 50 Hz
    attention_mask: torch.Tensor | None = None  # (B, F)
    labels: torch.Tensor | None = None  # (B, U) BPE ids, blank-padded
    usable: torch.Tensor | None = None  # (B,) bool


class TurboCTCCollator:
    """Pipeline examples -> :class:`TurboCTCTrainBatch` (see the module doc)."""

    def __init__(self, processor, audio: Collator | None = None, normalize: bool = False):
        self.feature_extractor = processor.feature_extractor
        self.tokenizer = processor.tokenizer
        audio = audio or Collator(compute_features=False)
        if audio.features is not None:  # 4.0's log-mel: not this model's input
            if audio.spec_augment is not None:
                raise ValueError(
                    "data.augment.spec_augment works on 4.0 log-mel features, not a TurboCTC model's"
                )
            audio.compute_features, audio.features = False, None
        self.audio = audio
        self.normalize = normalize
        self.blank = self.tokenizer.pad_token_id or 0
        self.unk = self.tokenizer.unk_token_id

    def targets(self, text: str | None, num_samples: int) -> tuple[list[int] | None, str | None]:
        """The BPE target of ``text`` or None, and why not (a skip reason)."""
        if not text:
            return None, "no_text"
        try:
            ids = turboctc_targets(self.tokenizer, normalize_target(text) if self.normalize else text)
        except ValueError:
            return None, "target_has_blank"
        if not ids:
            return None, "empty_target"
        if self.unk is not None and self.unk in ids:  # a character the BPE cannot write: add it
            return None, "target_has_unk"  # (add-language's extend step), never learn <unk>
        if too_many_targets(len(ids), num_samples):
            return None, "too_many_targets"
        return ids, None

    def __call__(self, examples: ExampleBatch | Sequence[Example]) -> TurboCTCTrainBatch:
        base = self.audio(examples)
        lengths = base.waveform_lengths.tolist()
        clips = [np.asarray(w[:n], dtype=np.float32) for w, n in zip(base.waveforms.numpy(), lengths)]
        features = self.feature_extractor(clips, sampling_rate=SAMPLE_RATE, return_tensors="pt")
        skipped = dict(base.skipped)
        targets = []
        for text, n in zip(base.texts, lengths):
            ids, why = self.targets(text, n)
            if why is not None:
                skipped[why] = skipped.get(why, 0) + 1
            targets.append(ids or [])
        return TurboCTCTrainBatch(
            **{**base.__dict__, "skipped": skipped},
            input_features=features["input_features"],
            attention_mask=features["attention_mask"],
            labels=pad_labels(targets, self.blank),
            usable=torch.tensor([bool(t) for t in targets]),
        )


class TurboCTCModule(StepSkippingModule):
    """``GraniteSpeech5ForCTC`` trained on its own CTC loss.

    Args:
        model: :class:`~granite_train.models.config.TurboCTCModelConfig` (or its mapping form).
        optim, total_steps, seed, fault_injection: see :class:`StepSkippingModule`.
        val_normalizer: text normalizer of the validation WER / CER.
    """

    def __init__(
        self,
        model: TurboCTCModelConfig | Mapping[str, Any],
        optim: OptimConfig | Mapping[str, Any],
        total_steps: int,
        seed: int = 0,
        val_normalizer: str = "basic",
        fault_injection: dict[str, Any] | None = None,
    ):
        super().__init__(optim, total_steps, seed=seed, fault_injection=fault_injection)
        model = from_mapping(TurboCTCModelConfig, model, "model")
        self.save_config(model, val_normalizer=val_normalizer)
        loaded = load_turboctc(model.init)
        self.model, self.processor = loaded.model.float(), loaded.processor
        self.normalize_targets = bool(model.normalize_targets)
        self._set_trainable(model.train_top_layers)
        self.train()  # loaded in eval mode; Lightning keeps the modes it finds (frozen layers: eval)
        self.val_normalizer = val_normalizer
        self._val: dict[str, list] = {"refs": [], "hyps": []}

    def _set_trainable(self, top: int | None) -> None:
        self._frozen_layers: list[torch.nn.Module] = []
        if top is None:
            self.model.requires_grad_(True)
            return
        layers = self.model.encoder.layers
        if top > len(layers):
            raise ValueError(f"model.train_top_layers={top}, but the model has {len(layers)} layers")
        self.model.requires_grad_(False)
        self._frozen_layers = list(layers)[:-top]
        for layer in list(layers)[-top:]:
            layer.requires_grad_(True)
        for head in (self.model.encoder.out, self.model.encoder.out_mid, self.model.ctc_head):
            head.requires_grad_(True)

    def train(self, mode: bool = True) -> TurboCTCModule:
        """Frozen layers stay in eval mode: their BatchNorm statistics must not drift either."""
        super().train(mode)
        for layer in getattr(self, "_frozen_layers", ()):
            layer.eval()
        return self

    def collator(self, audio: Collator | None = None) -> TurboCTCCollator:
        return TurboCTCCollator(self.processor, audio, normalize=self.normalize_targets)

    def _forward(self, batch: TurboCTCTrainBatch, rows: torch.Tensor | None = None):
        inputs = {"input_features": batch.input_features, "attention_mask": batch.attention_mask}
        if rows is not None:
            inputs = {k: v[rows] for k, v in inputs.items()}
            inputs["labels"] = batch.labels[rows]
        return self.model(**inputs)

    def compute_loss(self, batch: TurboCTCTrainBatch):
        rows = batch.usable.nonzero().squeeze(1)
        if rows.numel() == 0:  # nothing alignable: zero loss, every parameter still in the graph (DDP)
            return 0.0 * sum(p.sum() for p in self.model.parameters() if p.requires_grad), {}
        out = self._forward(batch, rows)
        return out.loss, {"usable_utts": float(rows.numel())}

    def on_validation_epoch_start(self) -> None:
        self._val = {"refs": [], "hyps": []}

    def validation_step(self, batch: TurboCTCTrainBatch, batch_idx: int) -> None:
        logits = self._forward(batch).logits
        lengths = batch.attention_mask.sum(-1)
        for _ in self.model.config.encoder_config.subsample_layers:
            lengths = lengths // 2
        self._val["hyps"] += greedy_ctc_decode(logits, lengths.cpu(), self.processor.tokenizer)
        self._val["refs"] += [t or "" for t in batch.texts]

    def on_validation_epoch_end(self) -> None:
        refs, hyps = self._val["refs"], self._val["hyps"]
        if self.trainer.world_size > 1:
            gathered: list = [None] * self.trainer.world_size
            torch.distributed.all_gather_object(gathered, (refs, hyps))
            refs = [r for part in gathered for r in part[0]]
            hyps = [h for part in gathered for h in part[1]]
        if refs:
            normalizer = "whisper_english" if self.val_normalizer == "auto" else self.val_normalizer
            self.log_error_rates(refs, hyps, normalizer, primary="wer")
