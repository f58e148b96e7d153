"""Degradations measured on signals whose answer is known: spectra, Schroeder decay, sine SNRs."""

import math

import pytest
import torch

from granite_train.audio import SpeedPerturb
from granite_train.audio.degrade import (
    Degrade,
    mu_law_round_trip,
    pitch_shift,
    quantize_pitch_ratio,
    reverberate,
    room_impulse_response,
    telephone_band,
)
from granite_train.data.collate import Collator
from granite_train.data.prepare import Example
from granite_train.training.config import AugmentConfig

SR = 16000
ALL_ON = dict(pitch_p=1.0, reverb_p=1.0, telephone_p=1.0, mu_law_p=1.0)


def _sine(freq: float, seconds: float = 1.0, amp: float = 0.5) -> torch.Tensor:
    return amp * torch.sin(2 * math.pi * freq * torch.arange(int(SR * seconds)) / SR)


def _band_energy(wave: torch.Tensor, low: float, high: float) -> float:
    power = torch.fft.rfft(wave.double()).abs().square()
    freqs = torch.fft.rfftfreq(wave.shape[-1], 1 / SR)
    return float(power[(freqs >= low) & (freqs < high)].sum())


def _peak_hz(wave: torch.Tensor) -> float:
    spectrum = torch.fft.rfft(wave * torch.hann_window(wave.shape[-1])).abs()
    return float(torch.fft.rfftfreq(wave.shape[-1], 1 / SR)[spectrum.argmax()])


def _rms_db(wave: torch.Tensor) -> float:
    return 10 * math.log10(float(wave.double().square().mean()))


def _schroeder_rt60(rir: torch.Tensor) -> float:
    """RT60 from the backward-integrated energy decay curve: a line fit between -5 and -25 dB (T20)."""
    edc = rir.double().square().flip(0).cumsum(0).flip(0)
    edc_db = 10 * torch.log10(edc / edc[0])
    keep = (edc_db <= -5) & (edc_db >= -25)
    t = torch.arange(rir.shape[0], dtype=torch.float64)[keep] / SR
    design = torch.stack([t, torch.ones_like(t)], dim=1)
    slope = torch.linalg.lstsq(design, edc_db[keep, None]).solution[0, 0]
    return -60.0 / float(slope)


# -- telephone band and mu-law ----------------------------------------------------------------------


def test_telephone_band_removes_energy_above_4khz():
    white = 0.1 * torch.randn(2 * SR, generator=torch.Generator().manual_seed(0))
    out = telephone_band(white, SR)
    assert out.shape == white.shape
    drop_db = 10 * math.log10(_band_energy(white, 4000, 8000) / _band_energy(out, 4000, 8000))
    assert drop_db > 30, drop_db  # measured 35.5 dB
    low_drop_db = 10 * math.log10(_band_energy(white, 0, 150) / _band_energy(out, 0, 150))
    assert low_drop_db > 20, low_drop_db  # the 300 Hz high-pass
    in_band_db = 10 * math.log10(_band_energy(white, 500, 3000) / _band_energy(out, 500, 3000))
    assert abs(in_band_db) < 1, in_band_db


