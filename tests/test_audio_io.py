import io
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from granite_train.audio import (
    AudioDecodeError,
    AudioFileNotFoundError,
    decode_audio,
    encode_flac,
    load_audio,
    to_mono,
)

SR = 16000


def _stereo(n: int = SR // 2) -> np.ndarray:
    t = np.arange(n) / SR
    return np.stack([0.5 * np.sin(2 * np.pi * 440 * t), 0.25 * np.sin(2 * np.pi * 660 * t)]).astype(
        np.float32
    )


def _encode(wave: np.ndarray, fmt: str, subtype: str | None = None) -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, wave.T, SR, format=fmt, subtype=subtype)
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("fmt", "subtype", "atol"),
    [
        ("WAV", "FLOAT", 0.0),
        ("WAV", "PCM_16", 1 / 2**15),
        ("FLAC", "PCM_16", 1 / 2**15),
        ("OGG", None, None),
        ("MP3", None, None),
    ],
)
def test_decode_formats_from_bytes(fmt, subtype, atol):
    wave = _stereo()
    decoded, sr = decode_audio(_encode(wave, fmt, subtype))
    assert sr == SR
    assert decoded.dtype == np.float32 and decoded.ndim == 2 and decoded.shape[0] == 2
    if atol is not None:  # lossless: exact up to quantization
        np.testing.assert_allclose(decoded, wave, atol=atol)
    else:  # lossy codecs may add encoder delay/padding; just check it is the same tone, roughly as loud
        assert abs(decoded.shape[1] - wave.shape[1]) < 0.1 * SR
        rms = np.sqrt((decoded**2).mean(axis=1))
        np.testing.assert_allclose(rms, np.sqrt((wave**2).mean(axis=1)), rtol=0.1)


def test_decode_paths_and_file_objects(tmp_path: Path):
    wave = _stereo()
    data = _encode(wave, "FLAC")
    path = tmp_path / "a.flac"
    path.write_bytes(data)
    for source in (data, bytearray(data), str(path), path, io.BytesIO(data), path.open("rb")):
        decoded, sr = decode_audio(source)
        assert sr == SR and decoded.shape == wave.shape, type(source)


def test_decode_mono_is_2d():
    decoded, _ = decode_audio(_encode(_stereo()[:1], "WAV"))
    assert decoded.shape == (1, SR // 2)


def test_missing_file_is_distinguishable(tmp_path: Path):
    with pytest.raises(AudioFileNotFoundError, match="not found"):
        decode_audio(tmp_path / "nope.wav")
    assert issubclass(AudioFileNotFoundError, FileNotFoundError)
    assert issubclass(AudioFileNotFoundError, AudioDecodeError)


@pytest.mark.parametrize("data", [b"", b"RIFF not really a wave file" * 10, _encode(_stereo(), "FLAC")[:100]])
def test_undecodable_bytes(data):
    with pytest.raises(AudioDecodeError) as info:
        decode_audio(data)
    assert not isinstance(info.value, AudioFileNotFoundError)
    assert "cannot decode" in str(info.value)


def test_undecodable_file(tmp_path: Path):
    path = tmp_path / "broken.wav"
    path.write_bytes(b"\x00" * 1000)
    with pytest.raises(AudioDecodeError, match="broken.wav"):
        decode_audio(path)


def test_to_mono_numpy_and_torch():
    wave = _stereo()
    np.testing.assert_allclose(to_mono(wave), wave.mean(axis=0))
    assert to_mono(wave).dtype == np.float32
    torch.testing.assert_close(to_mono(torch.from_numpy(wave)), torch.from_numpy(wave).mean(0))
    assert to_mono(wave[:1]).shape == (wave.shape[1],)
    mono = wave[0]
    assert to_mono(mono) is mono  # already mono: no copy
    with pytest.raises(ValueError):
        to_mono(np.zeros((1, 2, 3), dtype=np.float32))


def test_load_audio_fsdd_resamples(fsdd_dir: Path):
    path = sorted((fsdd_dir / "recordings").glob("*.wav"))[0]
    native, sr = decode_audio(path)
    assert sr == 8000 and native.shape[0] == 1
    wave = load_audio(path)
    assert wave.dtype == torch.float32 and wave.ndim == 1
    assert wave.numel() == 2 * native.shape[1]
    assert torch.equal(load_audio(path, target_sr=None), torch.from_numpy(native[0]))


def test_load_audio_stereo_downmix():
    wave = _stereo()
    out = load_audio(_encode(wave, "WAV", "FLOAT"), target_sr=SR)
    torch.testing.assert_close(out, torch.from_numpy(wave.mean(0)))


def test_encode_flac_roundtrip_and_clipping():
    wave = torch.from_numpy(_stereo()[0])
    data = encode_flac(wave, SR)
    assert data[:4] == b"fLaC"
    decoded, sr = decode_audio(data)
    assert sr == SR and sf.info(io.BytesIO(data)).subtype == "PCM_16"
    np.testing.assert_allclose(decoded[0], wave.numpy(), atol=1 / 2**15)

    loud = np.array([0.0, 1.5, -1.5, 0.5], dtype=np.float32)
    decoded, _ = decode_audio(encode_flac(loud, SR))
    np.testing.assert_allclose(decoded[0], [0.0, 32767 / 32768, -1.0, 0.5], atol=1 / 2**15)


def test_encode_flac_rejects_bad_input():
    with pytest.raises(ValueError, match="1-D"):
        encode_flac(np.zeros((2, 10), dtype=np.float32), SR)
    with pytest.raises(ValueError, match="NaN"):
        encode_flac(np.array([0.0, np.nan], dtype=np.float32), SR)
