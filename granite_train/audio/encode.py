"""Encode a mono 16 kHz waveform as FLAC, WAV, Opus or MP3 bytes (libsndfile, through soundfile).

What staged shards store: encoded bytes the loader decodes with the same ``decode_audio`` as any
other source. FLAC is lossless at 16 bits; Opus and MP3 are lossy and several times smaller.
"""

from __future__ import annotations

import io

import numpy as np
import torch

# codec -> (soundfile format, subtype); libsndfile >= 1.1 writes MP3, >= 1.0.29 Opus
CODECS: dict[str, tuple[str, str]] = {
    "flac": ("FLAC", "PCM_16"),
    "wav": ("WAV", "PCM_16"),
    "opus": ("OGG", "OPUS"),
    "mp3": ("MP3", "MPEG_LAYER_III"),
}


def encode_audio(wave: torch.Tensor | np.ndarray, sample_rate: int, codec: str = "flac") -> bytes:
    """``wave`` (1-D, float in [-1, 1]) as ``codec`` bytes; samples outside [-1, 1] are clipped
    (libsndfile's float -> int16 conversion wraps an overshoot into a loud click otherwise)."""
    import soundfile as sf

    if codec not in CODECS:
        raise ValueError(f"unknown audio codec {codec!r}; choose from {sorted(CODECS)}")
    if isinstance(wave, torch.Tensor):
        wave = wave.detach().to(device="cpu", dtype=torch.float32).numpy()
    wave = np.clip(np.asarray(wave, dtype=np.float32), -1.0, 1.0)
    if wave.ndim != 1:
        raise ValueError(f"encode_audio expects a 1-D mono waveform, got shape {wave.shape}")
    file_format, subtype = CODECS[codec]
    buffer = io.BytesIO()
    sf.write(buffer, wave, sample_rate, format=file_format, subtype=subtype)
    return buffer.getvalue()


__all__ = ["CODECS", "encode_audio"]
