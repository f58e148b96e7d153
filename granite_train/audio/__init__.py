"""Audio I/O, resampling, Granite-Speech log-mel features, augmentation and degradations."""

from granite_train.audio.augment import AdditiveNoise, SpecAugment, SpeedPerturb, mix_at_snr
from granite_train.audio.degrade import Degrade
from granite_train.audio.features import LogMelFeatures
from granite_train.audio.io import (
    AudioDecodeError,
    AudioFileNotFoundError,
    AudioSource,
    decode_audio,
    encode_flac,
    load_audio,
    to_mono,
)
from granite_train.audio.resample import resample

__all__ = [
    "AdditiveNoise",
    "AudioDecodeError",
    "AudioFileNotFoundError",
    "AudioSource",
    "Degrade",
    "LogMelFeatures",
    "SpecAugment",
    "SpeedPerturb",
    "decode_audio",
    "encode_flac",
    "load_audio",
    "mix_at_snr",
    "resample",
    "to_mono",
]
