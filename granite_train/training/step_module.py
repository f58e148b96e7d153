"""What every stage's LightningModule shares: manual optimization with non-finite step skipping.

Optimization is manual so that a step can be skipped cleanly: gradients are clipped, and when the
loss (on any rank) or the gradient norm is not finite the optimizer and scheduler do not step and
``nonfinite_steps`` is counted. A skipped step is not a step: ``max_steps`` counts applied updates.

``training_step`` takes the ``dataloader_iter`` and fetches its own batch. Lightning's default
fetcher reads one batch ahead, so a checkpoint would record that batch as consumed and a resumed run
would skip it; fetching inside the step keeps the loader state of a checkpoint exact.

Dropout draws from a generator seeded by ``(seed, rank, optimizer step, micro-batch)``, so a resumed
run makes the same draws as an uninterrupted one whatever else touched the global RNG.

Subclasses implement :meth:`compute_loss`; run counters (utterances, audio seconds, skipped
records per reason, examples per source, non-finite steps, and the subclass's own) are saved in
checkpoints, so a resumed run reports what an uninterrupted one would. With several ranks the
checkpoint (written by rank 0) holds every rank's counters and loader state, and each rank takes
back its own: its share of the stream continues where it was.
"""

from __future__ import annotations

import logging
import math
import zlib
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import lightning as L
import torch

from granite_train.models.checkpoints import TRAINING_STATE_KEY
from granite_train.training.config import OptimConfig
from granite_train.training.schedules import build_schedule
from granite_train.training.sharding import full_tensor
from granite_train.typed_config import from_mapping, to_plain

log = logging.getLogger(__name__)

CHECKPOINT_KEY = TRAINING_STATE_KEY


def counter_shares(counters: Mapping[str, float], prefix: str) -> str:
    """``name n (share%)`` for every counter under ``prefix`` (``seen/``: sources, ``task/``: tasks)."""
    counts = {k[len(prefix) :]: v for k, v in counters.items() if k.startswith(prefix)}
    total = sum(counts.values())
    if not total:
        return ""
    return ", ".join(f"{name} {int(n)} ({100 * n / total:.1f}%)" for name, n in sorted(counts.items()))


