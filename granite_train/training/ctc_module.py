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
from granite_train.models.checkpoints import CTC_VOCAB_KEY, ENCODER_CONFIG_KEY
from granite_train.models.config import CTCModelConfig
from granite_train.models.ctc_loss import SelfConditionedCTCLoss
from granite_train.models.encoder import CTCEncoder, encoder_config
from granite_train.models.vocab_surgery import extend_ctc_vocab
from granite_train.text.targets import is_japanese
from granite_train.text.vocab import CharVocab
from granite_train.training.config import OptimConfig
from granite_train.training.step_module import CHECKPOINT_KEY, StepSkippingModule
from granite_train.typed_config import from_mapping

log = logging.getLogger(__name__)

__all__ = ["CHECKPOINT_KEY", "CTCPretrainModule", "build_ctc_encoder"]


def build_ctc_encoder(model: CTCModelConfig) -> CTCEncoder:
    """The stage-1 encoder of a recipe: a new one of ``model.preset``, or ``model.init``'s weights;
    then ``model.extra_symbols`` not in its vocabulary yet, appended (old outputs unchanged)."""
    overrides = dict(model.encoder or {})
    if not model.init:
        config = encoder_config(model.preset, **overrides)
        return CTCEncoder(
            config,
            attn_impl=model.attn_impl,
            gradient_checkpointing=bool(model.gradient_checkpointing),
            extra_symbols=model.new_symbols(CharVocab()),
        )
    from granite_train.models.export import load_encoder

    encoder = load_encoder(model.init, attn_impl=model.attn_impl).float()
    encoder.gradient_checkpointing = bool(model.gradient_checkpointing)
    for key, value in overrides.items():
        if key == "dropout":
            _set_dropout(encoder, float(value))
        elif key != "output_dim" and getattr(encoder.config, key) != value:
            raise ValueError(
                f"model.encoder.{key} is {value!r} but model.init ({model.init}) has "
                f"{key}={getattr(encoder.config, key)!r}: the architecture comes from model.init"
            )
    new = model.new_symbols(encoder.ctc_vocab())
    if new:
        encoder = extend_ctc_vocab(encoder, new)
    if "output_dim" in overrides and overrides["output_dim"] != encoder.config.output_dim:
        raise ValueError(
            f"model.encoder.output_dim is {overrides['output_dim']} but the CTC vocabulary of model.init "
            f"plus model.extra_symbols has {encoder.config.output_dim} symbols: set "
            f"model.encoder.output_dim={encoder.config.output_dim} or leave it out"
        )
    log.info("stage 1 starts from %s (%d CTC symbols)", model.init, encoder.config.output_dim)
    return encoder


def _set_dropout(encoder: CTCEncoder, p: float) -> None:
    """Every dropout of the encoder (they are built from ``config.dropout``) at ``p``."""
    encoder.config.dropout = p
    for module in encoder.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = p


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
        self.encoder = build_ctc_encoder(model)
        self.loss_fn = SelfConditionedCTCLoss(
            final_weight=model.loss.final_weight, mid_weight=model.loss.mid_weight
        )
        self.vocab = self.encoder.ctc_vocab()  # base + the new language's symbols, as the head
        self.val_normalizer = val_normalizer
        self._val: dict[str, list] = {"refs": [], "hyps": [], "loss": [], "languages": []}

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
        self._val = {"refs": [], "hyps": [], "loss": [], "languages": []}

    def validation_step(self, batch, batch_idx: int) -> None:
        # No collectives here: ranks may hold different numbers of validation batches.
        out = self.encoder(batch.features, batch.feature_lengths)
        loss_out = self.loss_fn(out.logits, out.lengths, batch.targets, batch.target_lengths, out.mid_logits)
        if not loss_out.all_dropped:
            kept = loss_out.num_utts - loss_out.num_dropped
            self._val["loss"].append((float(loss_out.loss) * kept, kept))
        self._val["hyps"] += greedy_ctc_decode(out.logits, out.lengths, self.vocab)
        for i, (text, language) in enumerate(zip(batch.texts, batch.languages)):
            if is_japanese(language):  # scored on its katakana target: the vocabulary has no kanji
                text = self.vocab.decode(batch.targets[i, : int(batch.target_lengths[i])].tolist())
            self._val["refs"].append(text or "")
            self._val["languages"].append(language or "?")

    def on_validation_epoch_end(self) -> None:
        refs, hyps, losses = self._val["refs"], self._val["hyps"], self._val["loss"]
        languages = self._val["languages"]
        if self.trainer.world_size > 1:
            gathered: list = [None] * self.trainer.world_size
            torch.distributed.all_gather_object(gathered, (refs, hyps, losses, languages))
            refs = [r for part in gathered for r in part[0]]
            hyps = [h for part in gathered for h in part[1]]
            losses = [x for part in gathered for x in part[2]]
            languages = [x for part in gathered for x in part[3]]
        if losses:
            total, count = map(sum, zip(*losses))
            self.log("val/loss", total / count, rank_zero_only=True)
        if not refs:
            return
        by_language = sorted(set(languages))
        # one language: score as that language; a mixture (or unknown): as before, English
        overall = by_language[0] if len(by_language) == 1 and by_language[0] != "?" else "en"
        self.log_error_rates(refs, hyps, self.val_normalizer, language=overall, primary="cer")
        if len(by_language) > 1:  # a multilingual run: each language's CER and WER too
            for language in by_language:
                keep = [i for i, x in enumerate(languages) if x == language]
                self.log_error_rates(
                    [refs[i] for i in keep],
                    [hyps[i] for i in keep],
                    self.val_normalizer,
                    language=language,
                    primary="cer",
                    suffix=f"/{language}",
                )
        self.log_mixture()

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint[ENCODER_CONFIG_KEY] = self.encoder.config.to_dict()
        checkpoint[CTC_VOCAB_KEY] = self.vocab.to_table()
