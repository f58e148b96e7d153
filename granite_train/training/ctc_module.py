"""Stage 1 as a LightningModule: the CTC encoder trained with self-conditioned CTC.

Optimization is manual so that a step can be skipped cleanly: gradients are clipped, and when the
loss (on any rank) or the gradient norm is not finite the optimizer and scheduler do not step and
``nonfinite_steps`` is counted. A skipped step is not a step: ``max_steps`` counts applied updates.

``training_step`` takes the ``dataloader_iter`` and fetches its own batch. Lightning's default
fetcher reads one batch ahead, so a checkpoint would record that batch as consumed and a resumed run
would skip it; fetching inside the step keeps the loader state of a checkpoint exact.

Dropout draws from a generator seeded by ``(seed, rank, optimizer step, micro-batch)``, so a resumed
run makes the same draws as an uninterrupted one whatever else touched the global RNG.
"""

from __future__ import annotations

import logging
import math
import time
import zlib
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import lightning as L
import torch

from granite_train.eval.ctc_decode import greedy_ctc_decode
from granite_train.eval.metrics import error_rates
from granite_train.models.ctc_loss import SelfConditionedCTCLoss
from granite_train.models.encoder import CTCEncoder, encoder_config
from granite_train.text.vocab import CharVocab
from granite_train.training.schedules import build_schedule

log = logging.getLogger(__name__)

CHECKPOINT_KEY = "granite_train"


