"""A human-readable report of what a data pipeline served: the mixture, skips, padding, speed."""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field

from granite_train.data.collate import Batch


@dataclass
class DataReport:
    """Accumulates batch statistics; ``format()`` renders them as text tables."""

    batches: int = 0
    utterances: int = 0
    audio_seconds: float = 0.0
    frames: int = 0
    padded_frames: int = 0
    per_source: Counter = field(default_factory=Counter)  # utterances served
    per_language: Counter = field(default_factory=Counter)
    drawn: Counter = field(default_factory=Counter)  # raw records drawn by the mixture
    skipped: Counter = field(default_factory=Counter)
    started: float = field(default_factory=time.perf_counter)
    sample_rate: int = 16000

    def update(self, batch: Batch) -> None:
        lengths = batch.feature_lengths if batch.feature_lengths is not None else batch.waveform_lengths
        self.batches += 1
        self.utterances += len(batch)
        self.audio_seconds += batch.waveform_lengths.sum().item() / self.sample_rate
        self.frames += int(lengths.sum())
        self.padded_frames += int(lengths.max()) * len(batch)
        self.per_source.update(batch.sources)
        self.per_language.update(lang or "?" for lang in batch.languages)
        self.drawn.update(batch.drawn)
        self.skipped.update(batch.skipped)

    @property
    def padding_fraction(self) -> float:
        return 1.0 - self.frames / self.padded_frames if self.padded_frames else 0.0

    @property
    def wall_seconds(self) -> float:
        return time.perf_counter() - self.started

    def format(self) -> str:
        wall = self.wall_seconds
        lines = [
            "== data pipeline report ==",
            f"batches             {self.batches}",
            f"utterances          {self.utterances}",
            f"audio               {self.audio_seconds / 3600:.3f} h ({self.audio_seconds:.0f} s)",
            f"mean batch          {self.utterances / max(self.batches, 1):.1f} utt, "
            f"{self.padded_frames / max(self.batches, 1):.0f} padded frames",
            f"padding             {100 * self.padding_fraction:.2f}% of frames",
            f"throughput          {self.audio_seconds / max(wall, 1e-9):.1f} audio-s per s ({wall:.1f} s wall)",
            "",
            f"{'source':<16}{'drawn':>8}{'served':>8}{'share':>8}",
        ]
        total = max(sum(self.per_source.values()), 1)
        for name in sorted(set(self.drawn) | set(self.per_source)):
            lines.append(
                f"{name:<16}{self.drawn[name]:>8}{self.per_source[name]:>8}{100 * self.per_source[name] / total:>7.1f}%"
            )
        lines += ["", f"{'language':<16}{'served':>8}"]
        lines += [f"{lang:<16}{n:>8}" for lang, n in sorted(self.per_language.items())]
        lines += ["", f"{'skipped / fixed':<28}{'count':>8}"]
        if not self.skipped:
            lines.append(f"{'(none)':<28}{0:>8}")
        lines += [f"{reason:<28}{n:>8}" for reason, n in sorted(self.skipped.items())]
        return "\n".join(lines)