class StepSkippingModule(L.LightningModule):
    """Base of the stage modules (see the module docstring).

    Args:
        optim: :class:`~granite_train.training.config.OptimConfig` (or its mapping form).
        total_steps: optimizer steps of the run (the LR schedule's length).
        seed: base seed of the dropout draws.
        fault_injection: test hook: ``{"nan_loss_at_steps": [..]}`` makes those steps' loss NaN,
            ``{"inf_grad_at_steps": [..]}`` one gradient infinite after backward (a finite loss),
            ``{"aux_dropped_at_steps": [..]}`` stage 2's audio-CTC head sees every utterance of
            those steps as too short (no alignable target: the head's gradient would be missing),
            ``{"ranks": [..]}`` on those ranks only (default: every rank).
    """

    def __init__(
        self,
        optim: OptimConfig | Mapping[str, Any],
        total_steps: int,
        seed: int = 0,
        fault_injection: dict[str, Any] | None = None,
    ):
        super().__init__()
        self.automatic_optimization = False
        self.optim_cfg = from_mapping(OptimConfig, optim, "optim")
        self.accumulate = int(self.optim_cfg.accumulate_grad_batches)
        self.total_steps = int(total_steps)
        self.seed = int(seed)
        self.fault_injection = fault_injection
        self.nan_steps = set((fault_injection or {}).get("nan_loss_at_steps", []))
        self.inf_grad_steps = set((fault_injection or {}).get("inf_grad_at_steps", []))
        self.aux_dropped_steps = set((fault_injection or {}).get("aux_dropped_at_steps", []))
        self.fault_ranks = (fault_injection or {}).get("ranks")
        self.counters: Counter[str] = Counter()
        self._micro = 0  # micro-batches accumulated since the last optimizer step
        self.last_batch_ids: list[str] | None = None
        self.last_batch_step = 0

    # ------------------------------------------------------------------------------------------
    # what a stage defines
    # ------------------------------------------------------------------------------------------
    def compute_loss(self, batch) -> tuple[torch.Tensor, dict[str, float | torch.Tensor]]:
        """The loss of one training micro-batch and extra values to log (``train/<name>``)."""
        raise NotImplementedError  # abstract: each stage's module implements it

    def save_config(self, model: Any, **extra: Any) -> None:
        """Record the module's arguments as Lightning hyperparameters, in plain data only: checkpoints
        are read back with ``torch.load(weights_only=True)``, which refuses dataclasses."""
        self.save_hyperparameters(
            {
                "model": to_plain(model),
                "optim": to_plain(self.optim_cfg),
                "total_steps": self.total_steps,
                "seed": self.seed,
                "fault_injection": self.fault_injection,
                **extra,
            }
        )

    def trainable_parameters(self) -> Iterable[tuple[str, torch.nn.Parameter]]:
        return ((n, p) for n, p in self.named_parameters() if p.requires_grad)

    # ------------------------------------------------------------------------------------------
    # optimizer
    # ------------------------------------------------------------------------------------------
    def configure_optimizers(self):
        cfg = self.optim_cfg
        weight_decay = float(cfg.weight_decay)
        # Per-module settings, keyed by a parameter-name substring (the first matching pattern wins):
        # optim.lr_scale multiplies the LR (a new projector learns faster than the pretrained LLM it
        # feeds); optim.start_step holds a part at LR 0 for its first steps (the projector learns to
        # write what the LLM reads before the LLM adapts to it, as LLaVA's alignment stage does).
        lr_scale = {str(k): float(v) for k, v in (cfg.lr_scale or {}).items()}
        start_step = {str(k): int(v) for k, v in (cfg.start_step or {}).items()}
        bad = {k: v for k, v in lr_scale.items() if not v > 0}
        if bad:
            raise ValueError(f"optim.lr_scale factors must be > 0, got {bad}")
        bad = {k: v for k, v in start_step.items() if v < 0}
        if bad:
            raise ValueError(f"optim.start_step values must be >= 0, got {bad}")
        matched = {("lr_scale", k): 0 for k in lr_scale} | {("start_step", k): 0 for k in start_step}

        def first_match(name: str, option: str, table: dict, default):
            for pattern, value in table.items():
                if pattern in name:
                    matched[(option, pattern)] += 1
                    return value
            return default

        groups: dict[tuple[float, float, int], list[torch.nn.Parameter]] = {}
        for name, param in self.trainable_parameters():
            # biases, norm scales and the projector's learned queries are not decayed
            wd = 0.0 if param.ndim < 2 or name.endswith(".query") else weight_decay
            key = (
                wd,
                first_match(name, "lr_scale", lr_scale, 1.0),
                first_match(name, "start_step", start_step, 0),
            )
            groups.setdefault(key, []).append(param)
        if not groups:
            raise ValueError("nothing to train: every parameter is frozen")
        unmatched = [f"{option}.{k}" for (option, k), n in matched.items() if n == 0]
        if unmatched:  # a recipe may name a part that this run does not train (e.g. no CTC head)
            log.warning("optim patterns that match no trainable parameter (ignored): %s", unmatched)
        lr = float(cfg.lr)
        keys = list(groups)
        fused = cfg.fused
        if fused == "auto":  # one kernel for all parameters: ~3x faster than the per-tensor loop
            fused = all(p.device.type in ("cpu", "cuda") for g in groups.values() for p in g)
        optimizer = torch.optim.AdamW(
            [{"params": groups[k], "weight_decay": k[0], "lr": lr * k[1]} for k in keys],
            lr=lr,
            betas=tuple(cfg.betas),
            eps=float(cfg.eps),
            fused=bool(fused),
        )
        schedule = build_schedule(cfg.schedule.name, self.total_steps, lr, **cfg.schedule.arguments())
        self._schedule = schedule  # the base LR's, logged as train/lr

        def delayed(start: int):
            return schedule if start == 0 else (lambda step: schedule(step) if step >= start else 0.0)

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, [delayed(k[2]) for k in keys])
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # ------------------------------------------------------------------------------------------
    # training
    # ------------------------------------------------------------------------------------------
    @contextmanager
    def dropout_rng(self):
        key = f"{self.seed}/{self.global_rank}/{self.global_step}/{self._micro}".encode()
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices, device_type=self.device.type):
            torch.manual_seed(zlib.crc32(key))
            yield

    def training_step(self, dataloader_iter: Iterator) -> None:
        batch, _, _ = next(dataloader_iter)  # StopIteration ends the epoch (finite data)
        batch = batch.to(self.device)
        self.last_batch_ids, self.last_batch_step = batch.ids, self.global_step  # for SampleLog
        with self.dropout_rng():
            loss, extra = self.compute_loss(batch)
        faulty_rank = self.fault_ranks is None or self.global_rank in self.fault_ranks
        if self.global_step in self.nan_steps and self._micro == 0:
            self.nan_steps.discard(self.global_step)  # once: the retried step must succeed
            if faulty_rank:
                loss = loss * float("nan")
        self.manual_backward(loss / self.accumulate)
        if self.global_step in self.inf_grad_steps and self._micro + 1 == self.accumulate:
            self.inf_grad_steps.discard(self.global_step)
            if faulty_rank:  # after DDP's all-reduce: this rank's gradients alone turn non-finite
                param = next(p for p in self.parameters() if p.grad is not None)
                param.grad.view(-1)[0] = float("inf")

        self._micro += 1
        self.counters["utterances"] += len(batch)
        self.counters["audio_seconds"] += float(batch.waveform_lengths.sum()) / 16000.0
        for reason, n in batch.skipped.items():
            self.counters[f"skipped/{reason}"] += n
        for key, n in getattr(batch, "skipped_by_source", {}).items():  # "source/reason"
            self.counters[f"skipped_in/{key}"] += n
        for source in batch.sources:  # what the mixture really served, per source
            self.counters[f"seen/{source}"] += 1
        for task in getattr(batch, "task_labels", None) or ():  # and per task (stage 2)
            self.counters[f"task/{task}"] += 1
        # waveform augmentations per utterance, counted by name (augment/reverb, augment/noise, ...)
        for applied in getattr(batch, "augmentations", None) or ():
            for name in applied:
                self.counters[f"augment/{name.split('(')[0]}"] += 1
        loss_ok = torch.isfinite(loss.detach()).float()
        self._loss_ok = loss_ok if self._micro == 1 else torch.minimum(self._loss_ok, loss_ok)

        bsz = len(batch)
        self.log("train/loss", loss.detach(), prog_bar=True, batch_size=bsz)
        for name, value in extra.items():
            self.log(f"train/{name}", value, batch_size=bsz)
        self.log("train/batch_utts", float(bsz), batch_size=bsz)
        self.log("train/padding", batch.padding_ratio, batch_size=bsz)
        if self._micro < self.accumulate:
            return
        self._optimizer_step(bsz)

    def _optimizer_step(self, bsz: int) -> None:
        self._micro = 0
        optimizer = self.optimizers()
        scheduler = self.lr_schedulers()
        clip = self.optim_cfg.grad_clip
        params = [p for p in self.parameters() if p.grad is not None]
        max_norm = float(clip) if clip else math.inf
        grad_norm = torch.nn.utils.clip_grad_norm_(params, max_norm) if params else torch.zeros(())
        grad_norm = full_tensor(grad_norm)  # FSDP2: a DTensor over the ranks' shards
        # every rank must take the same decision: the per-rank loss and gradient-norm flags are
        # reduced here (gradients are all-reduced already, but a rank's own can still go bad)
        local_ok = torch.minimum(
            self._loss_ok.to(self.device), torch.isfinite(grad_norm).float().to(self.device)
        )
        if bool(self.trainer.strategy.reduce(local_ok, reduce_op="min")):
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

        self.log("train/grad_norm", grad_norm.float(), batch_size=bsz)
        # optim.lr on its schedule; parts with an lr_scale / start_step follow it by their factor
        self.log(
            "train/lr",
            float(self.optim_cfg.lr) * self._schedule(scheduler.last_epoch),
            prog_bar=True,
            batch_size=bsz,
        )
        self.log("train/nonfinite_steps", float(self.counters["nonfinite_steps"]), batch_size=bsz)
        self.log("train/audio_hours", self.counters["audio_seconds"] / 3600.0, batch_size=bsz)
        self.log_counters(bsz)

    def log_error_rates(
        self,
        refs: list[str],
        hyps: list[str],
        normalizer: str,
        language: str = "en",
        primary: str = "cer",
        suffix: str = "",
    ) -> dict[str, Any]:
        """Log validation CER and WER (``primary`` on the progress bar) and one example; return them.

        ``suffix`` names a subset (``/de``: ``val/cer/de``), which stays off the progress bar.
        """
        from granite_train.eval.metrics import error_rates

        scores = error_rates(refs, hyps, normalizer=normalizer, language=language)
        order = ("cer", "wer") if primary == "cer" else ("wer", "cer")
        for key in order:
            if scores[key] is not None:
                bar = key == primary and not suffix
                self.log(f"val/{key}{suffix}", scores[key], prog_bar=bar, rank_zero_only=True)
        log.info(
            "step %d: val%s %s %.4f %s %.4f on %d utterances (e.g. %r -> %r)",
            self.global_step,
            suffix,
            order[0].upper(),
            scores[order[0]] or 0,
            order[1].upper(),
            scores[order[1]] or 0,
            len(refs),
            refs[0],
            hyps[0],
        )
        return scores

    def log_counters(self, bsz: int) -> None:
        for key, value in self.counters.items():
            if key.startswith(("seen/", "task/", "skipped/", "skipped_in/", "encoder_cache/", "augment/")):
                self.log(f"data/{key}", float(value), batch_size=bsz)

    def log_mixture(self) -> None:
        if self.trainer.is_global_zero:
            for what, prefix in (("source", "seen/"), ("task", "task/")):
                if shares := counter_shares(self.counters, prefix):
                    log.info("examples seen per %s on rank 0 so far: %s", what, shares)

    # ------------------------------------------------------------------------------------------
    # checkpoints
    # ------------------------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[CHECKPOINT_KEY] = {"counters": dict(self.counters), "micro": self._micro}
        # Lightning writes rank 0's checkpoint only, with rank 0's loader state: every rank's own
        # (its share of the stream) and counters go in as well, for each rank to take back its own
        ranks = _gather_to_rank0({"counters": dict(self.counters), "loader": _loader_state(checkpoint)})
        if ranks is not None:
            checkpoint[CHECKPOINT_KEY]["ranks"] = ranks

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get(CHECKPOINT_KEY) or {}
        ranks = state.get("ranks") or []
        own = ranks[self.global_rank] if self.global_rank < len(ranks) else {}
        self.counters = Counter(own.get("counters", state.get("counters", {})))
        self._micro = int(state.get("micro", 0))
        if own.get("loader") is not None and _loader_state(checkpoint) is not None:
            # restored by the fit loop after this hook: this rank's share, not rank 0's
            checkpoint["loops"]["fit_loop"]["state_dict"]["combined_loader"] = own["loader"]


def _loader_state(checkpoint: Mapping[str, Any]) -> Any:
    """The training loader state Lightning put in ``checkpoint`` (None when there is none)."""
    fit_loop = (checkpoint.get("loops") or {}).get("fit_loop") or {}
    return (fit_loop.get("state_dict") or {}).get("combined_loader")


def _gather_to_rank0(obj: Any) -> list[Any] | None:
    """Every rank's ``obj`` (by rank) on rank 0, None elsewhere and in a single process."""
    dist = torch.distributed
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return None
    gathered = [None] * dist.get_world_size() if dist.get_rank() == 0 else None
    dist.gather_object(obj, gathered, dst=0)
    return gathered


__all__ = ["CHECKPOINT_KEY", "StepSkippingModule", "counter_shares"]
