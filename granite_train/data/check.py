"""Read a whole source once, before any training, and say what is usable and what is not.

``granite-train data-check`` and ``finetune`` run it first: every record is validated as the
pipeline would validate it, but from the audio *header* (duration, sample rate, channels), not by
decoding, so a manifest of hours of audio is checked in seconds. Per source: records read, usable
records and hours, and every skip reason with its count, one example row and the fix. A source
with nothing usable is a :class:`~granite_train.data.errors.DataError` here, not a hang later.
The per-record keys it gathers (speaker, recording, content hash) are what
:mod:`granite_train.data.holdout` splits on.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from granite_train.data.errors import DataError
from granite_train.data.prepare import ExamplePreparer, PrepareConfig, Skip, SkipReason, split_fixes
from granite_train.data.skips import format_reasons, no_usable_example_error
from granite_train.data.sources import SourceReader, SourceSpec
from granite_train.text.targets import CTCTargetBuilder


@dataclass
class RecordCheck:
    """One record: its id, held-out split keys, duration (header) and why it is unusable (or None)."""

    id: str
    keys: dict[str, str]
    seconds: float | None
    reason: str | None = None


@dataclass
class SourceCheck:
    """What a full pass over one source found."""

    spec: SourceSpec
    records: list[RecordCheck] = field(default_factory=list)
    skipped: Counter = field(default_factory=Counter)  # reason -> records (unusable)
    fixed: Counter = field(default_factory=Counter)  # repairs: resampled, downmixed, duration from header
    examples: dict[str, str] = field(default_factory=dict)  # reason -> "id: detail"
    left_out: Counter = field(default_factory=Counter)  # rows of other splits / the other holdout side

    @property
    def usable(self) -> list[RecordCheck]:
        return [r for r in self.records if r.reason is None]

    @property
    def usable_hours(self) -> float:
        return sum(r.seconds or 0.0 for r in self.usable) / 3600

    def error(self) -> DataError | None:
        """The error to stop with when nothing of this source is usable."""
        if self.usable:
            return None
        reasons = {**self.skipped, **self.left_out}
        if not reasons:
            return DataError(
                f"source {self.spec.name!r} ({self.spec.path}): no records at all (split {self.spec.split!r}):"
                " an empty manifest or folder, or a split= that names no rows"
            )
        rows = len(self.records) + sum(self.left_out.values())
        return no_usable_example_error(self.spec.name, self.spec.path, rows, reasons, self.examples)


@dataclass
class DataCheck:
    """The check of several sources: a report (markdown), counts (JSON) and the stop rule."""

    sources: list[SourceCheck]

    def raise_if_unusable(self) -> None:
        for source in self.sources:
            if (err := source.error()) is not None:
                raise err

    def to_markdown(self) -> str:
        lines = [
            "| source | records | usable | usable hours | skipped | fixed |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for s in self.sources:
            lines.append(
                f"| {s.spec.name} | {len(s.records)} | {len(s.usable)} | {s.usable_hours:.3f} | "
                f"{sum(s.skipped.values())} | {sum(s.fixed.values())} |"
            )
        for s in self.sources:
            reasons = {**s.skipped, **s.fixed, **s.left_out}
            if reasons:
                lines += ["", f"`{s.spec.name}` ({s.spec.path}):", ""]
                lines += format_reasons(reasons, s.examples, indent="- ")
        return "\n".join(lines) + "\n"

    def to_json(self) -> dict[str, Any]:
        return {
            s.spec.name: {
                "path": s.spec.path,
                "records": len(s.records),
                "usable": len(s.usable),
                "usable_hours": round(s.usable_hours, 4),
                "skipped": dict(s.skipped),
                "fixed": dict(s.fixed),
                "left_out": dict(s.left_out),
                "examples": dict(s.examples),
            }
            for s in self.sources
        }


def _check_record(preparer: ExamplePreparer, record: dict[str, Any]) -> float | None:
    """The record's duration in seconds, or :class:`Skip`: the pipeline's checks without decoding."""
    preparer.check_text(record)
    source = preparer.audio_source(record)
    info = preparer.check_header(record, source)
    if info is None:
        raise Skip(SkipReason.DECODE_ERROR, "no audio header libsndfile can read")
    if info.frames == 0:
        raise Skip(SkipReason.EMPTY_AUDIO)
    preparer.check_duration(info.duration)
    rate = preparer.config.sample_rate
    if info.channels > 1:
        preparer.count(record, SkipReason.FIXED_CHANNELS)
    if info.sample_rate != rate:
        preparer.count(record, SkipReason.FIXED_SAMPLE_RATE)
    preparer.build_targets(record, int(round(info.duration * rate)))
    return info.duration


def check_source(
    spec: SourceSpec,
    prepare: PrepareConfig | None = None,
    targets: CTCTargetBuilder | None = None,
    progress: bool = True,
) -> SourceCheck:
    """Read every record of ``spec`` once (headers only) and validate it as the pipeline would."""
    from tqdm import tqdm

    if targets is None:
        from granite_train.text.vocab import CharVocab

        targets = CTCTargetBuilder(CharVocab("drop"))
    preparer = ExamplePreparer(prepare or PrepareConfig(), targets)
    reader = SourceReader(spec, keys=True)
    result = SourceCheck(spec)
    with tqdm(desc=f"check {spec.name}", unit="rec", disable=not progress, dynamic_ncols=True) as bar:
        while (record := reader.next_record()) is not None:
            seconds, reason = record.get("duration"), None
            try:
                seconds = _check_record(preparer, record)
            except Skip as skip:
                preparer.count(record, skip.reason, skip.detail)
                reason = skip.reason.value
            result.records.append(RecordCheck(record["id"], record.get("keys", {}), seconds, reason))
            bar.update(1)
    preparer.count_unreadable(spec.name, reader.unreadable, set())
    counts = preparer.by_source.get(spec.name, Counter())
    result.skipped, result.fixed = split_fixes(counts)
    result.examples = dict(preparer.examples.get(spec.name, {}))
    result.left_out = Counter(reader.last_pass["left_out"])
    for reason, example in reader.last_pass["examples"].items():
        result.examples.setdefault(reason, example)
    return result


def check_sources(
    specs: Sequence[SourceSpec],
    prepare: PrepareConfig | None = None,
    targets: CTCTargetBuilder | None = None,
    progress: bool = True,
) -> DataCheck:
    """:func:`check_source` for each source (no stop: call :meth:`DataCheck.raise_if_unusable`)."""
    return DataCheck([check_source(s, prepare, targets, progress) for s in specs])


def check_and_report(
    specs: Sequence[SourceSpec], prepare: PrepareConfig | None, title: str, progress: bool = True
) -> DataCheck:
    """:func:`check_sources`, the report printed under ``title``, then the stop rule
    (:meth:`DataCheck.raise_if_unusable`): what every command that trains runs first."""
    report = check_sources(specs, prepare, progress=progress)
    print(f"{title}\n{report.to_markdown()}", flush=True)
    report.raise_if_unusable()
    return report


__all__ = ["DataCheck", "RecordCheck", "SourceCheck", "check_and_report", "check_source", "check_sources"]
