import math

import pytest
import torch

from granite_train.audio import AdditiveNoise, SpecAugment, SpeedPerturb, mix_at_snr
from granite_train.audio.augment import _pink

SR = 16000


def _features(batch: int = 4, frames: int = 100, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Features in [1, 2) (never equal to the 0.0 mask value) with padding set to a sentinel."""
    g = torch.Generator().manual_seed(seed)
    feats = 1 + torch.rand(batch, frames, 160, generator=g)
    lengths = torch.linspace(frames // 3, frames, batch).long()
    feats[torch.arange(frames) >= lengths.unsqueeze(1)] = 123.0
    return feats, lengths


def _snr_db(clean: torch.Tensor, noisy: torch.Tensor) -> torch.Tensor:
    return 10 * torch.log10(clean.square().sum(-1) / (noisy - clean).square().sum(-1))


def _speech_like(batch: int, n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(n) / SR
    f0 = 100 + 200 * torch.rand(batch, 1, generator=g)
    return 0.3 * torch.sin(2 * math.pi * f0 * t) * (1 + torch.sin(2 * math.pi * 3 * t))


# SpecAugment ---------------------------------------------------------------------------------------


def test_specaugment_seeded():
    feats, lengths = _features()
    aug = SpecAugment(p=1.0)
    a = aug(feats, lengths, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, aug(feats, lengths, generator=1))  # an int seed is the same as a seeded generator
    assert not torch.equal(a, aug(feats, lengths, generator=2))
    assert (a == 0).any() and feats.min() >= 1  # masks applied, input untouched


def test_specaugment_only_inside_valid_frames():
    feats, lengths = _features(batch=8)
    out = SpecAugment(freq_masks=3, freq_width=40, time_masks=5, time_width=0.3, p=1.0)(
        feats, lengths, generator=0
    )
    pad = torch.arange(feats.shape[1]) >= lengths.unsqueeze(1)
    assert torch.all(out[pad] == 123.0)
    changed = out != feats
    assert torch.all(out[changed] == 0.0) and changed.any()


def test_specaugment_freq_masks_cover_same_bins_in_each_stacked_frame():
    feats, lengths = _features(batch=6)
    out = SpecAugment(freq_masks=2, freq_width=20, time_masks=0, p=1.0)(feats, lengths, generator=3)
    for i, n in enumerate(lengths.tolist()):
        masked = out[i, :n] == 0  # (n, 160)
        columns = masked.all(dim=0)
        assert torch.equal(masked, columns.expand_as(masked))  # whole columns over valid frames
        assert torch.equal(columns[:80], columns[80:])  # same mel bins in both stacked frames
        assert columns[:80].sum() <= 2 * 20


@pytest.mark.parametrize("time_width", [7, 0.1])
def test_specaugment_time_masks_are_whole_frames_within_width(time_width):
    feats, lengths = _features(batch=16, frames=200)
    out = SpecAugment(freq_masks=0, time_masks=2, time_width=time_width, p=1.0)(feats, lengths, generator=4)
    for i, n in enumerate(lengths.tolist()):
        masked = out[i, :n] == 0
        rows = masked.all(dim=1)
        assert torch.equal(masked, rows.unsqueeze(1).expand_as(masked))
        max_width = time_width if isinstance(time_width, int) else math.floor(time_width * n)
        assert rows.sum() <= 2 * max_width


def test_specaugment_probability():
    feats = torch.ones(2000, 10, 160)
    out = SpecAugment(freq_masks=1, freq_width=80, time_masks=0, p=0.3)(feats, generator=5)
    touched = (out == 0).flatten(1).any(dim=1).float().mean().item()
    # a mask of width 0 is possible (1 in 81), so slightly below p
    assert 0.25 < touched < 0.35
    assert torch.equal(SpecAugment(p=0.0)(feats, generator=5), feats)


# AdditiveNoise -------------------------------------------------------------------------------------


def test_additive_noise_hits_sampled_snr():
    waves = _speech_like(32, SR)
    aug = AdditiveNoise(snr_db_range=(-5, 20), p=1.0)
    snr = aug.sample_snr_db(32, generator=7)
    out = aug(waves, generator=7)
    assert snr.min() >= -5 and snr.max() <= 20 and snr.std() > 3  # spread over the range
    torch.testing.assert_close(_snr_db(waves, out), snr, atol=1e-3, rtol=0)


def test_additive_noise_respects_lengths():
    waves = _speech_like(4, SR)
    lengths = torch.tensor([SR, 12000, 8000, 4000])
    waves[torch.arange(SR) >= lengths.unsqueeze(1)] = 0
    aug = AdditiveNoise(snr_db_range=(0, 10), p=1.0)
    out = aug(waves, lengths, generator=8)
    snr = aug.sample_snr_db(4, generator=8)
    for i, n in enumerate(lengths.tolist()):
        assert torch.all(out[i, n:] == 0)
        assert abs(_snr_db(waves[i, :n], out[i, :n]).item() - snr[i].item()) < 1e-3


def test_additive_noise_probability_and_seeding():
    waves = _speech_like(400, 2000)
    aug = AdditiveNoise(p=0.25)
    out = aug(waves, generator=9)
    noisy = (out != waves).any(dim=1)
    assert 0.18 < noisy.float().mean().item() < 0.32
    assert torch.equal(noisy, ~aug.sample_snr_db(400, generator=9).isnan())
    assert torch.equal(out, aug(waves, generator=9))
    assert not torch.equal(out, aug(waves, generator=10))


def test_additive_noise_from_source_loops_and_crops():
    short = torch.tensor([1.0, -2.0, 0.5, 3.0, -1.0])  # looped over the utterance
    aug = AdditiveNoise(snr_db_range=(5, 5), p=1.0, noise_source=[short])
    waves = _speech_like(3, 1000)
    added = aug(waves, generator=11) - waves  # (B, T) = scale * looped clip
    for row in added:
        torch.testing.assert_close(row[5:], row[:-5])  # periodic with the clip's period
    torch.testing.assert_close(_snr_db(waves, waves + added), torch.full((3,), 5.0), atol=1e-3, rtol=0)

    long = torch.randn(50_000, generator=torch.Generator().manual_seed(0))
    out = AdditiveNoise(snr_db_range=(0, 0), p=1.0, noise_source=[long])(waves[0], generator=12)  # 1-D input
    added = out - waves[0]
    ratio = added / long.unfold(0, 1000, 1)  # some crop of the long clip, times a constant scale
    assert any(torch.allclose(r, r[0].expand_as(r), rtol=1e-4) for r in ratio)


def test_mix_at_snr_edge_cases():
    signal = torch.stack([torch.zeros(100), torch.ones(100), torch.ones(100)])
    noise = torch.stack([torch.randn(100), torch.zeros(100), torch.randn(100)])
    out = mix_at_snr(signal, noise, torch.tensor([0.0, 0.0, float("nan")]))
    assert torch.equal(out, signal)  # silent signal, silent noise, skipped row


def test_pink_noise_has_one_over_f_spectrum():
    white = torch.randn(64, 16384, generator=torch.Generator().manual_seed(0))
    power = torch.fft.rfft(_pink(white)).abs().square().mean(0)
    low, high = power[16:32].mean(), power[1600:3200].mean()  # 100x apart in frequency
    assert 50 < low / high < 200
    assert power[0] < 1e-6  # no DC


# SpeedPerturb --------------------------------------------------------------------------------------


@pytest.mark.parametrize("factor", [0.9, 1.1, 0.95, 1.05])
def test_speed_perturb_length_and_pitch(factor):
    n = 12345
    tone = torch.sin(2 * math.pi * 1000 * torch.arange(n) / SR)
    out = SpeedPerturb(factors=(factor,), sr=SR)(tone, generator=0)
    assert out.numel() == math.ceil(n / factor)
    spectrum = torch.fft.rfft(out * torch.hann_window(out.numel())).abs()
    assert abs(spectrum.argmax().item() * SR / out.numel() - 1000 * factor) < 5


def test_speed_perturb_identity_and_batch():
    wave = torch.randn(2, 800)
    assert SpeedPerturb(factors=(1.0,))(wave) is wave
    out = SpeedPerturb(factors=(0.9,))(wave)
    assert out.shape == (2, math.ceil(800 / 0.9))


def test_speed_perturb_seeded():
    aug = SpeedPerturb()
    g1, g2, g3 = (torch.Generator().manual_seed(s) for s in (0, 0, 1))
    draws = [aug.sample_factor(g1) for _ in range(30)]
    assert draws == [aug.sample_factor(g2) for _ in range(30)]
    assert draws != [aug.sample_factor(g3) for _ in range(30)]
    assert set(draws) == {0.9, 1.0, 1.1}
    wave = torch.randn(SR)
    assert torch.equal(aug(wave, generator=5), aug(wave, generator=5))
