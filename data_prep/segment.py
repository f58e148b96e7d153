"""Long recordings with one transcript each -> training utterances of at most 30 s.

    python -m data_prep.segment --model RELEASED_FOLDER_OR_CKPT --data calls/manifest.csv --out work/calls_seg

Each recording is aligned to its transcript with the checkpoint's own encoder CTC head
(:func:`granite_train.models.ctc_align.align_words`: character targets, ``forced_align``; a
recording longer than ``--whole-seconds`` in windows of ``--window-seconds``, in bounded memory),
cut at the longest pauses between words (:func:`~granite_train.models.ctc_align.plan_segments`),
and every segment is kept only if its alignment score (mean posterior of its characters on the
forced path) reaches ``--min-score``. A recording whose transcript is not what its audio says (fewer
than ``--min-heard`` of its words heard by the head) is dropped whole. What is dropped is counted
per reason (``audio_too_short``, ``empty_text``, ``undecodable``, ``mismatch``, ``low_score``,
``too_long``) in the card and listed in ``rejects.jsonl``. The output is a parquet dataset the pipeline reads (``path: OUT``; columns
``id``, ``audio``, ``text``, ``language``, ``speaker``, ``recording``, ``start``, ``end``,
``score``), in resumable shards of ``--shard-size`` recordings.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import re
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from data_prep.shards import (
    Shard,
    chunked,
    fingerprint,
    finished_states,
    split_bytes,
    write_readme,
    write_rejects,
)

if TYPE_CHECKING:
    from granite_train.models.ctc_align import AlignWindows, WordSpan

FORMAT_VERSION = 1
SAMPLE_RATE = 16000
ALIGNMENT_SETTINGS = ("model", "max_seconds", "min_seconds", "min_score", "min_heard", "lowercase",
                      "quiet_cuts", "window_seconds", "overlap_seconds", "whole_seconds")  # fmt: skip
"""The settings a shard's rows depend on (its fingerprint): changing one redoes the shards."""


@dataclass
class SegmentConfig:
    """Settings of ``python -m data_prep.segment``, each default written once, here. The command line
    sets every field as ``--field-name`` (a true boolean as ``--no-field-name``).

    Attributes:
        model: the aligner: a GraniteSpeech folder, an exported encoder or a stage-1 .ckpt.
        data: long recordings: audiofolder, CSV/TSV/JSONL manifest, parquet.
        out: output dataset folder.
        split: the split of ``data`` to read.
        language: the language of every recording (None: each row's own).
        max_seconds: longest segment (> 0).
        min_seconds: shortest segment, where a cut allows (>= 0, < max_seconds).
        min_score: drop segments aligned with a lower score (>= 0; 0 keeps every one).
        min_heard: drop a recording, as a mismatch, when a smaller share of its words is heard by
            the head (every character on its frames at least 1% as likely as the likeliest symbol)
            (0-1; 0 keeps every one).
        lowercase: align lowercased, punctuation-free text (a tiny encoder's targets).
        quiet_cuts: move each cut to the quietest point between its two words; off: cut at the
            middle of the aligned gap.
        window_seconds: a long recording is aligned in windows of this much audio (> 0): memory
            grows with the window, not the recording.
        overlap_seconds: the end of each window that the next one aligns again (>= 0, < window_seconds).
        whole_seconds: recordings up to this long are aligned whole, in one pass (>= 0).
        shard_size: recordings per shard (>= 1).
        limit: the first N recordings only (>= 0; None: all).
        quiet: no progress bar.
    """

    model: str
    data: str
    out: str
    split: str = "train"
    language: str | None = None
    max_seconds: float = 30.0
    min_seconds: float = 1.0
    min_score: float = 0.3
    min_heard: float = 0.5
    lowercase: bool = False
    quiet_cuts: bool = True
    window_seconds: float = 60.0
    overlap_seconds: float = 15.0
    whole_seconds: float = 120.0
    shard_size: int = 20
    limit: int | None = None
    quiet: bool = False

    def __post_init__(self) -> None:
        if not self.max_seconds > 0:
            raise ValueError(f"max_seconds must be > 0, got {self.max_seconds}")
        if not 0 <= self.min_seconds < self.max_seconds:
            raise ValueError(
                f"min_seconds must be >= 0 and < max_seconds ({self.max_seconds}), got {self.min_seconds}"
            )
        if not self.min_score >= 0:
            raise ValueError(f"min_score must be >= 0, got {self.min_score}")
        if not 0 <= self.min_heard <= 1:
            raise ValueError(f"min_heard must be in [0, 1], got {self.min_heard}")
        if self.shard_size < 1:
            raise ValueError(f"shard_size must be >= 1, got {self.shard_size}")
        if self.limit is not None and self.limit < 0:
            raise ValueError(f"limit must be >= 0, got {self.limit}")
        self.windows()  # window_seconds, overlap_seconds, whole_seconds: checked by AlignWindows

    def windows(self) -> AlignWindows:
        """The alignment windows of these settings."""
        from granite_train.models.ctc_align import AlignWindows

        return AlignWindows(self.window_seconds, self.overlap_seconds, self.whole_seconds)


