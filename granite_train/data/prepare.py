"""Turn raw records into training examples, or into a counted skip.

Bad input must never crash a run or reach the loss: every way a record can be unusable has a
:class:`SkipReason`, and fixable problems (sample rate, channel count) are fixed and counted too.
"""

from __future__ import annotations

import math
import zlib
from collections import Counter
from dataclasses import dataclass
from enum import Enum
from typing import Any

import numpy as np
import torch

from granite_train.audio.augment import SpeedPerturb
from granite_train.audio.features import LogMelFeatures
from granite_train.audio.io import AudioDecodeError, AudioFileNotFoundError, decode_audio, to_mono
from granite_train.audio.resample import resample
from granite_train.text.targets import CTCTargetBuilder
from granite_train.text.vocab import OOVError


class SkipReason(str, Enum):
    """Why a record was dropped (or, for the ``FIXED_*`` entries, repaired)."""

    NO_AUDIO = "no_audio"
    MISSING_FILE = "missing_file"
    DECODE_ERROR = "decode_error"
    EMPTY_AUDIO = "empty_audio"
    NON_FINITE = "non_finite_samples"
    SILENCE = "silence"
    TOO_SHORT = "too_short"
    TOO_LONG = "too_long"
    NO_TEXT = "no_text"
    OOV_TEXT = "oov_text"
    EMPTY_TARGET = "empty_target"
    FRAMES_LT_TARGETS = "fewer_frames_than_targets"
    FIXED_SAMPLE_RATE = "fixed_resampled"
    FIXED_CHANNELS = "fixed_downmixed"

    @property
    def is_fix(self) -> bool:
        return self.value.startswith("fixed_")


class Skip(Exception):
    """Raised inside :func:`prepare_example`; carries the reason and a human-readable detail."""

    def __init__(self, reason: SkipReason, detail: str = ""):
        super().__init__(f"{reason.value}: {detail}" if detail else reason.value)
        self.reason = reason
        self.detail = detail


@dataclass
class PrepareConfig:
    """Validation limits for one example.

    Attributes:
        sample_rate: Target rate; other rates are resampled (and counted).
        min_duration: Shorter audio is skipped (seconds).
        max_duration: Longer audio is skipped (seconds); keeps memory bounded.
        silence_db: Audio whose RMS is below this level (dBFS) is skipped as silence.
        require_text: Skip records without a transcript (ASR training needs one).
        check_ctc_length: Skip utterances with fewer encoder frames than CTC needs for their targets.
        ctc_targets: Build CTC character targets from the text (stage 1). Stage 2 trains on the
            text itself (a translation need not be in the CTC alphabet): ``False`` skips them.
        speed_factors: Speed perturbation factors drawn per utterance (e.g. ``[0.9, 1.0, 1.1]``);
            ``None`` disables it. Applied before the duration checks, so bucketing and the CTC
            length check see the perturbed audio.
    """

    sample_rate: int = 16000
    min_duration: float = 0.2
    max_duration: float = 30.0
    silence_db: float = -60.0
    require_text: bool = True
    check_ctc_length: bool = True
    ctc_targets: bool = True
    speed_factors: list[float] | None = None

    def __post_init__(self) -> None:
        if not 0 < self.min_duration < self.max_duration:
            raise ValueError(
                f"need 0 < min_duration < max_duration, got {self.min_duration}, {self.max_duration}"
            )


@dataclass
class Example:
    """A validated utterance: mono 16 kHz audio plus CTC targets, and the raw record it came from."""

    record: dict[str, Any]
    waveform: torch.Tensor  # (T,) float32 at the pipeline sample rate
    targets: list[int]
    sample_rate: int = 16000

    @property
    def id(self) -> str:
        return self.record["id"]

    @property
    def num_samples(self) -> int:
        return int(self.waveform.shape[-1])

    @property
    def duration(self) -> float:
        return self.num_samples / self.sample_rate

    @property
    def num_frames(self) -> int:
        """Encoder frames (50 Hz stacked log-mel)."""
        return LogMelFeatures.num_frames(self.num_samples)


