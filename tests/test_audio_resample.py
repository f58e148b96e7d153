import math

import pytest
import torch
import torchaudio

from granite_train.audio import resample
from granite_train.audio.resample import _resampler


def _tone(freq: float, sr: int, seconds: float = 0.5) -> torch.Tensor:
    t = torch.arange(int(sr * seconds)) / sr
    return torch.sin(2 * math.pi * freq * t)


def _peak_hz(wave: torch.Tensor, sr: int) -> float:
    spectrum = torch.fft.rfft(wave * torch.hann_window(wave.numel())).abs()
    return spectrum.argmax().item() * sr / wave.numel()


def test_same_rate_is_identity():
    wave = torch.randn(3, 100)
    assert resample(wave, 16000, 16000) is wave


@pytest.mark.parametrize(("orig", "new"), [(8000, 16000), (22050, 16000), (44100, 16000), (16000, 8000)])
def test_length_matches_torchaudio_and_keeps_tone(orig, new):
    wave = _tone(440.0, orig)
    out = resample(wave, orig, new)
    assert out.numel() == math.ceil(wave.numel() * new / orig)
    torch.testing.assert_close(out, torchaudio.functional.resample(wave, orig, new), atol=1e-5, rtol=0)
    assert abs(_peak_hz(out, new) - 440.0) < 5.0


def test_batch_dims_and_dtype_kept():
    wave = torch.randn(2, 3, 800, dtype=torch.float64)
    out = resample(wave, 8000, 16000)
    assert out.shape == (2, 3, 1600) and out.dtype == torch.float64
    torch.testing.assert_close(out[1, 2], resample(wave[1, 2], 8000, 16000))


def test_resamplers_are_cached_per_rate_and_dtype():
    _resampler.cache_clear()
    resample(torch.randn(800), 8000, 16000)
    resample(torch.randn(900), 8000, 16000)
    assert _resampler.cache_info().misses == 1 and _resampler.cache_info().hits == 1
    resample(torch.randn(800, dtype=torch.float64), 8000, 16000)
    resample(torch.randn(800), 16000, 8000)
    assert _resampler.cache_info().misses == 3


def test_rejects_bad_input():
    with pytest.raises(TypeError):
        resample(torch.zeros(10, dtype=torch.int16), 8000, 16000)
    with pytest.raises(ValueError):
        resample(torch.zeros(10), 0, 16000)
