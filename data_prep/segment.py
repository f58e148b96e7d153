"""Long recordings with one transcript each -> training utterances of at most 30 s.

    python -m data_prep.segment --model RELEASED_FOLDER_OR_CKPT --data calls/manifest.csv --out work/calls_seg

Each recording is aligned to its transcript with the checkpoint's own encoder CTC head
(:func:`granite_train.models.ctc_align.align_words`: character targets, ``forced_align``), cut at
the longest pauses between words (:func:`~granite_train.models.ctc_align.plan_segments`), and every
segment is kept only if its alignment score (mean posterior of its characters on the forced path)
reaches ``--min-score``. What is dropped is counted per reason (``audio_too_short``,
``empty_text``, ``undecodable``, ``low_score``, ``too_long``) in the card and listed in
``rejects.jsonl``. The output is a parquet dataset the pipeline reads (``path: OUT``; columns
``id``, ``audio``, ``text``, ``language``, ``speaker``, ``recording``, ``start``, ``end``,
``score``), in resumable shards of ``--shard-size`` recordings.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

from data_prep.shards import (
    Shard,
    chunked,
    fingerprint,
    finished_states,
    split_bytes,
    write_readme,
    write_rejects,
)

FORMAT_VERSION = 1
SAMPLE_RATE = 16000


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


def segment_recording(encoder, record: dict[str, Any], targets, args) -> tuple[list[dict], list[dict]]:
    """The kept segments of one recording (rows) and what was dropped (rejects)."""
    from granite_train.audio.io import encode_flac
    from granite_train.models.ctc_align import AlignmentError, align_words, plan_segments, quietest_cuts

    rid = record["id"]
    try:
        wave = _load(record)
    except Exception as err:  # any decode failure is counted, never fatal
        return [], [{"id": rid, "reason": "undecodable", "detail": str(err)[:200]}]
    try:
        words = align_words(encoder, wave, record.get("text") or "", targets, record.get("language"))
    except AlignmentError as err:
        return [], [{"id": rid, "reason": err.reason, "detail": str(err)}]
    duration = wave.shape[-1] / SAMPLE_RATE
    rows, rejects = [], []
    segments = plan_segments(words, duration, args.max_seconds, args.min_seconds)
    if args.quiet_cuts:
        segments = quietest_cuts(segments, words, wave, args.max_seconds)
    for k, seg in enumerate(segments):
        sid = f"{rid}#{k:03d}"
        length = seg.end - seg.start
        if length > args.max_seconds:
            rejects.append({"id": sid, "reason": "too_long", "detail": f"{length:.1f} s"})
            continue
        if math.isnan(seg.score) or seg.score < args.min_score:
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


def run(args: argparse.Namespace) -> dict[str, Any]:
    import pyarrow as pa
    from tqdm import tqdm

    from granite_train.models.export import load_encoder
    from granite_train.text.targets import CTCTargetBuilder

    out = Path(args.out)
    encoder = load_encoder(args.model).eval()
    vocab = encoder.ctc_vocab("drop")  # the model's symbol table: a new language's letters align too
    targets = CTCTargetBuilder(vocab, lowercase=args.lowercase, strip_punctuation=args.lowercase)
    records = _records(args.data, args.split, args.language, args.limit)
    settings = {
        k: getattr(args, k)
        for k in ("model", "max_seconds", "min_seconds", "min_score", "lowercase", "quiet_cuts")
    }
    per_shard = []
    bar = tqdm(total=len(records), desc="segment", unit="rec", disable=args.quiet)
    for index, chunk in enumerate(chunked(records, args.shard_size)):
        ids = [r["id"] for r in chunk]
        shard = Shard(out, "train", index, fingerprint([FORMAT_VERSION, settings, ids]))
        if (state := shard.done()) is not None:
            per_shard.append((shard.name, state["rejects"]))
            bar.update(len(chunk))
            continue
        rows, rejects = [], []
        for record in chunk:
            kept, dropped = segment_recording(encoder, record, targets, args)
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
            f"Long recordings of `{args.data}` aligned to their transcripts with the CTC head of `{args.model}` "
            f"and cut at pauses into segments of at most {args.max_seconds} s; segments with an alignment "
            f"score under {args.min_score} are dropped (`rejects.jsonl` lists them).",
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--model", required=True, help="a GraniteSpeech folder, an exported encoder or a stage-1 .ckpt"
    )
    parser.add_argument(
        "--data", required=True, help="long recordings: audiofolder, CSV/TSV/JSONL manifest, parquet"
    )
    parser.add_argument("--split", default="train")
    parser.add_argument("--language", default=None)
    parser.add_argument("--out", required=True, help="output dataset folder")
    parser.add_argument("--max-seconds", type=float, default=30.0, help="longest segment")
    parser.add_argument("--min-seconds", type=float, default=1.0, help="shortest segment, where a cut allows")
    parser.add_argument(
        "--min-score", type=float, default=0.3, help="drop segments aligned with a lower score"
    )
    parser.add_argument(
        "--lowercase",
        action="store_true",
        help="align lowercased, punctuation-free text (a tiny encoder's targets)",
    )
    parser.add_argument(
        "--no-quiet-cuts",
        dest="quiet_cuts",
        action="store_false",
        help="cut at the middle of the aligned gap instead of its quietest point",
    )
    parser.add_argument("--shard-size", type=int, default=20, help="recordings per shard")
    parser.add_argument("--limit", type=int, default=None, help="first N recordings only")
    parser.add_argument("--quiet", action="store_true")
    summary = run(parser.parse_args(argv))
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