def _records(data: str, split: str, language: str | None, limit: int | None) -> list[dict[str, Any]]:
    from granite_train.data.sources import SourceReader, SourceSpec

    spec = SourceSpec("long", data, split=split, language=language, id_column=None)
    reader, records = SourceReader(spec), []
    while (record := reader.next_record()) is not None and (limit is None or len(records) < limit):
        records.append(record)
    return records


def _load(record: dict[str, Any]):
    import torch

    from granite_train.audio.io import decode_audio, to_mono
    from granite_train.audio.resample import resample

    audio = record["audio"]
    wave, rate = decode_audio(audio.get("bytes") if audio.get("bytes") is not None else audio["path"])
    wave = to_mono(torch.as_tensor(wave))
    return resample(wave, rate, SAMPLE_RATE) if rate != SAMPLE_RATE else wave


def heard_share(words: list[WordSpan]) -> float:
    """The share of a recording's aligned words (:class:`~granite_train.models.ctc_align.WordSpan`)
    that the head heard; 1.0 with none to judge."""
    judged = [w.heard for w in words if w.heard is not None]
    return sum(judged) / len(judged) if judged else 1.0


def segment_recording(
    encoder, record: dict[str, Any], targets, config: SegmentConfig
) -> tuple[list[dict], list[dict]]:
    """The kept segments of one recording (rows) and what was dropped (rejects)."""
    from granite_train.audio.io import encode_flac
    from granite_train.models.ctc_align import AlignmentError, align_words, plan_segments, quietest_cuts

    rid = record["id"]
    try:
        wave = _load(record)
    except Exception as err:  # any decode failure is counted, never fatal
        return [], [{"id": rid, "reason": "undecodable", "detail": str(err)[:200]}]
    try:
        words = align_words(encoder, wave, record.get("text") or "", targets, record.get("language"),
                            windows=config.windows())  # fmt: skip
    except AlignmentError as err:
        return [], [{"id": rid, "reason": err.reason, "detail": str(err)}]
    if (heard := heard_share(words)) < config.min_heard:
        detail = (
            f"{heard:.0%} of the words heard (min_heard {config.min_heard}): the audio does not say this text"
        )
        return [], [{"id": rid, "reason": "mismatch", "detail": detail}]
    duration = wave.shape[-1] / SAMPLE_RATE
    rows, rejects = [], []
    segments = plan_segments(words, duration, config.max_seconds, config.min_seconds)
    if config.quiet_cuts:
        segments = quietest_cuts(segments, words, wave, config.max_seconds)
    for k, seg in enumerate(segments):
        sid = f"{rid}#{k:03d}"
        length = seg.end - seg.start
        if length > config.max_seconds:
            rejects.append({"id": sid, "reason": "too_long", "detail": f"{length:.1f} s"})
            continue
        if math.isnan(seg.score) or seg.score < config.min_score:
            rejects.append({"id": sid, "reason": "low_score", "detail": f"score {seg.score:.3f}: {seg.text}"})
            continue
        piece = wave[int(seg.start * SAMPLE_RATE) : int(seg.end * SAMPLE_RATE)]
        rows.append(
            {
                "id": sid,
                "audio": {"bytes": encode_flac(piece.numpy(), SAMPLE_RATE), "path": f"{sid}.flac"},
                "text": seg.text,
                "language": record.get("language"),
                "speaker": record.get("speaker"),
                "recording": rid,
                "start": round(seg.start, 3),
                "end": round(seg.end, 3),
                "score": round(seg.score, 4),
            }
        )
    return rows, rejects


