"""Seeded data augmentation: SpecAugment on features, additive noise and speed perturbation on audio.

Every augmentation takes ``generator``: a ``torch.Generator``, an int seed, or ``None`` for torch's
global RNG. The same generator state gives the same output, whatever device the data is on: random
numbers are drawn on the generator's device (CPU unless given otherwise) and then moved.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from granite_train.audio.resample import resample

__all__ = ["AdditiveNoise", "SpecAugment", "SpeedPerturb", "mix_at_snr"]

GeneratorLike = torch.Generator | int | None


def _as_generator(generator: GeneratorLike) -> torch.Generator | None:
    if isinstance(generator, int):
        return torch.Generator().manual_seed(generator)
    return generator


def _rand(*size: int, generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    """Uniform [0, 1) draws from ``generator`` moved to ``device``."""
    source = generator.device if generator is not None else torch.device("cpu")
    return torch.rand(size, generator=generator, device=source).to(device)


def _spans(
    starts_u: torch.Tensor, widths_u: torch.Tensor, max_width: torch.Tensor, size: torch.Tensor, n: int
):
    """Random spans ``[start, start + width)`` inside ``[0, size)``, as a mask over ``[0, n)``.

    ``starts_u``/``widths_u`` ``(B, K)`` are uniform draws, ``max_width``/``size`` ``(B, 1)`` bounds.
    Returns ``(B, n)``: True where any of the K spans covers the position.
    """
    width = (widths_u * (max_width + 1)).floor().clamp(max=size)  # (B, K), in [0, max_width]
    start = (starts_u * (size - width + 1)).floor()  # (B, K), span stays inside [0, size)
    pos = torch.arange(n, device=starts_u.device)  # (n,)
    inside = (pos >= start.unsqueeze(-1)) & (pos < (start + width).unsqueeze(-1))  # (B, K, n)
    return inside.any(dim=1)


class SpecAugment(nn.Module):
    """Frequency and time masking (Park et al., 2019) on padded, stacked log-mel features.

    Frequency masks cover mel bins: with stacked features ``(B, F, stack * n_mels)`` the same bins are
    masked in every stacked frame. Time masks cover stacked frames. Masks stay inside each
    utterance's valid frames; padding is left as it is. The module applies whenever it is called;
    call it from the training path only.
    """

    def __init__(
        self,
        freq_masks: int = 2,
        freq_width: int = 27,
        time_masks: int = 10,
        time_width: int | float = 0.05,
        p: float = 0.9,
        n_mels: int = 80,
        mask_value: float = 0.0,
    ) -> None:
        """Args:
        freq_masks: frequency masks per utterance.
        freq_width: largest frequency mask, in mel bins (each width is uniform in [0, freq_width]).
        time_masks: time masks per utterance.
        time_width: largest time mask: an int is a number of frames, a float a fraction of the
            utterance's valid frames.
        p: probability that an utterance is augmented at all.
        n_mels: mel bins per (unstacked) frame; the feature dim must be a multiple of it.
        mask_value: value written into masked cells.
        """
        super().__init__()
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"p must be in [0, 1], got {p}")
        if isinstance(time_width, float) and not 0.0 <= time_width <= 1.0:
            raise ValueError(f"a fractional time_width must be in [0, 1], got {time_width}")
        if min(freq_masks, freq_width, time_masks, time_width) < 0:
            raise ValueError("mask counts and widths must be non-negative")
        self.freq_masks = freq_masks
        self.freq_width = freq_width
        self.time_masks = time_masks
        self.time_width = time_width
        self.p = p
        self.n_mels = n_mels
        self.mask_value = mask_value

    def forward(
        self, features: torch.Tensor, lengths: torch.Tensor | None = None, generator: GeneratorLike = None
    ) -> torch.Tensor:
        """Mask ``features`` ``(B, F, C)``; ``lengths`` ``(B,)`` valid frames (all ``F`` if None).

        Returns a new ``(B, F, C)`` tensor; the input is not modified.
        """
        batch, n_frames, dim = features.shape
        if dim % self.n_mels:
            raise ValueError(f"feature dim {dim} is not a multiple of n_mels={self.n_mels}")
        device = features.device
        g = _as_generator(generator)
        if lengths is None:
            lengths = torch.full((batch,), n_frames, device=device)
        size_t = lengths.to(device=device, dtype=torch.float32).unsqueeze(1)  # (B, 1)

        # Draw everything up front in a fixed order, so the result depends only on the generator.
        apply = _rand(batch, generator=g, device=device) < self.p  # (B,)
        f_u = _rand(2, batch, self.freq_masks, generator=g, device=device)
        t_u = _rand(2, batch, self.time_masks, generator=g, device=device)

        size_f = torch.full_like(size_t, self.n_mels)
        freq = _spans(
            f_u[0], f_u[1], torch.full_like(size_t, self.freq_width), size_f, self.n_mels
        )  # (B, n_mels)
        if isinstance(self.time_width, float):
            max_t = (self.time_width * size_t).floor()
        else:
            max_t = torch.full_like(size_t, self.time_width)
        time = _spans(t_u[0], t_u[1], max_t, size_t, n_frames)  # (B, F)

        valid = torch.arange(n_frames, device=device) < size_t  # (B, F)
        freq = freq.repeat(1, dim // self.n_mels)  # (B, n_mels) -> (B, C): same bins in each stacked frame
        mask = (time.unsqueeze(-1) | freq.unsqueeze(1)) & (valid & apply.unsqueeze(1)).unsqueeze(
            -1
        )  # (B, F, C)
        return features.masked_fill(mask, self.mask_value)


def mix_at_snr(
    signal: torch.Tensor, noise: torch.Tensor, snr_db: torch.Tensor, lengths: torch.Tensor | None = None
) -> torch.Tensor:
    """Add ``noise`` to ``signal`` scaled to a given signal-to-noise ratio.

    Args:
        signal: clean audio ``(B, T)``.
        noise: noise ``(B, T)``.
        snr_db: target SNR per row ``(B,)``; a NaN leaves that row unchanged.
        lengths: valid samples per row ``(B,)``; powers are measured, and noise added, only there.

    Returns:
        ``(B, T)`` with ``10 * log10(P(signal) / P(added noise)) == snr_db`` over each valid span.
        Rows whose signal or noise is silent are returned unchanged (the SNR is undefined).
    """
    batch, n = signal.shape
    if lengths is None:
        valid = torch.ones_like(signal, dtype=torch.bool)
    else:
        valid = torch.arange(n, device=signal.device) < lengths.to(signal.device).unsqueeze(1)  # (B, T)
    noise = noise * valid
    p_signal = (signal * valid).square().sum(-1)  # (B,); the common 1/n cancels in the ratio
    p_noise = noise.square().sum(-1)  # (B,)
    scale = torch.sqrt(p_signal / (p_noise * 10.0 ** (snr_db.to(signal) / 10)))  # (B,)
    scale = torch.nan_to_num(scale, nan=0.0, posinf=0.0)  # skipped rows, silent signal or noise
    return signal + scale.unsqueeze(1) * noise


def _pink(white: torch.Tensor) -> torch.Tensor:
    """Shape white noise ``(..., T)`` to a 1/f power spectrum (DC removed)."""
    spectrum = torch.fft.rfft(white)  # (..., T // 2 + 1)
    freqs = torch.arange(spectrum.shape[-1], device=white.device, dtype=white.dtype)
    gain = torch.where(freqs > 0, freqs.clamp(min=1).rsqrt(), torch.zeros_like(freqs))  # amplitude ~ f^-1/2
    return torch.fft.irfft(spectrum * gain, n=white.shape[-1])


class AdditiveNoise(nn.Module):
    """Add noise at a random SNR, uniform in ``snr_db_range`` dB, to a random subset of utterances.

    Noise is generated (white or pink, chosen per utterance) or, when ``noise_source`` is given, cut
    from one of those waveforms at a random offset (looped when shorter than the utterance). Noise
    waveforms must be at the sample rate of the audio.
    """

    COLORS = ("white", "pink")

    def __init__(
        self,
        snr_db_range: tuple[float, float] = (-5.0, 20.0),
        p: float = 0.25,
        noise_source: Sequence[torch.Tensor] | None = None,
    ) -> None:
        """Args:
        snr_db_range: (low, high) SNR in dB.
        p: probability that an utterance gets noise.
        noise_source: 1-D noise waveforms; None generates white/pink noise.
        """
        super().__init__()
        low, high = snr_db_range
        if low > high:
            raise ValueError(f"snr_db_range must be (low, high), got {snr_db_range}")
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"p must be in [0, 1], got {p}")
        if noise_source is not None:
            if len(noise_source) == 0 or any(x.ndim != 1 or x.numel() == 0 for x in noise_source):
                raise ValueError("noise_source must be a non-empty sequence of non-empty 1-D waveforms")
        self.snr_db_range = (float(low), float(high))
        self.p = p
        self.noise_source = list(noise_source) if noise_source is not None else None

    def sample_snr_db(self, batch: int, generator: GeneratorLike = None) -> torch.Tensor:
        """Draw per-utterance SNRs ``(B,)`` in dB, NaN where no noise is added.

        ``forward`` makes exactly this draw first, so with equal generator states it uses these SNRs.
        """
        g = _as_generator(generator)
        apply = _rand(batch, generator=g, device=torch.device("cpu")) < self.p
        low, high = self.snr_db_range
        snr = low + (high - low) * _rand(batch, generator=g, device=torch.device("cpu"))
        return snr.masked_fill(~apply, float("nan"))

    def _noise_like(
        self, waves: torch.Tensor, lengths: torch.Tensor, g: torch.Generator | None
    ) -> torch.Tensor:
        """Noise ``(B, T)`` for every row (rows that end up unused still consume draws: reproducible)."""
        batch, n = waves.shape
        if self.noise_source is None:
            use_pink = _rand(batch, generator=g, device=waves.device) < 0.5  # (B,)
            source = g.device if g is not None else torch.device("cpu")
            white = torch.randn(batch, n, generator=g, device=source).to(waves)  # (B, T)
            return torch.where(use_pink.unsqueeze(1), _pink(white), white)
        noise = torch.zeros_like(waves)
        picks = _rand(batch, 2, generator=g, device=torch.device("cpu"))
        for b, (pick_u, offset_u) in enumerate(picks.tolist()):
            clip = self.noise_source[int(pick_u * len(self.noise_source))].to(waves)
            need = int(lengths[b])
            if clip.numel() >= need:
                offset = int(offset_u * (clip.numel() - need + 1))
                noise[b, :need] = clip[offset : offset + need]
            else:  # loop the clip, starting anywhere in it
                looped = clip.repeat(math.ceil(need / clip.numel()) + 1)
                offset = int(offset_u * clip.numel())
                noise[b, :need] = looped[offset : offset + need]
        return noise

    def forward(
        self, waves: torch.Tensor, lengths: torch.Tensor | None = None, generator: GeneratorLike = None
    ) -> torch.Tensor:
        """Add noise to ``waves`` ``(B, T)`` or ``(T,)``; ``lengths`` ``(B,)`` valid samples. Same shape out."""
        squeeze = waves.ndim == 1
        if squeeze:
            waves = waves.unsqueeze(0)
        batch, n = waves.shape
        if lengths is None:
            lengths = torch.full((batch,), n, dtype=torch.long)
        g = _as_generator(generator)
        snr_db = self.sample_snr_db(batch, g)  # (B,), drawn first: see sample_snr_db
        if bool(snr_db.isnan().all()):  # nothing to add: skip generating noise (most calls when p is small)
            return waves.squeeze(0) if squeeze else waves
        noise = self._noise_like(waves, lengths.cpu(), g)  # (B, T)
        out = mix_at_snr(waves, noise, snr_db.to(waves.device), lengths)
        return out.squeeze(0) if squeeze else out


class SpeedPerturb(nn.Module):
    """Speed perturbation by resampling (tempo and pitch both change, as with ``sox speed``).

    A factor ``f`` plays the audio ``f`` times as fast: ``T`` samples become ``ceil(T / f)``. The
    audio is treated as if recorded at ``sr * f`` and resampled to ``sr``, with cached kernels.
    """

    def __init__(self, factors: Sequence[float] = (0.9, 1.0, 1.1), sr: int = 16000) -> None:
        """Args:
        factors: speed factors drawn uniformly; ``sr * factor`` is rounded to whole Hz.
        sr: sample rate of the audio.
        """
        super().__init__()
        if not factors or any(f <= 0 for f in factors):
            raise ValueError(f"factors must be a non-empty sequence of positive numbers, got {factors}")
        self.factors = tuple(float(f) for f in factors)
        self.sr = sr

    def sample_factor(self, generator: GeneratorLike = None) -> float:
        """Draw one factor; ``forward`` makes exactly this draw."""
        u = _rand(1, generator=_as_generator(generator), device=torch.device("cpu")).item()
        return self.factors[int(u * len(self.factors))]

    def perturb(self, wave: torch.Tensor, factor: float) -> torch.Tensor:
        """``(..., T) -> (..., ceil(T * sr / round(sr * factor)))``."""
        return resample(wave, round(self.sr * factor), self.sr)

    def forward(self, wave: torch.Tensor, generator: GeneratorLike = None) -> torch.Tensor:
        """Perturb one utterance (or a batch sharing one factor) ``(..., T)``."""
        return self.perturb(wave, self.sample_factor(generator))
