"""Seeded acoustic degradations: pitch shift, procedural reverberation, telephone band and mu-law.

**Where they run: on the fly in training** (the :class:`~granite_train.data.collate.Collator`, in the
loader workers), not when speech is generated. Reasons:

- every pass over the data draws anew (a draw depends on the batch an utterance lands in, which
  shuffling changes from pass to pass), so a small generated set is heard in many rooms, pitches
  and channels instead of one frozen draw per utterance;
- generated corpora stay clean: one corpus serves runs with and without degradations, evaluation,
  and the clean-vs-degraded comparison, and nothing has to be regenerated to change a range;
- it is one config knob (``data.augment.degrade``), off by default, next to ``noise`` and
  ``spec_augment``, and resumes exactly (the draws depend only on the seed and the batch);
- the cost is small next to a training step: one FFT convolution, two cached resamplings or one
  STFT per degraded utterance.

:meth:`Degrade.forward` applies the same chain to a single waveform, for anyone who does want to
degrade at generation time.

Order in the collator: speed (``prepare.speed_factors``, in the example preparer, because it changes
the duration that the preparer checks and the bucketer batches by) -> pitch -> reverb -> additive
noise (:class:`~granite_train.audio.augment.AdditiveNoise`) -> telephone band / mu-law (the channel
comes last, after the room and its noise, as on a real call). Every step here keeps the length, so
lengths, targets and padding are untouched; each utterance is processed over its valid samples only.

Randomness: one ``torch.Generator`` per utterance (the collator seeds it from its seed, the batch's
ids and the utterance's position). :meth:`Degrade.sample_plan` makes a fixed number of draws
whatever is enabled (the room's noise tail comes from a drawn seed), so the plan of an utterance
depends only on its generator. :meth:`DegradePlan.describe` names what was applied, for the log.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torchaudio.functional as AF
from torch import nn

from granite_train.audio.augment import GeneratorLike, _as_generator
from granite_train.audio.resample import resample

__all__ = [
    "Degrade",
    "DegradePlan",
    "band_pass",
    "mu_law_round_trip",
    "pitch_shift",
    "quantize_pitch_ratio",
    "reverberate",
    "room_impulse_response",
    "telephone_band",
]

TELEPHONE_SR = 8000


def _fit_length(wave: torch.Tensor, n: int) -> torch.Tensor:
    """Trim or zero-pad the last axis to ``n`` samples."""
    have = wave.shape[-1]
    if have >= n:
        return wave[..., :n]
    return torch.nn.functional.pad(wave, (0, n - have))


# -- reverberation ---------------------------------------------------------------------------------


def room_impulse_response(
    rt60: float,
    sr: int = 16000,
    drr_db: float = 6.0,
    reflections: int = 4,
    generator: GeneratorLike = None,
    max_reflection_ms: float = 20.0,
) -> torch.Tensor:
    """A procedural room impulse response ``(L,)``, ``L = 1.5 * rt60 * sr``, unit energy.

    A direct path (sample 0, so the speech is not delayed), ``reflections`` early reflections
    (random sign, 2-7 times the tail's amplitude there, at 1 ms .. ``max_reflection_ms``), and a
    Gaussian noise tail from
    1 ms on whose amplitude falls 60 dB in ``rt60`` seconds. Reflections and tail together are
    scaled to ``drr_db`` below the direct path (direct-to-reverberant energy ratio).
    """
    if rt60 <= 0:
        raise ValueError(f"rt60 must be positive, got {rt60}")
    g = _as_generator(generator)
    n = max(int(round(1.5 * rt60 * sr)), 2)
    t = torch.arange(n, dtype=torch.float64) / sr
    decay = torch.exp(-3.0 * math.log(10.0) * t / rt60)  # amplitude; energy -60 dB at t = rt60
    reverb = torch.randn(n, generator=g, dtype=torch.float64) * decay
    reverb[: max(1, int(sr / 1000))] = 0.0  # the tail starts 1 ms after the direct path
    draws = torch.rand(reflections, 3, generator=g, dtype=torch.float64)
    for delay_u, gain_u, sign_u in draws.tolist():
        k = min(n - 1, max(1, int(round((1.0 + delay_u * (max_reflection_ms - 1.0)) * sr / 1000))))
        reverb[k] += (1.0 if sign_u < 0.5 else -1.0) * (2.0 + 5.0 * gain_u) * float(decay[k])
    energy = reverb.square().sum()
    if energy > 0:
        reverb *= torch.sqrt(10.0 ** (-drr_db / 10.0) / energy)  # direct path has energy 1
    rir = reverb
    rir[0] = 1.0
    return (rir / rir.square().sum().sqrt()).float()


def reverberate(wave: torch.Tensor, rir: torch.Tensor) -> torch.Tensor:
    """Convolve ``wave`` ``(..., T)`` with ``rir`` ``(L,)``; ``(..., T)`` out, the tail past ``T``
    cut, at the input's energy (so reverberation changes no level). Silent input is returned as is."""
    n = wave.shape[-1]
    wet = AF.fftconvolve(wave, rir.to(wave).expand(*wave.shape[:-1], -1))[..., :n]
    power_in = wave.square().sum(-1, keepdim=True)
    power_out = wet.square().sum(-1, keepdim=True)
    scale = torch.nan_to_num(torch.sqrt(power_in / power_out), nan=0.0, posinf=0.0)
    return torch.where(power_in > 0, wet * scale, wave)


# -- pitch ------------------------------------------------------------------------------------------


def quantize_pitch_ratio(ratio: float, sr: int = 16000, step_hz: int = 100) -> float:
    """``ratio`` rounded so that ``sr * ratio`` is a multiple of ``step_hz`` (0.11 semitone at 16 kHz):
    the resampling kernel of each ratio is then small and cached (:func:`~granite_train.audio.resample.resample`)."""
    return max(step_hz, round(sr * ratio / step_hz) * step_hz) / sr


def _phase_vocoder(spec: torch.Tensor, rate: float, advance: torch.Tensor) -> torch.Tensor:
    """Time-stretch a complex STFT ``(..., F, M)`` by ``rate`` (< 1: longer), with identity phase locking.

    ``torchaudio.functional.phase_vocoder`` advances every bin on its own; one transient (or the
    padded first frame) then leaves the bins of a partial out of phase for good, and a stretched
    sine comes out 3-7 dB quieter. Here each bin keeps its input phase offset from the nearest
    spectral peak (Laroche & Dolson, 1999), which restores the level (a sine within 0.01 dB).
    """
    n_freq, n_frames = spec.shape[-2:]
    steps = torch.arange(0, n_frames, rate, dtype=advance.dtype, device=spec.device)
    alpha = steps % 1.0
    padded = torch.nn.functional.pad(spec, [0, 2])
    s0, s1 = padded[..., steps.long()], padded[..., steps.long() + 1]
    mag = alpha * s1.abs() + (1 - alpha) * s0.abs()
    angle0 = s0.angle()
    dphi = s1.angle() - angle0 - advance
    dphi = dphi - 2 * math.pi * torch.round(dphi / (2 * math.pi)) + advance
    phase = torch.cat([spec[..., :1].angle(), dphi[..., :-1]], dim=-1).cumsum(-1)
    # peaks: bins at least as strong as the two bins either side
    edge = torch.full_like(mag[..., :2, :], -1.0)
    m = torch.cat([edge, mag, edge], dim=-2)
    peak = (
        (mag >= m[..., :-4, :]) & (mag >= m[..., 1:-3, :]) & (mag >= m[..., 3:-1, :]) & (mag >= m[..., 4:, :])
    )
    idx = torch.arange(n_freq, device=spec.device).view(-1, 1).expand_as(mag)
    below = torch.where(peak, idx, -n_freq).cummax(dim=-2).values
    above = torch.where(peak, idx, 2 * n_freq).flip(-2).cummin(dim=-2).values.flip(-2)
    nearest = torch.where(idx - below <= above - idx, below, above).clamp(0, n_freq - 1)
    locked = phase.gather(-2, nearest) + angle0 - angle0.gather(-2, nearest)
    return torch.polar(mag, locked)


def pitch_shift(wave: torch.Tensor, ratio: float, sr: int = 16000, n_fft: int = 512) -> torch.Tensor:
    """Raise every frequency of ``wave`` ``(..., T)`` by ``ratio``, keeping the duration: ``(..., T)`` out.

    A phase vocoder stretches the audio ``ratio`` times longer (pitch kept) and resampling plays it
    back ``ratio`` times faster. This is ``torchaudio.functional.pitch_shift``'s method, with two
    changes: phase locking (:func:`_phase_vocoder`), and the ratio quantized
    (:func:`quantize_pitch_ratio`) so the resampler is built once per ratio, not per call (which
    is what makes torchaudio's slow). Phase-vocoder smearing of transients is accepted.
    """
    ratio = quantize_pitch_ratio(ratio, sr)
    n = wave.shape[-1]
    if ratio == 1.0 or n < n_fft:
        return wave
    hop = n_fft // 4
    window = torch.hann_window(n_fft, dtype=wave.dtype, device=wave.device)
    spec = torch.stft(wave, n_fft, hop, window=window, return_complex=True)  # (..., F, frames)
    advance = torch.linspace(0, math.pi * hop, spec.shape[-2], dtype=wave.dtype, device=wave.device)
    stretched = _phase_vocoder(spec, 1.0 / ratio, advance[:, None])
    longer = torch.istft(stretched, n_fft, hop, window=window, length=int(round(n * ratio)))
    return _fit_length(resample(longer, round(sr * ratio), sr), n)


# -- channel ----------------------------------------------------------------------------------------


def band_pass(
    wave: torch.Tensor, sr: int, low_hz: float = 300.0, high_hz: float = 3400.0, order: int = 4
) -> torch.Tensor:
    """Zero-phase band-pass of ``wave`` ``(..., T)``: Butterworth magnitude responses of ``order``
    (high-pass at ``low_hz``, low-pass at ``high_hz``) applied in the frequency domain."""
    n = wave.shape[-1]
    size = -(-(n + 256) // 512) * 512  # zero padding: less wrap-around, and a length FFTs are fast at
    spectrum = torch.fft.rfft(wave, n=size)
    f = torch.fft.rfftfreq(size, 1.0 / sr).to(wave)
    high = 1.0 / torch.sqrt(1.0 + (f / high_hz) ** (2 * order))
    low = 1.0 / torch.sqrt(1.0 + (low_hz / f.clamp(min=1e-6)) ** (2 * order))
    return torch.fft.irfft(spectrum * high * low, n=size)[..., :n]


def mu_law_round_trip(wave: torch.Tensor, channels: int = 256) -> torch.Tensor:
    """G.711-style mu-law companding, encoded to ``channels`` levels (8 bit) and decoded.

    Audio beyond full scale is scaled down for the codec and back up after (no clipping)."""
    peak = float(wave.abs().max()) if wave.numel() else 0.0
    scale = max(peak, 1.0)
    codes = AF.mu_law_encoding(wave / scale, channels)
    return AF.mu_law_decoding(codes, channels).to(wave) * scale


def telephone_band(
    wave: torch.Tensor,
    sr: int = 16000,
    mu_law: bool = False,
    low_hz: float = 300.0,
    high_hz: float = 3400.0,
) -> torch.Tensor:
    """A narrow-band telephone channel: ``sr`` -> 8 kHz, ``low_hz``-``high_hz`` band-pass,
    optionally mu-law at 8 kHz (G.711), -> ``sr``, band-pass again. ``(..., T)`` in and out."""
    if sr <= TELEPHONE_SR:
        raise ValueError(f"telephone_band needs sr > {TELEPHONE_SR}, got {sr}")
    n = wave.shape[-1]
    narrow = band_pass(resample(wave, sr, TELEPHONE_SR), TELEPHONE_SR, low_hz, high_hz)
    if mu_law:
        narrow = mu_law_round_trip(narrow)
    # the upsampler's transition band lets images just above 4 kHz through: band-pass again
    return band_pass(_fit_length(resample(narrow, TELEPHONE_SR, sr), n), sr, low_hz, high_hz)


# -- the chain --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DegradePlan:
    """What :class:`Degrade` does to one utterance (None / False: that step is skipped)."""

    pitch_ratio: float | None = None
    rt60: float | None = None
    drr_db: float | None = None
    rir_seed: int = 0
    telephone: bool = False
    mu_law: bool = False

    def describe(self, stage: str | None = None) -> list[str]:
        """``name(detail)`` per applied step, in order (the name before ``(`` is what gets counted);
        ``stage`` ``"before_noise"`` / ``"after_noise"`` keeps that stage's steps only."""
        before, after = [], []
        if self.pitch_ratio is not None:
            before.append(f"pitch({12 * math.log2(self.pitch_ratio):+.2f}st)")
        if self.rt60 is not None:
            before.append(f"reverb(rt60={self.rt60:.2f}s,drr={self.drr_db:.1f}dB)")
        if self.telephone:
            after.append("telephone")
        if self.mu_law:
            after.append("mu_law")
        return {None: before + after, "before_noise": before, "after_noise": after}[stage]


def _range(value: Sequence[float], name: str) -> tuple[float, float]:
    low, high = (float(v) for v in value)
    if low > high:
        raise ValueError(f"{name} must be (low, high), got {value}")
    return low, high


class Degrade(nn.Module):
    """Pitch shift, reverberation, telephone band and mu-law, each with its own probability.

    All probabilities default to 0: a default ``Degrade`` changes nothing.
    """

    def __init__(
        self,
        sr: int = 16000,
        pitch_p: float = 0.0,
        pitch_semitones: Sequence[float] = (-2.0, 2.0),
        reverb_p: float = 0.0,
        rt60_range: Sequence[float] = (0.2, 0.8),
        drr_db_range: Sequence[float] = (0.0, 10.0),
        telephone_p: float = 0.0,
        mu_law_p: float = 0.0,
    ) -> None:
        """Args:
        sr: sample rate of the audio.
        pitch_p: probability of a pitch shift (duration kept; see :func:`pitch_shift`).
        pitch_semitones: (low, high) shift in semitones, drawn uniformly.
        reverb_p: probability of reverberation by a procedural room (:func:`room_impulse_response`).
        rt60_range: (low, high) reverberation time in seconds, drawn uniformly.
        drr_db_range: (low, high) direct-to-reverberant ratio in dB, drawn uniformly.
        telephone_p: probability of the 8 kHz, 300-3400 Hz telephone band (:func:`telephone_band`).
        mu_law_p: probability of 8-bit mu-law companding (at 8 kHz when the telephone band is drawn
            too, at ``sr`` otherwise).
        """
        super().__init__()
        for name, p in (
            ("pitch_p", pitch_p),
            ("reverb_p", reverb_p),
            ("telephone_p", telephone_p),
            ("mu_law_p", mu_law_p),
        ):
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {p}")
        if telephone_p > 0 and sr <= TELEPHONE_SR:
            raise ValueError(f"the telephone band needs sr > {TELEPHONE_SR}, got {sr}")
        self.sr = int(sr)
        self.pitch_p, self.reverb_p = float(pitch_p), float(reverb_p)
        self.telephone_p, self.mu_law_p = float(telephone_p), float(mu_law_p)
        self.pitch_semitones = _range(pitch_semitones, "pitch_semitones")
        self.rt60_range = _range(rt60_range, "rt60_range")
        self.drr_db_range = _range(drr_db_range, "drr_db_range")
        if self.rt60_range[0] <= 0:
            raise ValueError(f"rt60_range must be positive, got {rt60_range}")

    @property
    def active(self) -> bool:
        return max(self.pitch_p, self.reverb_p, self.telephone_p, self.mu_law_p) > 0

    def sample_plan(self, generator: GeneratorLike = None) -> DegradePlan:
        """Draw one utterance's plan: always 8 uniforms and one integer, in a fixed order."""
        g = _as_generator(generator)
        u = torch.rand(8, generator=g, dtype=torch.float64).tolist()
        rir_seed = int(torch.randint(0, 2**62, (1,), generator=g))

        def pick(lo_hi: tuple[float, float], x: float) -> float:
            return lo_hi[0] + (lo_hi[1] - lo_hi[0]) * x

        pitch = None
        if u[0] < self.pitch_p:
            ratio = quantize_pitch_ratio(2.0 ** (pick(self.pitch_semitones, u[1]) / 12.0), self.sr)
            pitch = ratio if ratio != 1.0 else None
        reverb = u[2] < self.reverb_p
        return DegradePlan(
            pitch_ratio=pitch,
            rt60=pick(self.rt60_range, u[3]) if reverb else None,
            drr_db=pick(self.drr_db_range, u[4]) if reverb else None,
            rir_seed=rir_seed,
            telephone=u[5] < self.telephone_p,
            mu_law=u[6] < self.mu_law_p,
        )  # u[7]: spare, so a later step can be added without moving the seed draw

    def room(self, plan: DegradePlan) -> torch.Tensor | None:
        """The plan's impulse response, or None without reverberation."""
        if plan.rt60 is None:
            return None
        gen = torch.Generator().manual_seed(plan.rir_seed)
        return room_impulse_response(plan.rt60, self.sr, plan.drr_db, generator=gen)

    def before_noise(self, wave: torch.Tensor, plan: DegradePlan) -> torch.Tensor:
        """Pitch, then room, on ``(..., T)``."""
        if plan.pitch_ratio is not None:
            wave = pitch_shift(wave, plan.pitch_ratio, self.sr)
        rir = self.room(plan)
        if rir is not None:
            wave = reverberate(wave, rir)
        return wave

    def after_noise(self, wave: torch.Tensor, plan: DegradePlan) -> torch.Tensor:
        """Telephone band and/or mu-law on ``(..., T)``."""
        if plan.telephone:
            return telephone_band(wave, self.sr, mu_law=plan.mu_law)
        if plan.mu_law:
            return mu_law_round_trip(wave)
        return wave

    def apply_batch(
        self, waves: torch.Tensor, lengths: torch.Tensor, plans: Sequence[DegradePlan], stage: str
    ) -> torch.Tensor:
        """Apply ``stage`` (``"before_noise"`` or ``"after_noise"``) of each row's plan to its first
        ``lengths[b]`` samples of ``waves`` ``(B, T)``; padding is left as it is. A new tensor."""
        step = {"before_noise": self.before_noise, "after_noise": self.after_noise}[stage]
        out = waves.clone()
        for b, plan in enumerate(plans):
            n = int(lengths[b])
            if n:
                out[b, :n] = step(waves[b, :n], plan)
        return out

    def forward(self, wave: torch.Tensor, generator: GeneratorLike = None) -> tuple[torch.Tensor, list[str]]:
        """The whole chain (no additive noise) on one utterance ``(T,)``: ``(T,)`` and what was applied."""
        plan = self.sample_plan(generator)
        return self.after_noise(self.before_noise(wave, plan), plan), plan.describe()
