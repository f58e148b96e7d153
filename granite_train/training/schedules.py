"""Learning-rate schedules as ``LambdaLR`` multipliers of the optimizer's peak LR."""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class TriangularSchedule:
    """Linear warm-up from ``start_lr`` to the peak, then linear decay to ``end_lr``.

    The published encoder schedule (RECIPE.md): 5e-5 -> 5e-4 over the first 6 of 20 epochs, then
    down to 5e-6 (``warmup_fraction=0.3``). Beyond ``total_steps`` the LR stays at ``end_lr``.

    Args:
        total_steps: optimizer steps of the whole run.
        peak_lr: the optimizer's LR (the multiplier is 1 at the peak).
        start_lr: LR at step 0.
        end_lr: LR at ``total_steps``.
        warmup_fraction: share of ``total_steps`` spent rising (``warmup_steps`` overrides it).
        warmup_steps: explicit rising steps.
    """

    total_steps: int
    peak_lr: float
    start_lr: float
    end_lr: float
    warmup_fraction: float = 0.3
    warmup_steps: int | None = None

    def __post_init__(self) -> None:
        if self.total_steps < 1:
            raise ValueError(f"total_steps must be >= 1, got {self.total_steps}")
        if not (self.peak_lr > 0 and self.start_lr >= 0 and self.end_lr >= 0):
            raise ValueError("need peak_lr > 0 and start_lr, end_lr >= 0")
        if not 0.0 <= self.warmup_fraction <= 1.0:
            raise ValueError(f"warmup_fraction must be in [0, 1], got {self.warmup_fraction}")

    @property
    def rise(self) -> int:
        steps = (
            self.warmup_steps
            if self.warmup_steps is not None
            else round(self.warmup_fraction * self.total_steps)
        )
        return min(max(int(steps), 0), self.total_steps)

    def lr(self, step: int) -> float:
        rise, total = self.rise, self.total_steps
        if step < rise:
            return self.start_lr + (self.peak_lr - self.start_lr) * step / rise
        if step >= total:
            return self.end_lr
        fall = total - rise
        return self.peak_lr + (self.end_lr - self.peak_lr) * (step - rise) / fall

    def __call__(self, step: int) -> float:
        """Multiplier of the peak LR (what ``torch.optim.lr_scheduler.LambdaLR`` expects)."""
        return self.lr(step) / self.peak_lr


@dataclass(frozen=True)
class WarmupCosineSchedule:
    """Linear warm-up from 0 over ``warmup_steps``, cosine decay to ``end_lr`` at ``total_steps``."""

    total_steps: int
    peak_lr: float
    end_lr: float = 0.0
    warmup_steps: int = 0

    def lr(self, step: int) -> float:
        if step < self.warmup_steps:
            return self.peak_lr * (step + 1) / self.warmup_steps
        span = max(self.total_steps - self.warmup_steps, 1)
        progress = min((step - self.warmup_steps) / span, 1.0)
        return self.end_lr + 0.5 * (self.peak_lr - self.end_lr) * (1 + math.cos(math.pi * progress))

    def __call__(self, step: int) -> float:
        return self.lr(step) / self.peak_lr


SCHEDULE_ARGS = {"start_lr", "end_lr", "warmup_fraction", "warmup_steps"}


def build_schedule(name: str, total_steps: int, peak_lr: float, **kwargs):
    """A schedule by config name: ``triangular``, ``cosine`` or ``constant`` (LR fixed at the peak).

    ``kwargs`` may hold any of :data:`SCHEDULE_ARGS` (so a config can switch ``name`` alone);
    each schedule reads the ones it has and ignores the rest. Other keys are an error.
    """
    unknown = sorted(set(kwargs) - SCHEDULE_ARGS)
    if unknown:
        raise ValueError(f"unknown LR schedule argument(s) {unknown}; known: {sorted(SCHEDULE_ARGS)}")
    if name == "triangular":
        args = {
            k: kwargs[k] for k in ("start_lr", "end_lr", "warmup_fraction", "warmup_steps") if k in kwargs
        }
        return TriangularSchedule(total_steps=total_steps, peak_lr=peak_lr, **args)
    if name == "cosine":
        warmup = kwargs.get("warmup_steps")
        if warmup is None:
            warmup = round(float(kwargs.get("warmup_fraction", 0.0)) * total_steps)
        return WarmupCosineSchedule(
            total_steps, peak_lr, end_lr=kwargs.get("end_lr", 0.0), warmup_steps=int(warmup)
        )
    if name == "constant":
        return ConstantSchedule()
    raise ValueError(f"unknown LR schedule {name!r}; known: triangular, cosine, constant")


@dataclass(frozen=True)
class ConstantSchedule:
    """The optimizer's LR at every step."""

    def __call__(self, step: int) -> float:
        return 1.0
