"""``trainer.precision: auto``: bf16 autocast only where the device computes bf16 natively.

A CPU without AVX512-BF16 or AMX emulates bf16 in software: the tiny stage-1 step takes 5.5 s in
bf16-mixed against 0.40 s in fp32 on a 2-core AVX2 EPYC (README, "Precision"), while a CPU with
AVX512-BF16 runs it 1.4x faster than fp32. So ``auto`` looks at the device the run will use.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

log = logging.getLogger(__name__)

CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_has_native_bf16(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """Whether this CPU has bf16 instructions (AVX512-BF16 or AMX-BF16), from ``/proc/cpuinfo``.

    Elsewhere (no ``/proc/cpuinfo``, e.g. macOS) it answers False: fp32 is the safe choice.
    """
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return False
    flags: set[str] = set()
    for line in text.splitlines():
        if line.startswith("flags"):
            flags.update(line.split(":", 1)[1].split())
    return any(flag in flags for flag in CPU_BF16_FLAGS)


def _uses_cuda(accelerator: str) -> bool:
    if accelerator in ("gpu", "cuda"):
        return True
    return accelerator == "auto" and torch.cuda.is_available()


def resolve_precision(precision: str, accelerator: str = "auto") -> str:
    """The Lightning precision to run: ``precision`` itself, or for ``auto`` ``bf16-mixed`` where
    the device has native bf16 and ``32-true`` elsewhere. The choice is logged."""
    precision = str(precision)
    if precision != "auto":
        return precision
    if _uses_cuda(accelerator):
        native, device = torch.cuda.is_bf16_supported(), f"CUDA ({torch.cuda.get_device_name()})"
    else:
        native, device = cpu_has_native_bf16(), "CPU"
    chosen = "bf16-mixed" if native else "32-true"
    log.info(
        "precision auto: %s on %s (%s)",
        chosen,
        device,
        "native bf16" if native else "no native bf16: bf16 would be emulated, many times slower",
    )
    return chosen


__all__ = ["CPU_BF16_FLAGS", "cpu_has_native_bf16", "resolve_precision"]