class CTCPretrainModule(L.LightningModule):
    """Self-conditioned CTC pretraining of :class:`CTCEncoder`.

    Args:
        model: ``{preset, encoder (config fields), attn_impl, gradient_checkpointing, loss: {final_weight, mid_weight}}``.
        optim: ``{lr, weight_decay, betas, eps, grad_clip, accumulate_grad_batches,
            schedule: {name, ...schedule arguments}}`` (see :mod:`granite_train.training.schedules`).
        total_steps: optimizer steps of the run (the LR schedule's length).
        seed: base seed of the dropout draws.
        val_normalizer: text normalizer of the validation CER/WER.
        fault_injection: test hook: ``{"nan_loss_at_steps": [..]}`` makes those steps' loss NaN.
    """

    def __init__(
        self,
        model: dict[str, Any],
        optim: dict[str, Any],
        total_steps: int,
        seed: int = 0,
        val_normalizer: str = "basic",
        fault_injection: dict[str, Any] | None = None,
    ):
        super().__init__()
        self.save_hyperparameters()
        self.automatic_optimization = False
        config = encoder_config(model["preset"], **(model.get("encoder") or {}))
        self.encoder = CTCEncoder(
            config,
            attn_impl=model.get("attn_impl", "sdpa"),
            gradient_checkpointing=bool(model.get("gradient_checkpointing", False)),
        )
        loss_cfg = model.get("loss") or {}
        self.loss_fn = SelfConditionedCTCLoss(
            final_weight=loss_cfg.get("final_weight", 0.8), mid_weight=loss_cfg.get("mid_weight", 0.2)
        )
        self.vocab = CharVocab()
        self.optim_cfg = dict(optim)
        self.accumulate = int(self.optim_cfg.get("accumulate_grad_batches", 1))
        if self.accumulate < 1:
            raise ValueError("optim.accumulate_grad_batches must be >= 1")
        self.total_steps = int(total_steps)
        self.seed = int(seed)
        self.val_normalizer = val_normalizer
        self.nan_steps = set((fault_injection or {}).get("nan_loss_at_steps", []))
        # Run counters: saved in checkpoints so a resumed run reports what an uninterrupted one would.
        self.counters: Counter[str] = Counter()
        self._micro = 0  # micro-batches accumulated since the last optimizer step
        self._window = {"t0": None, "audio_s": 0.0}
        self._val: dict[str, list[str]] = {"refs": [], "hyps": []}
        self.last_batch_ids: list[str] | None = None
        self.last_batch_step = 0

    # ------------------------------------------------------------------------------------------
    # optimizer
    # ------------------------------------------------------------------------------------------
    def configure_optimizers(self):
        cfg = self.optim_cfg
        decay, no_decay = [], []
        for param in self.encoder.parameters():
            # biases and norm scales are not decayed (standard AdamW practice)
            (no_decay if param.ndim < 2 else decay).append(param)
        groups = [
            {"params": decay, "weight_decay": float(cfg.get("weight_decay", 0.01))},
            {"params": no_decay, "weight_decay": 0.0},
        ]
        optimizer = torch.optim.AdamW(
            groups,
            lr=float(cfg["lr"]),
            betas=tuple(cfg.get("betas", (0.9, 0.98))),
            eps=float(cfg.get("eps", 1e-8)),
        )
        schedule_cfg = dict(cfg.get("schedule") or {"name": "constant"})
        schedule = build_schedule(schedule_cfg.pop("name"), self.total_steps, float(cfg["lr"]), **schedule_cfg)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # ------------------------------------------------------------------------------------------
    # training
    # ------------------------------------------------------------------------------------------
    @contextmanager
    def _dropout_rng(self):
        key = f"{self.seed}/{self.global_rank}/{self.global_step}/{self._micro}".encode()
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices, device_type=self.device.type):
            torch.manual_seed(zlib.crc32(key))
            yield

    def training_step(self, dataloader_iter: Iterator) -> None:
        batch, _, _ = next(dataloader_iter)  # StopIteration ends the epoch (finite data)
        batch = batch.to(self.device)
        self.last_batch_ids, self.last_batch_step = batch.ids, self.global_step  # for SampleLog
        if self._window["t0"] is None:
            self._window["t0"] = time.perf_counter()
        with self._dropout_rng():
            out = self.encoder(batch.features, batch.feature_lengths)
        loss_out = self.loss_fn(out.logits, out.lengths, batch.targets, batch.target_lengths, out.mid_logits)
        loss = loss_out.loss
        if self.global_step in self.nan_steps and self._micro == 0:
            self.nan_steps.discard(self.global_step)  # once: the retried step must succeed
            loss = loss * float("nan")
        self.manual_backward(loss / self.accumulate)

        self._micro += 1
        audio_s = float(batch.waveform_lengths.sum()) / 16000.0
        self._window["audio_s"] += audio_s
        self.counters["utterances"] += len(batch)
        self.counters["audio_seconds"] += audio_s
        self.counters["ctc_dropped_utterances"] += loss_out.num_dropped
        for reason, n in batch.skipped.items():
            self.counters[f"skipped/{reason}"] += n
        for source in batch.sources:  # what the mixture really served, per source
            self.counters[f"seen/{source}"] += 1
        loss_ok = torch.isfinite(loss.detach()).float()
        self._loss_ok = loss_ok if self._micro == 1 else torch.minimum(self._loss_ok, loss_ok)

        bsz = len(batch)
        self.log("train/loss", loss.detach(), prog_bar=True, batch_size=bsz)
        self.log("train/ctc_final", loss_out.final_loss.detach(), batch_size=bsz)
        if loss_out.mid_loss is not None:
            self.log("train/ctc_mid", loss_out.mid_loss.detach(), batch_size=bsz)
        self.log("train/batch_utts", float(bsz), batch_size=bsz)
        self.log("train/padding", batch.padding_ratio, batch_size=bsz)
        if self._micro < self.accumulate:
            return
        self._optimizer_step(bsz)

    def _optimizer_step(self, bsz: int) -> None:
        self._micro = 0
        optimizer = self.optimizers()
        scheduler = self.lr_schedulers()
        clip = self.optim_cfg.get("grad_clip")
        params = [p for p in self.parameters() if p.grad is not None]
        max_norm = float(clip) if clip else math.inf
        grad_norm = torch.nn.utils.clip_grad_norm_(params, max_norm) if params else torch.zeros(())
        # every rank must take the same decision: the gradients are already all-reduced, the
        # per-rank loss flags are reduced here
        loss_ok = self.trainer.strategy.reduce(self._loss_ok.to(self.device), reduce_op="min")
        if bool(loss_ok) and bool(torch.isfinite(grad_norm)):
            optimizer.step()
            scheduler.step()
        else:
            self.counters["nonfinite_steps"] += 1
            log.warning(
                "non-finite loss or gradient at step %d: optimizer step skipped (%d so far)",
                self.global_step,
                self.counters["nonfinite_steps"],
            )
        optimizer.zero_grad(set_to_none=True)

        elapsed = time.perf_counter() - self._window["t0"]
        self._window = {"t0": time.perf_counter(), "audio_s": 0.0} if elapsed > 0 else self._window
        self.log("train/grad_norm", grad_norm.float(), batch_size=bsz)
        self.log("train/lr", scheduler.get_last_lr()[0], prog_bar=True, batch_size=bsz)
        self.log("train/nonfinite_steps", float(self.counters["nonfinite_steps"]), batch_size=bsz)
        self.log("train/ctc_dropped", float(self.counters["ctc_dropped_utterances"]), batch_size=bsz)
        self.log("train/audio_hours", self.counters["audio_seconds"] / 3600.0, batch_size=bsz)
        for key, value in self.counters.items():
            if key.startswith(("seen/", "skipped/")):
                self.log(f"data/{key}", float(value), batch_size=bsz)

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
        scores = error_rates(refs, hyps, normalizer=self.val_normalizer)
        if scores["cer"] is not None:
            self.log("val/cer", scores["cer"], prog_bar=True, rank_zero_only=True)
        if scores["wer"] is not None:
            self.log("val/wer", scores["wer"], rank_zero_only=True)
        log.info("step %d: val CER %.4f WER %.4f on %d utterances (e.g. %r -> %r)",
                 self.global_step, scores["cer"] or 0, scores["wer"] or 0, len(refs), refs[0], hyps[0])
        self._log_mixture()

    def _log_mixture(self) -> None:
        seen = {k[5:]: v for k, v in self.counters.items() if k.startswith("seen/")}
        total = sum(seen.values())
        if total and self.trainer.is_global_zero:
            shares = ", ".join(f"{name} {n} ({100 * n / total:.1f}%)" for name, n in sorted(seen.items()))
            log.info("examples seen per source on rank 0 so far: %s", shares)

    # ------------------------------------------------------------------------------------------
    # checkpoints
    # ------------------------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["encoder_config"] = self.encoder.config.to_dict()
        checkpoint[CHECKPOINT_KEY] = {"counters": dict(self.counters), "micro": self._micro}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get(CHECKPOINT_KEY) or {}
        self.counters = Counter(state.get("counters", {}))
        self._micro = int(state.get("micro", 0))