def ctc_min_frames(targets: list[int]) -> int:
    """Frames CTC needs for ``targets``: one per label plus a blank between repeated labels."""
    repeats = sum(1 for a, b in zip(targets, targets[1:]) if a == b)
    return len(targets) + repeats


class ExamplePreparer:
    """Decode, repair and validate raw records. Counts every skip and fix in ``counts``."""

    def __init__(self, config: PrepareConfig, targets: CTCTargetBuilder, seed: int = 0):
        self.config = config
        self.targets = targets
        self.seed = seed
        self.counts: Counter[str] = Counter()
        self.speed = SpeedPerturb(config.speed_factors, config.sample_rate) if config.speed_factors else None

    def _speed_factor(self, sample_id: str) -> float:
        # Seeded by the sample id, not by stream position: a resumed run perturbs identically.
        generator = torch.Generator().manual_seed(zlib.crc32(f"{self.seed}:{sample_id}".encode()))
        return self.speed.sample_factor(generator)

    def __call__(self, record: dict[str, Any]) -> Example | None:
        """The prepared example, or ``None`` after counting why it was skipped."""
        try:
            return self.prepare(record)
        except Skip as skip:
            self.counts[skip.reason.value] += 1
            return None

    def prepare(self, record: dict[str, Any]) -> Example:
        cfg = self.config
        text = record.get("text")
        if cfg.require_text and (text is None or not text.strip()):
            raise Skip(SkipReason.NO_TEXT)

        audio = record.get("audio") or {}
        source = audio.get("bytes") or audio.get("path")
        if not source:
            raise Skip(SkipReason.NO_AUDIO)
        try:
            samples, sr = decode_audio(source)
        except AudioFileNotFoundError as err:
            raise Skip(SkipReason.MISSING_FILE, str(err)) from err
        except AudioDecodeError as err:
            raise Skip(SkipReason.DECODE_ERROR, str(err)) from err

        if samples.size == 0:
            raise Skip(SkipReason.EMPTY_AUDIO)
        if not np.isfinite(samples).all():
            raise Skip(SkipReason.NON_FINITE)
        if samples.shape[0] > 1:
            self.counts[SkipReason.FIXED_CHANNELS.value] += 1
        wave = torch.from_numpy(np.ascontiguousarray(to_mono(samples), dtype=np.float32))
        if sr != cfg.sample_rate:
            self.counts[SkipReason.FIXED_SAMPLE_RATE.value] += 1
            wave = resample(wave, sr, cfg.sample_rate)
        if self.speed is not None:
            factor = self._speed_factor(str(record.get("id")))
            if factor != 1.0:
                wave = self.speed.perturb(wave, factor)

        duration = wave.shape[-1] / cfg.sample_rate
        if duration < cfg.min_duration:
            raise Skip(SkipReason.TOO_SHORT, f"{duration:.3f}s")
        if duration > cfg.max_duration:
            raise Skip(SkipReason.TOO_LONG, f"{duration:.1f}s")
        rms = float(wave.pow(2).mean().sqrt())
        if rms == 0.0 or 20 * math.log10(rms) < cfg.silence_db:
            raise Skip(SkipReason.SILENCE)

        targets: list[int] = []
        if text is not None and cfg.ctc_targets:
            try:
                targets = self.targets(text, record.get("language"))
            except OOVError as err:
                raise Skip(SkipReason.OOV_TEXT, str(err)) from err
            if cfg.require_text and not targets:
                raise Skip(SkipReason.EMPTY_TARGET)
        example = Example(record=record, waveform=wave, targets=targets, sample_rate=cfg.sample_rate)
        if cfg.check_ctc_length and cfg.ctc_targets and example.num_frames < ctc_min_frames(targets):
            raise Skip(SkipReason.FRAMES_LT_TARGETS, f"{example.num_frames} frames < {len(targets)} labels")
        return example
