"""Stage 1 as a LightningModule: the CTC encoder trained with self-conditioned CTC.

Step skipping, exact-resume batch fetching, seeded dropout and run counters come from
:class:`~granite_train.training.step_module.StepSkippingModule`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import torch

from granite_train.eval.ctc_decode import greedy_ctc_decode
from granite_train.models.checkpoints import ENCODER_CONFIG_KEY
from granite_train.models.config import CTCModelConfig
from granite_train.models.ctc_loss import SelfConditionedCTCLoss
from granite_train.models.encoder import CTCEncoder, encoder_config
from granite_train.text.vocab import CharVocab
from granite_train.training.config import OptimConfig
from granite_train.training.step_module import CHECKPOINT_KEY, StepSkippingModule
from granite_train.typed_config import from_mapping

log = logging.getLogger(__name__)

__all__ = ["CHECKPOINT_KEY", "CTCPretrainModule"]


class CTCPretrainModule(StepSkippingModule):
    """Self-conditioned CTC pretraining of :class:`CTCEncoder`.

    Args:
        model: :class:`~granite_train.models.config.CTCModelConfig` (or its mapping form).
        optim, total_steps, seed, fault_injection: see :class:`StepSkippingModule`.
        val_normalizer: text normalizer of the validation CER/WER.
    """

    def __init__(
        self,
        model: CTCModelConfig | Mapping[str, Any],
        optim: OptimConfig | Mapping[str, Any],
        total_steps: int,
        seed: int = 0,
        val_normalizer: str = "basic",
        fault_injection: dict[str, Any] | None = None,
    ):
        super().__init__(optim, total_steps, seed=seed, fault_injection=fault_injection)
        model = from_mapping(CTCModelConfig, model, "model")
        self.save_config(model, val_normalizer=val_normalizer)
        config = encoder_config(model.preset, **(model.encoder or {}))
        self.encoder = CTCEncoder(
            config, attn_impl=model.attn_impl, gradient_checkpointing=bool(model.gradient_checkpointing)
        )
        self.loss_fn = SelfConditionedCTCLoss(
            final_weight=model.loss.final_weight, mid_weight=model.loss.mid_weight
        )
        self.vocab = CharVocab()
        self.val_normalizer = val_normalizer
        self._val: dict[str, list] = {"refs": [], "hyps": [], "loss": []}

    def compute_loss(self, batch):
        out = self.encoder(batch.features, batch.feature_lengths)
        loss_out = self.loss_fn(out.logits, out.lengths, batch.targets, batch.target_lengths, out.mid_logits)
        self.counters["ctc_dropped_utterances"] += loss_out.num_dropped
        extra = {"ctc_final": loss_out.final_loss.detach()}
        if loss_out.mid_loss is not None:
            extra["ctc_mid"] = loss_out.mid_loss.detach()
        return loss_out.loss, extra

    def log_counters(self, bsz: int) -> None:
        self.log("train/ctc_dropped", float(self.counters["ctc_dropped_utterances"]), batch_size=bsz)
        super().log_counters(bsz)

    # ------------------------------------------------------------------------------------------
    # validation: greedy CTC CER / WER
    # ------------------------------------------------------------------------------------------
    def on_validation_epoch_start(self) -> None:
        self._val = {"refs": [], "hyps": [], "loss": []}

    def validation_step(self, batch, batch_idx: int) -> None:
        # No collectives here: ranks may hold different numbers of validation batches.
        out = self.encoder(batch.features, batch.feature_lengths)
        loss_out = self.loss_fn(out.logits, out.lengths, batch.targets, batch.target_lengths, out.mid_logits)
        if not loss_out.all_dropped:
            kept = loss_out.num_utts - loss_out.num_dropped
            self._val["loss"].append((float(loss_out.loss) * kept, kept))
        self._val["hyps"] += greedy_ctc_decode(out.logits, out.lengths, self.vocab)
        self._val["refs"] += [t or "" for t in batch.texts]

    def on_validation_epoch_end(self) -> None:
        refs, hyps, losses = self._val["refs"], self._val["hyps"], self._val["loss"]
        if self.trainer.world_size > 1:
            gathered: list = [None] * self.trainer.world_size
            torch.distributed.all_gather_object(gathered, (refs, hyps, losses))
            refs = [r for part in gathered for r in part[0]]
            hyps = [h for part in gathered for h in part[1]]
            losses = [x for part in gathered for x in part[2]]
        if losses:
            total, count = map(sum, zip(*losses))
            self.log("val/loss", total / count, rank_zero_only=True)
        if not refs:
            return
        self.log_error_rates(refs, hyps, self.val_normalizer, primary="cer")
        self.log_mixture()

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint[ENCODER_CONFIG_KEY] = self.encoder.config.to_dict()
