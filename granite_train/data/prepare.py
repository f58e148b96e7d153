"""Turn raw records into training examples, or into a counted skip.

Bad input must never crash a run or reach the loss: every way a record can be unusable has a
:class:`SkipReason`, and fixable problems (sample rate, channel count) are fixed and counted too.
"""

from __future__ import annotations

import math
import zlib
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any

import numpy as np
import torch

from granite_train.audio.augment import SpeedPerturb
from granite_train.audio.features import LogMelFeatures
from granite_train.audio.io import (
    AudioDecodeError,
    AudioFileNotFoundError,
    AudioInfo,
    audio_info,
    decode_audio,
    to_mono,
)
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
    # a manifest's duration (NeMo ``duration``) that disagrees with the audio header: the header wins
    FIXED_DURATION = "fixed_duration_from_header"
    # a whole data file that stayed unreadable (deleted, no access): counted once per file, its
    # records unknown (SourceReader skips it after its read attempts)
    UNREADABLE_FILE = "unreadable_file"

    @property
    def is_fix(self) -> bool:
        return self.value.startswith("fixed_")


def split_fixes(counts: dict[str, int]) -> tuple[Counter[str], Counter[str]]:
    """``counts`` by reason as (records skipped, records repaired: the ``fixed_*`` reasons)."""
    fixed = Counter({r: n for r, n in counts.items() if r.startswith("fixed_")})
    return Counter({r: n for r, n in counts.items() if r not in fixed}), fixed


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


# a declared duration within this much of the header's is taken to agree (rounding in manifests)
DURATION_TOLERANCE_S = 0.1
DURATION_TOLERANCE_SHARE = 0.05


def durations_disagree(declared: float, actual: float) -> bool:
    return abs(declared - actual) > max(DURATION_TOLERANCE_S, DURATION_TOLERANCE_SHARE * actual)


def ctc_min_frames(targets: list[int]) -> int:
    """Frames CTC needs for ``targets``: one per label plus a blank between repeated labels."""
    repeats = sum(1 for a, b in zip(targets, targets[1:]) if a == b)
    return len(targets) + repeats