def run(config: SegmentConfig) -> dict[str, Any]:
    """Segment every recording of ``config.data`` into ``config.out``; returns the summary."""
    import pyarrow as pa
    from tqdm import tqdm

    from granite_train.models.export import load_encoder
    from granite_train.text.targets import CTCTargetBuilder

    out = Path(config.out)
    encoder = load_encoder(config.model).eval()
    vocab = encoder.ctc_vocab("drop")  # the model's symbol table: a new language's letters align too
    targets = CTCTargetBuilder(vocab, lowercase=config.lowercase, strip_punctuation=config.lowercase)
    records = _records(config.data, config.split, config.language, config.limit)
    settings = {k: getattr(config, k) for k in ALIGNMENT_SETTINGS}
    per_shard = []
    bar = tqdm(total=len(records), desc="segment", unit="rec", disable=config.quiet)
    for index, chunk in enumerate(chunked(records, config.shard_size)):
        ids = [r["id"] for r in chunk]
        shard = Shard(out, "train", index, fingerprint([FORMAT_VERSION, settings, ids]))
        if (state := shard.done()) is not None:
            per_shard.append((shard.name, state["rejects"]))
            bar.update(len(chunk))
            continue
        rows, rejects = [], []
        for record in chunk:
            kept, dropped = segment_recording(encoder, record, targets, config)
            rows += kept
            rejects += dropped
            bar.update(1)
        table = pa.Table.from_pylist(rows) if rows else pa.table({"id": pa.array([], pa.string())})
        seconds = sum(r["end"] - r["start"] for r in rows)
        shard.write(
            shard.new_state(FORMAT_VERSION, recordings=len(chunk), num_examples=len(rows),
                            audio_seconds=seconds, rejects=rejects),
            table,
        )  # fmt: skip
        per_shard.append((shard.name, rejects))
    bar.close()
    states = finished_states(out)
    dropped: dict[str, int] = {}
    for _, rejects in per_shard:
        for r in rejects:
            dropped[r["reason"]] = dropped.get(r["reason"], 0) + 1
    summary = {
        "recordings": len(records),
        "segments": sum(s["num_examples"] for s in states),
        "hours": sum(s["audio_seconds"] for s in states) / 3600,
        "dropped": dict(sorted(dropped.items())),
    }
    write_rejects(out / "rejects.jsonl", per_shard)
    write_readme(
        out,
        {"task_categories": ["automatic-speech-recognition"]},
        {"train": (split_bytes(out, states).get("train", 0), summary["segments"])},
        _features(),
        [
            "# Segmented long-form speech",
            "",
            f"Long recordings of `{config.data}` aligned to their transcripts with the CTC head of "
            f"`{config.model}` and cut at pauses into segments of at most {config.max_seconds} s; segments "
            f"with an alignment score under {config.min_score}, and recordings with under {config.min_heard} "
            "of their words heard, are dropped (`rejects.jsonl` lists them).",
            "",
            "```json",
            json.dumps(summary, indent=2),
            "```",
        ],
    )
    return summary


def _features():
    import datasets

    string, number = datasets.Value("string"), datasets.Value("float64")
    return datasets.Features(
        {"id": string, "audio": datasets.Audio(sampling_rate=SAMPLE_RATE), "text": string, "language": string,
         "speaker": string, "recording": string, "start": number, "end": number, "score": number}
    )  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    """The command line of :class:`SegmentConfig`: one option per field, its help from the docstring."""
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    docs = {k: v.replace("%", "%%") for k, v in _field_docs(SegmentConfig).items()}
    hints = typing.get_type_hints(SegmentConfig)
    for field in dataclasses.fields(SegmentConfig):
        flag = "--" + field.name.replace("_", "-")
        required = field.default is dataclasses.MISSING
        kind = _value_type(hints[field.name])
        if kind is bool:  # a flag that flips the default
            if field.default:
                parser.add_argument(flag.replace("--", "--no-", 1), dest=field.name, action="store_false",
                                    help=f"{field.name} off (on by default): {docs[field.name]}")  # fmt: skip
            else:
                parser.add_argument(flag, action="store_true", help=docs[field.name])
            continue
        default = "" if required else f" (default: {field.default})"
        parser.add_argument(flag, type=kind, required=required, default=None if required else field.default,
                            help=docs[field.name] + default)  # fmt: skip
    return parser


def _field_docs(cls: type) -> dict[str, str]:
    """Each field's text in the ``Attributes:`` section of ``cls``'s docstring (continuation lines joined)."""
    section = (cls.__doc__ or "").split("Attributes:", 1)[-1]
    docs: dict[str, str] = {}
    name = None
    for line in section.splitlines():
        match = re.match(r"^\s{8}(\w+): (.*)$", line)
        if match:
            name = match.group(1)
            docs[name] = match.group(2)
        elif name and line.strip():
            docs[name] += " " + line.strip()
    return docs


def _value_type(hint: Any) -> type:
    """``float`` of ``float``, ``str`` of ``str | None``: the type argparse converts a value with."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return next(a for a in typing.get_args(hint) if a is not type(None))
    return hint


def parse_config(argv: list[str] | None = None) -> SegmentConfig:
    """The command line as a :class:`SegmentConfig`; an invalid value exits with its message."""
    parser = build_parser()
    try:
        return SegmentConfig(**vars(parser.parse_args(argv)))
    except ValueError as err:
        parser.error(str(err))


def main(argv: list[str] | None = None) -> int:
    summary = run(parse_config(argv))
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
