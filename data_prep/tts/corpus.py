"""What a synthetic speech corpus is made of: its columns and the summary of a run.

Shared by the generator (``generate``) and its dataset card (``card``), so that neither has to
import the other.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

SAMPLING_RATE = 16_000


def features(extra: Mapping[str, str] | None = None):
    """Output columns (``datasets.Features``); ``extra`` (column -> Value dtype) come after ``duration``."""
    from datasets import Audio, Features, Value

    columns = {
        "id": Value("string"),
        "audio": Audio(sampling_rate=SAMPLING_RATE),
        "text": Value("string"),
        "language": Value("string"),
        "voice": Value("string"),
        "duration": Value("float32"),
    }
    for name, dtype in (extra or {}).items():
        if name in columns:
            raise ValueError(f"extra column {name!r} clashes with a built-in column")
        columns[name] = Value(dtype)
    return Features(columns)


@dataclass
class CorpusSummary:
    """What ``generate_corpus`` did. Counts cover the whole corpus (resumed shards included);
    ``generated_audio_seconds`` and ``wall_seconds`` only this run."""

    out_dir: Path
    num_examples: dict[str, int]
    """Examples per split."""
    num_examples_per_language: dict[str, dict[str, int]]
    """split -> language -> examples."""
    audio_seconds: float
    """Audio in the finished corpus."""
    generated_audio_seconds: float
    """Audio synthesised by this run (0 when every shard was already done)."""
    wall_seconds: float
    shards_written: int
    shards_skipped: int
    failures: dict[str, int] = field(default_factory=dict)
    """Sentences that produced no example, per reason (``empty_audio``, ``backend_error:...``)."""
    filtered: dict[str, int] = field(default_factory=dict)
    """Input lines dropped before synthesis, per reason (``duplicate``, ``too_long``)."""

    @property
    def total_examples(self) -> int:
        return sum(self.num_examples.values())

    @property
    def hours(self) -> float:
        return self.audio_seconds / 3600.0

    @property
    def realtime_factor(self) -> float:
        """Audio seconds generated per wall-clock second in this run ("x real time")."""
        return self.generated_audio_seconds / self.wall_seconds if self.wall_seconds > 0 else 0.0

    def format(self) -> str:
        splits = ", ".join(f"{k}={v}" for k, v in self.num_examples.items()) or "none"
        lines = [
            f"corpus: {self.out_dir}  examples: {splits}  audio: {self.hours:.3f} h",
            f"shards: {self.shards_written} written, {self.shards_skipped} skipped (already done)",
            f"throughput: {self.generated_audio_seconds:.1f} s audio in {self.wall_seconds:.1f} s wall"
            f" = {self.realtime_factor:.1f}x real time ({self.generated_audio_seconds / 3600:.3f} h generated)",
        ]
        if self.failures:
            lines.append(
                "failed sentences: " + ", ".join(f"{k}={v}" for k, v in sorted(self.failures.items()))
            )
        if self.filtered:
            lines.append(
                "filtered input lines: " + ", ".join(f"{k}={v}" for k, v in sorted(self.filtered.items()))
            )
        return "\n".join(lines)