class ExamplePreparer:
    """Decode, repair and validate raw records.

    Counts every skip and fix in ``counts`` (by reason), in ``by_source`` (by source, then reason)
    and keeps the first record of each (source, reason) with its detail in ``examples``, so that a
    report can say what was wrong with which rows. ``__call__(record, count=False)`` prepares
    without counting (a record seen again in a later pass is counted once).
    """

    def __init__(self, config: PrepareConfig, targets: CTCTargetBuilder, seed: int = 0):
        self.config = config
        self.targets = targets
        self.seed = seed
        self.counts: Counter[str] = Counter()
        self.by_source: dict[str, Counter[str]] = {}
        self.examples: dict[str, dict[str, str]] = {}  # source -> reason -> "id: detail"
        self.speed = SpeedPerturb(config.speed_factors, config.sample_rate) if config.speed_factors else None
        self._counting = True

    def count(self, record: dict[str, Any], reason: SkipReason, detail: str = "") -> None:
        """Count a skip or fix of ``record`` (unless this call prepares without counting)."""
        if not self._counting:
            return
        source = str(record.get("source"))
        self.counts[reason.value] += 1
        self.by_source.setdefault(source, Counter())[reason.value] += 1
        first = self.examples.setdefault(source, {})
        if reason.value not in first:
            first[reason.value] = f"{record.get('id')}: {detail}" if detail else str(record.get("id"))

    def count_unreadable(self, source: str, unreadable: Mapping[str, str], counted: set[str]) -> None:
        """Count each file of a source reader's ``unreadable`` (file -> error) not in ``counted`` yet
        as an ``unreadable_file`` skip of ``source``, so that run reports and checks name it."""
        for file, error in unreadable.items():
            if file not in counted:
                counted.add(file)
                self.count({"id": file, "source": source}, SkipReason.UNREADABLE_FILE, error)

    def _speed_factor(self, sample_id: str) -> float:
        # Seeded by the sample id, not by stream position: a resumed run perturbs identically.
        generator = torch.Generator().manual_seed(zlib.crc32(f"{self.seed}:{sample_id}".encode()))
        return self.speed.sample_factor(generator)

    def __call__(self, record: dict[str, Any], count: bool = True) -> Example | None:
        """The prepared example, or ``None`` after counting why it was skipped."""
        self._counting = count
        try:
            return self.prepare(record)
        except Skip as skip:
            self.count(record, skip.reason, skip.detail)
            return None
        finally:
            self._counting = True

    def check_text(self, record: dict[str, Any]) -> None:
        """Skip a record without a transcript, saying which column was missing when one was."""
        text = record.get("text")
        if self.config.require_text and (text is None or not text.strip()):
            problem = (record.get("problems") or {}).get("text")
            raise Skip(SkipReason.NO_TEXT, problem or ("empty transcript" if text is not None else ""))

    def audio_source(self, record: dict[str, Any]) -> bytes | str:
        """The record's encoded audio (bytes or a path), or a skip saying what was missing."""
        audio = record.get("audio") or {}
        source = audio.get("bytes") or audio.get("path")
        if not source:
            raise Skip(SkipReason.NO_AUDIO, (record.get("problems") or {}).get("audio", ""))
        return source

    def check_header(self, record: dict[str, Any], source: bytes | str) -> AudioInfo | None:
        """Read the audio header (no decoding): a missing or unreadable file, or audio longer than
        ``max_duration`` (a two-hour recording), is skipped before its samples are decoded. A
        manifest's declared duration that disagrees with the header is counted (the header wins);
        without a readable header the declared one decides. ``None`` when there is no header."""
        declared = record.get("duration")
        try:
            info = audio_info(source)
        except AudioFileNotFoundError as err:
            raise Skip(SkipReason.MISSING_FILE, str(err)) from err
        except AudioDecodeError:
            info = None  # a format without a header libsndfile reads: decoding will tell
        duration = info.duration if info is not None else declared
        if info is not None and declared is not None and durations_disagree(declared, info.duration):
            self.count(
                record, SkipReason.FIXED_DURATION, f"manifest {declared:g} s, header {info.duration:.2f} s"
            )
        # speed perturbation shortens audio by up to its largest factor: skip only what stays too long
        fastest = max(self.config.speed_factors) if self.config.speed_factors else 1.0
        if duration is not None and duration / fastest > self.config.max_duration:
            raise Skip(SkipReason.TOO_LONG, f"{duration:.1f}s (from the {'header' if info else 'manifest'})")
        return info

    def prepare(self, record: dict[str, Any]) -> Example:
        cfg = self.config
        self.check_text(record)
        source = self.audio_source(record)
        self.check_header(record, source)
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
            self.count(record, SkipReason.FIXED_CHANNELS)
        wave = torch.from_numpy(np.ascontiguousarray(to_mono(samples), dtype=np.float32))
        if sr != cfg.sample_rate:
            self.count(record, SkipReason.FIXED_SAMPLE_RATE)
            wave = resample(wave, sr, cfg.sample_rate)
        if self.speed is not None:
            factor = self._speed_factor(str(record.get("id")))
            if factor != 1.0:
                wave = self.speed.perturb(wave, factor)

        self.check_duration(wave.shape[-1] / cfg.sample_rate)
        rms = float(wave.pow(2).mean().sqrt())
        if rms == 0.0 or 20 * math.log10(rms) < cfg.silence_db:
            raise Skip(SkipReason.SILENCE)
        targets = self.build_targets(record, int(wave.shape[-1]))
        return Example(record=record, waveform=wave, targets=targets, sample_rate=cfg.sample_rate)

    def check_duration(self, seconds: float) -> None:
        """Skip audio outside ``[min_duration, max_duration]``."""
        if seconds < self.config.min_duration:
            raise Skip(SkipReason.TOO_SHORT, f"{seconds:.3f}s")
        if seconds > self.config.max_duration:
            raise Skip(SkipReason.TOO_LONG, f"{seconds:.1f}s")

    def build_targets(self, record: dict[str, Any], num_samples: int) -> list[int]:
        """The CTC targets of the record's text (empty when the stage needs none), or a skip: text
        outside the vocabulary, nothing left of it, more labels than the audio has frames."""
        cfg = self.config
        text = record.get("text")
        if text is None or not cfg.ctc_targets:
            return []
        try:
            targets = self.targets(text, record.get("language"))
        except OOVError as err:
            raise Skip(SkipReason.OOV_TEXT, str(err)) from err
        if cfg.require_text and not targets:
            raise Skip(SkipReason.EMPTY_TARGET, repr(text[:60]))
        frames = LogMelFeatures.num_frames(num_samples)
        if cfg.check_ctc_length and frames < ctc_min_frames(targets):
            raise Skip(SkipReason.FRAMES_LT_TARGETS, f"{frames} frames < {len(targets)} labels")
        return targets
