import math
from pathlib import Path

import pytest
import torch
from transformers import GraniteSpeechFeatureExtractor

from granite_train.audio import LogMelFeatures, load_audio

# Lengths around the edge cases: the minimum, frame-count parity flips (n // 160 + 1 odd vs even),
# exact hop multiples, 1 s, and a long clip.
SYNTHETIC_LENGTHS = [257, 319, 320, 480, 4000, 16000, 16159, 16160, 16320, 160_000]


@pytest.fixture(scope="module")
def hf() -> GraniteSpeechFeatureExtractor:
    return GraniteSpeechFeatureExtractor()


@pytest.fixture(scope="module")
def logmel() -> LogMelFeatures:
    return LogMelFeatures()


@pytest.fixture(scope="module")
def fsdd_waves(fsdd_dir: Path) -> list[torch.Tensor]:
    """Real speech at 16 kHz: a spread of speakers/digits plus the shortest and longest clips."""
    files = sorted((fsdd_dir / "recordings").glob("*.wav"))
    by_size = sorted(files, key=lambda p: p.stat().st_size)
    picks = [*files[::250], by_size[0], by_size[len(by_size) // 2], by_size[-1]]
    return [load_audio(p, target_sr=16000) for p in picks]  # 8 kHz -> 16 kHz with our resampler


def _synthetic(n: int, kind: str, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(n) / 16000
    if kind == "chirp":  # 100 Hz -> 7 kHz sweep with a decaying envelope
        sweep = torch.sin(2 * math.pi * (100 * t + 0.5 * (6900 / max(t[-1].item(), 1e-3)) * t**2))
        return 0.5 * sweep * torch.exp(-t)
    if kind == "noise":
        return 0.1 * torch.randn(n, generator=g)
    if kind == "loud_dc":  # out of [-1, 1] and with an offset: no normalization is assumed
        return 3.0 + 2.0 * torch.randn(n, generator=g)
    if kind == "silence":  # everything hits the 1e-10 clip
        return torch.zeros(n)
    raise ValueError(kind)


def _reference(hf: GraniteSpeechFeatureExtractor, wave: torch.Tensor) -> torch.Tensor:
    return hf(wave)["input_features"][0]  # one utterance: (F, 160)


def _assert_matches_reference(hf, logmel, wave: torch.Tensor, atol: float = 1e-4) -> float:
    ref = _reference(hf, wave)
    ours, lengths = logmel(wave.unsqueeze(0))
    assert ours.shape == (1, *ref.shape)
    assert lengths.tolist() == [ref.shape[0]] == [LogMelFeatures.num_frames(wave.numel())]
    diff = (ours[0] - ref).abs().max().item()
    assert diff <= atol
    return diff


def test_matches_transformers_on_fsdd(hf, logmel, fsdd_waves):
    assert len({w.numel() for w in fsdd_waves}) >= 8  # several distinct lengths
    for wave in fsdd_waves:
        _assert_matches_reference(hf, logmel, wave)


@pytest.mark.parametrize("kind", ["chirp", "noise", "loud_dc", "silence"])
@pytest.mark.parametrize("n", SYNTHETIC_LENGTHS)
def test_matches_transformers_on_synthetic(hf, logmel, n, kind):
    _assert_matches_reference(hf, logmel, _synthetic(n, kind, seed=n))


def _padded_batch(waves: list[torch.Tensor], garbage: bool) -> tuple[torch.Tensor, torch.Tensor]:
    lengths = torch.tensor([w.numel() for w in waves])
    batch = torch.nn.utils.rnn.pad_sequence(waves, batch_first=True)  # (B, T), zero padded
    if garbage:  # padding content must not matter at all, not just zero padding
        pad = torch.arange(batch.shape[1]) >= lengths.unsqueeze(1)
        batch = torch.where(
            pad, 10 * torch.randn(batch.shape, generator=torch.Generator().manual_seed(0)), batch
        )
    return batch, lengths


@pytest.mark.parametrize("garbage", [False, True])
def test_padding_never_changes_features(logmel, fsdd_waves, garbage):
    waves = [*fsdd_waves, _synthetic(257, "noise"), _synthetic(48_000, "chirp"), _synthetic(4000, "loud_dc")]
    batch, lengths = _padded_batch(waves, garbage)
    feats, feat_lengths = logmel(batch, lengths)
    assert feats.shape == (len(waves), LogMelFeatures.num_frames(batch.shape[1]), 160)
    assert torch.equal(feat_lengths, LogMelFeatures.num_frames(lengths))
    for i, wave in enumerate(waves):
        solo, _ = logmel(wave)
        n = feat_lengths[i]
        assert (feats[i, :n] - solo[0]).abs().max().item() <= 1e-6
        assert torch.all(feats[i, n:] == 0)


def test_transformers_batch_is_padding_dependent(hf, logmel):
    """Why LogMelFeatures exists: the reference extractor changes a short clip's features when batched."""
    short, long = _synthetic(4000, "noise", seed=1), _synthetic(16000, "noise", seed=2)
    hf_batched = hf([short, long])["input_features"][0, : LogMelFeatures.num_frames(4000)]
    assert (hf_batched - _reference(hf, short)).abs().max() > 1e-2
    ours, _ = logmel(*_padded_batch([short, long], garbage=False))
    assert (ours[0, : LogMelFeatures.num_frames(4000)] - _reference(hf, short)).abs().max() <= 1e-4


def test_num_frames():
    assert LogMelFeatures.num_frames(16000) == 50
    assert LogMelFeatures.num_frames(16159) == 50
    assert LogMelFeatures.num_frames(16160) == 51
    assert LogMelFeatures.num_frames(257) == 1
    n = torch.tensor([257, 320, 16000, 16160])
    assert LogMelFeatures.num_frames(n).tolist() == [(k // 160 + 1) // 2 for k in n.tolist()]


def test_lengths_none_means_full_rows(logmel):
    batch = torch.stack([_synthetic(8000, "noise", seed=s) for s in range(3)])
    a, la = logmel(batch)
    b, lb = logmel(batch, torch.full((3,), 8000))
    assert torch.equal(a, b) and torch.equal(la, lb) and la.tolist() == [25] * 3


def test_padding_value():
    batch, lengths = _padded_batch([_synthetic(16000, "noise"), _synthetic(3000, "noise")], garbage=True)
    feats, feat_lengths = LogMelFeatures(padding_value=-7.0)(batch, lengths)
    assert torch.all(feats[1, feat_lengths[1] :] == -7.0)
    assert torch.all(feats[1, : feat_lengths[1]] > -7.0)


def test_too_short_or_bad_lengths_raise(logmel):
    with pytest.raises(ValueError, match="257"):
        logmel(torch.randn(1, 256))
    with pytest.raises(ValueError, match="257"):
        logmel(torch.randn(2, 4000), torch.tensor([4000, 100]))
    with pytest.raises(ValueError):
        logmel(torch.randn(2, 4000), torch.tensor([4000, 4001]))
    with pytest.raises(ValueError):
        logmel(torch.randn(2, 4000), torch.tensor([4000]))


def test_autocast_does_not_change_features(logmel):
    wave = _synthetic(16000, "chirp").unsqueeze(0)
    ref, _ = logmel(wave)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, _ = logmel(wave)
    assert out.dtype == torch.float32
    assert (out - ref).abs().max().item() <= 1e-6


def test_float64_input(hf, logmel):
    wave = _synthetic(8000, "chirp").double()
    _assert_matches_reference(hf, logmel, wave)


def test_meta_device_shapes():
    module = LogMelFeatures().to("meta")
    feats, lengths = module(
        torch.empty(3, 16160, device="meta"), torch.empty(3, dtype=torch.long, device="meta")
    )
    assert feats.shape == (3, 51, 160) and feats.is_meta and lengths.shape == (3,)


@pytest.mark.gpu
def test_cuda_matches_cpu(logmel, fsdd_waves):
    batch, lengths = _padded_batch(fsdd_waves, garbage=True)
    ref, ref_lengths = logmel(batch, lengths)
    module = LogMelFeatures().cuda()
    out, out_lengths = module(batch.cuda(), lengths.cuda())
    assert out.device.type == "cuda"
    assert torch.equal(out_lengths.cpu(), ref_lengths)
    assert (out.cpu() - ref).abs().max().item() <= 1e-4