def test_telephone_band_keeps_1khz_within_1db():
    tone = _sine(1000)
    for mu_law in (False, True):
        out = telephone_band(tone, SR, mu_law=mu_law)
        inner = slice(SR // 10, -SR // 10)  # away from the edges of the clip
        assert abs(_rms_db(out[inner]) - _rms_db(tone[inner])) < 1.0
        assert abs(_peak_hz(out) - 1000) < 2


@pytest.mark.parametrize("amp", [0.02, 0.3, 0.9, 2.0])
def test_mu_law_round_trip_error_and_snr(amp):
    tone = _sine(440, amp=amp)
    out = mu_law_round_trip(tone)
    err = out - tone
    snr_db = 10 * math.log10(float(tone.square().sum() / err.square().sum()))
    assert snr_db > 30, snr_db  # 8-bit mu-law of a sine: ~37-38 dB, nearly level-independent
    assert snr_db < 45  # and it did quantize
    # half a code step (1/255 of the companded scale) back through the expander bounds the error:
    # |err| <= (256 ** (1/255) - 1) * (|x| + 1/255), 2.2% of the value plus 8.6e-5 (over full scale, scaled)
    scale = max(amp, 1.0)
    bound = (256 ** (1 / 255) - 1) * (tone.abs() / scale + 1 / 255) * scale
    assert torch.all(err.abs() <= bound * 1.001 + 1e-7)


# -- reverberation ------------------------------------------------------------------------------------


@pytest.mark.parametrize("rt60", [0.25, 0.5, 1.0])
@pytest.mark.parametrize("drr_db", [0.0, 10.0])
def test_room_impulse_response_has_the_requested_rt60(rt60, drr_db):
    for seed in range(3):
        rir = room_impulse_response(rt60, SR, drr_db, generator=seed)
        assert rir.shape == (int(round(1.5 * rt60 * SR)),)
        assert float(rir.square().sum()) == pytest.approx(1.0, rel=1e-5)
        assert int(rir.abs().argmax()) == 0  # the direct path comes first and is the strongest
        direct = float(rir[0] ** 2)
        assert 10 * math.log10(direct / (1 - direct)) == pytest.approx(drr_db, abs=1e-3)
        measured = _schroeder_rt60(rir)
        assert abs(measured / rt60 - 1) < 0.2, (rt60, drr_db, seed, measured)  # measured within 6%


def test_reverberate_keeps_length_and_energy():
    speechy = _sine(220, 1.0) * (1 + torch.sin(2 * math.pi * 3 * torch.arange(SR) / SR))
    rir = room_impulse_response(0.6, SR, 0.0, generator=1)
    wet = reverberate(speechy, rir)
    assert wet.shape == speechy.shape
    assert float(wet.square().sum()) == pytest.approx(float(speechy.square().sum()), rel=1e-4)
    corr = float((wet * speechy).sum() / (wet.norm() * speechy.norm()))
    assert corr < 0.95  # it did smear the signal
    silent = torch.zeros(SR)
    assert torch.equal(reverberate(silent, rir), silent)


# -- pitch and speed ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("semitones", [-2.0, -0.5, 1.0, 2.0])
def test_pitch_shift_moves_a_sine_by_the_ratio_and_keeps_the_duration(semitones):
    ratio = quantize_pitch_ratio(2 ** (semitones / 12), SR)
    assert abs(12 * math.log2(ratio) - semitones) < 0.11
    tone = _sine(440, 1.0)
    out = pitch_shift(tone, 2 ** (semitones / 12), SR)
    assert out.shape == tone.shape
    assert _peak_hz(out) / 440 == pytest.approx(ratio, rel=0.005)
    assert abs(_rms_db(out[2000:-2000]) - _rms_db(tone[2000:-2000])) < 0.5  # phase locking: level kept


def test_speed_perturb_moves_a_sine_by_the_factor():
    tone = _sine(440, 1.0)
    out = SpeedPerturb((1.1,), SR)(tone, generator=0)
    assert out.shape[-1] == math.ceil(SR / 1.1)
    assert _peak_hz(out) / 440 == pytest.approx(1.1, rel=0.005)


# -- the chain, seeding, padding ---------------------------------------------------------------------------


def _examples(ids=("a", "b", "c"), seconds=(0.6, 0.45, 0.3)) -> list[Example]:
    out = []
    for i, (uid, sec) in enumerate(zip(ids, seconds)):
        g = torch.Generator().manual_seed(i)
        wave = _sine(150 + 100 * i, sec) + 0.01 * torch.randn(int(SR * sec), generator=g)
        out.append(Example(record={"id": uid, "source": "s", "text": "x"}, waveform=wave, targets=[1, 2]))
    return out


def test_degrade_is_seeded():
    tone = _sine(300, 0.5)
    chain = Degrade(**ALL_ON)
    a, names_a = chain(tone, generator=5)
    b, names_b = chain(tone, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, b) and names_a == names_b
    assert [n.split("(")[0] for n in names_a] == ["pitch", "reverb", "telephone", "mu_law"]
    c, names_c = chain(tone, generator=6)
    assert not torch.equal(a, c) and names_a != names_c


def test_collator_degradations_are_reproducible_per_utterance_and_keep_padding():
    from granite_train.audio.augment import AdditiveNoise

    examples = _examples()
    make = lambda: Collator(degrade=Degrade(**ALL_ON), noise=AdditiveNoise(p=1.0), seed=3)  # noqa: E731
    a, b = make()(examples), make()(examples)
    torch.testing.assert_close(a.waveforms, b.waveforms, rtol=0, atol=0)
    assert a.augmentations == b.augmentations
    names = [[n.split("(")[0] for n in applied] for applied in a.augmentations]
    assert names == [["pitch", "reverb", "noise", "telephone", "mu_law"]] * 3  # in the order applied
    assert len(set(map(tuple, a.augmentations))) == 3  # each utterance drew its own pitch, room and SNR
    # padding untouched: zeros past each utterance's length
    pad = torch.arange(a.waveforms.shape[1]) >= a.waveform_lengths.unsqueeze(1)
    assert torch.all(a.waveforms[pad] == 0) and pad.any()
    assert torch.equal(a.waveform_lengths, Collator()(examples).waveform_lengths)
    # other ids, same audio: other draws
    renamed = [Example({**e.record, "id": e.id + "x"}, e.waveform, e.targets) for e in examples]
    c = make()(renamed)
    assert c.augmentations != a.augmentations and not torch.equal(c.waveforms, a.waveforms)
    # another seed: other draws
    assert (
        Collator(degrade=Degrade(**ALL_ON), seed=4)(examples).augmentations
        != Collator(degrade=Degrade(**ALL_ON), seed=3)(examples).augmentations
    )


def test_probabilities_pick_a_share_of_utterances():
    chain = Degrade(pitch_p=0.3, reverb_p=0.6, telephone_p=0.0, mu_law_p=1.0)
    plans = [chain.sample_plan(seed) for seed in range(400)]
    assert 0.22 < sum(p.pitch_ratio is not None for p in plans) / 400 < 0.38
    assert 0.52 < sum(p.rt60 is not None for p in plans) / 400 < 0.68
    assert not any(p.telephone for p in plans) and all(p.mu_law for p in plans)
    assert all(0.2 <= p.rt60 <= 0.8 and 0 <= p.drr_db <= 10 for p in plans if p.rt60 is not None)


def test_disabled_degradations_change_nothing():
    examples = _examples()
    clean = Collator()(examples)
    off = Collator(degrade=Degrade())(examples)
    assert off.augmentations == [] and clean.augmentations == []
    torch.testing.assert_close(off.waveforms, clean.waveforms, rtol=0, atol=0)
    torch.testing.assert_close(off.features, clean.features, rtol=0, atol=0)
    tone = _sine(300, 0.5)
    out, names = Degrade()(tone, generator=0)
    assert torch.equal(out, tone) and names == []


def test_augment_config_checks_degrade_keys_and_values():
    assert AugmentConfig().degrade is None  # off by default
    AugmentConfig(degrade={"reverb_p": 0.5, "rt60_range": [0.3, 0.9], "telephone_p": 0.2})
    with pytest.raises(ValueError, match="reverb_prob"):
        AugmentConfig(degrade={"reverb_prob": 0.5})
    with pytest.raises(ValueError, match="reverb_p"):
        AugmentConfig(degrade={"reverb_p": 1.5})
    with pytest.raises(ValueError, match="rt60_range"):
        AugmentConfig(degrade={"rt60_range": [0.9, 0.3]})


def test_encoder_cache_is_refused_with_degradations():
    from granite_train.models.encoder_cache import check_encoder_cache_allowed

    with pytest.raises(ValueError, match="data.augment.degrade"):
        check_encoder_cache_allowed({"encoder_cache_gb": 1}, {"augment": {"degrade": {"reverb_p": 0.2}}})
    check_encoder_cache_allowed({"encoder_cache_gb": 1}, {"augment": {"degrade": None}})
