"""Band-limited resampling with cached torchaudio kernels."""

from __future__ import annotations

import functools

import torch
import torchaudio

__all__ = ["resample"]


@functools.lru_cache(maxsize=64)
def _resampler(
    orig_sr: int, new_sr: int, dtype: torch.dtype, device: torch.device
) -> torchaudio.transforms.Resample:
    """Build (once) the windowed-sinc resampler for one rate pair, dtype and device.

    Building the kernel costs far more than applying it to a short clip, and a data pipeline sees only
    a handful of distinct rates, so the modules are kept for the life of the process.
    """
    return torchaudio.transforms.Resample(orig_sr, new_sr, dtype=dtype).to(device)


def resample(wave: torch.Tensor, orig_sr: int, new_sr: int) -> torch.Tensor:
    """Resample ``wave`` from ``orig_sr`` to ``new_sr`` along its last axis.

    Args:
        wave: floating-point audio shaped ``(..., T)``.
        orig_sr: sample rate of ``wave`` in Hz.
        new_sr: wanted sample rate in Hz.

    Returns:
        ``(..., ceil(T * new_sr / orig_sr))``, same dtype and device; ``wave`` itself when the rates match.
    """
    if orig_sr <= 0 or new_sr <= 0:
        raise ValueError(f"sample rates must be positive, got {orig_sr} -> {new_sr}")
    if not wave.is_floating_point():
        raise TypeError(f"resample needs a floating-point waveform, got {wave.dtype}")
    if orig_sr == new_sr:
        return wave
    return _resampler(int(orig_sr), int(new_sr), wave.dtype, wave.device)(wave)
