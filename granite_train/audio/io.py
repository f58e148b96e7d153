"""Decode and encode audio with soundfile (libsndfile: WAV, FLAC, OGG/Vorbis/Opus, MP3, ...)."""

from __future__ import annotations

import io
import os
import re
import typing
from collections.abc import Callable
from typing import BinaryIO, TypeVar

import numpy as np
import soundfile as sf
import torch

from granite_train.audio.resample import resample

__all__ = [
    "AudioDecodeError",
    "AudioFileNotFoundError",
    "AudioInfo",
    "AudioSource",
    "audio_info",
    "decode_audio",
    "encode_flac",
    "load_audio",
    "set_url_reader",
    "to_mono",
]

AudioSource = bytes | bytearray | memoryview | str | os.PathLike | BinaryIO
"""Encoded audio: raw file bytes, a path (local, or an fsspec URL such as ``s3://bucket/a.flac``),
or a readable binary file object (e.g. ``io.BytesIO``)."""

_Array = TypeVar("_Array", np.ndarray, torch.Tensor)


class AudioDecodeError(ValueError):
    """The audio could not be decoded (corrupt, truncated, unsupported format, unreadable file)."""


class AudioFileNotFoundError(AudioDecodeError, FileNotFoundError):
    """The audio path does not exist; also a ``FileNotFoundError`` so generic handlers still catch it."""


def _describe(source: AudioSource) -> str:
    if isinstance(source, bytes | bytearray | memoryview):
        return f"<{len(source)} bytes>"
    if isinstance(source, str | os.PathLike):
        return repr(os.fspath(source))
    return repr(source)


class AudioInfo(typing.NamedTuple):
    """What an audio file's header says, read without decoding the samples."""

    frames: int
    sample_rate: int
    channels: int

    @property
    def duration(self) -> float:
        return self.frames / self.sample_rate if self.sample_rate > 0 else 0.0


_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
UrlReader = Callable[[str], bytes]
_url_reader: UrlReader | None = None


def set_url_reader(reader: UrlReader | None) -> None:
    """Read audio named by an fsspec URL with ``reader`` (``url -> bytes``); ``None``: plain fsspec.

    The data layer installs one (:func:`granite_train.data.remote.read_url`) that applies the
    storage options of the source naming the audio and retries failed reads; this module cannot
    import it (audio sits below data).
    """
    global _url_reader
    _url_reader = reader


def _read_url(url: str) -> bytes:
    import fsspec  # only for URL audio

    with fsspec.open(url, "rb") as f:  # the backend's own configuration (environment variables)
        return f.read()


def _url_file(url: str) -> BinaryIO:
    """The audio file at an fsspec URL (``s3://bucket/a.flac``), read whole into memory."""
    try:
        return io.BytesIO((_url_reader or _read_url)(url))
    except FileNotFoundError as err:
        raise AudioFileNotFoundError(f"audio file not found: {url!r}") from err
    except (OSError, ImportError) as err:  # no access, a failed read after its retries, no backend
        raise AudioDecodeError(f"cannot read the audio file {url!r}: {err}") from err


def _file_of(source: AudioSource) -> str | BinaryIO:
    if isinstance(source, str | os.PathLike):
        path = os.fspath(source)
        if _URL.match(path):
            return _url_file(path)
        # libsndfile reports a missing file only as "System error"; say what happened instead.
        if not os.path.exists(path):
            raise AudioFileNotFoundError(f"audio file not found: {path!r}")
        return path
    if isinstance(source, bytes | bytearray | memoryview):
        return io.BytesIO(source)
    return source


def audio_info(source: AudioSource) -> AudioInfo:
    """The header of an audio file or of in-memory bytes: frames, sample rate, channels.

    Cheap (no samples are decoded): what lets a two-hour recording be skipped as too long, and a
    whole manifest be checked, without decoding it. Raises like :func:`decode_audio`.
    """
    file = _file_of(source)
    try:
        info = sf.info(file)
    except (sf.SoundFileError, RuntimeError, TypeError) as err:
        raise AudioDecodeError(f"cannot read the audio header of {_describe(source)}: {err}") from err
    return AudioInfo(int(info.frames), int(info.samplerate), int(info.channels))


def decode_audio(source: AudioSource) -> tuple[np.ndarray, int]:
    """Decode an audio file or in-memory bytes.

    Args:
        source: raw encoded bytes, a filesystem path, or a readable binary file object.

    Returns:
        ``(wave, sample_rate)`` with ``wave`` float32 shaped ``(channels, samples)`` in [-1, 1].

    Raises:
        AudioFileNotFoundError: ``source`` is a path that does not exist.
        AudioDecodeError: libsndfile could not read the data.
    """
    file = _file_of(source)
    try:
        # always_2d: (samples, channels) even for mono, so the layout below never branches.
        data, sample_rate = sf.read(file, dtype="float32", always_2d=True)
    except (sf.SoundFileError, RuntimeError, TypeError) as err:
        raise AudioDecodeError(f"cannot decode audio from {_describe(source)}: {err}") from err
    return np.ascontiguousarray(data.T), int(sample_rate)  # (N, C) -> (C, N)


def to_mono(wave: _Array) -> _Array:
    """Average channels: ``(C, N) -> (N,)``; a 1-D ``(N,)`` input is returned unchanged."""
    if wave.ndim == 1:
        return wave
    if wave.ndim != 2:
        raise ValueError(f"expected (samples,) or (channels, samples), got shape {tuple(wave.shape)}")
    if isinstance(wave, np.ndarray):
        return wave.mean(axis=0, dtype=wave.dtype) if wave.shape[0] > 1 else wave[0]
    return wave.mean(dim=0) if wave.shape[0] > 1 else wave[0]


def load_audio(source: AudioSource, target_sr: int | None = 16000) -> torch.Tensor:
    """Decode, downmix and resample: ``source -> (N,)`` float32 at ``target_sr`` (native rate if None)."""
    wave, sample_rate = decode_audio(source)
    mono = torch.from_numpy(to_mono(wave))  # (C, N) -> (N,)
    if target_sr is None:
        return mono
    return resample(mono, sample_rate, target_sr)


def encode_flac(wave: torch.Tensor | np.ndarray, sample_rate: int) -> bytes:
    """Encode a mono waveform in [-1, 1] as 16-bit FLAC bytes.

    Samples outside [-1, 1] are clipped: libsndfile's float -> int16 conversion does not clip by
    default, so an overshoot would otherwise wrap around into a loud click.
    """
    if isinstance(wave, torch.Tensor):
        wave = wave.detach().to(device="cpu", dtype=torch.float32).numpy()
    wave = np.asarray(wave, dtype=np.float32)
    if wave.ndim != 1:
        raise ValueError(f"encode_flac expects a 1-D mono waveform, got shape {wave.shape}")
    if not np.isfinite(wave).all():
        raise ValueError("encode_flac got NaN or infinite samples")
    buffer = io.BytesIO()
    sf.write(buffer, np.clip(wave, -1.0, 1.0), sample_rate, format="FLAC", subtype="PCM_16")
    return buffer.getvalue()
