"""Long-form segmentation with known truth: clips joined into 1-2 minute recordings, then segmented.

    .venv/bin/python scripts/longform_eval.py --model ENCODER_OR_SPEECH_FOLDER --clips fsdd \
        --speakers george,jackson,nicolas --out work/longform/fsdd
    .venv/bin/python scripts/longform_eval.py --model ... --clips work/corpus/tts_en --split test --out work/longform/tts
    .venv/bin/python scripts/longform_eval.py --clips fsdd --speakers yweweler --limit 500 \
        --min-seconds 10 --max-seconds 30 --build-only --out work/fsdd_sets/yweweler_long   # a test set

Clips (FSDD digits, or a parquet corpus such as the espeak-ng test split) are joined in a seeded
order into recordings of 60-120 s with pauses of 0.3-1.0 s between clips (silence, or low noise at
-50 dBFS), each written with one transcript (the clips' texts joined). ``python -m data_prep.segment``
cuts them; the report gives the share of cut points that fall inside a pause and the share of
segments whose transcript is exactly the words of the clips inside them (a clip belongs to the
segment holding its midpoint).
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import soundfile as sf

SR = 16000


def _clips(source: str, split: str, speakers: list[str] | None, limit: int) -> list[tuple[np.ndarray, str]]:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import torch

    from granite_train.audio.io import decode_audio, to_mono
    from granite_train.audio.resample import resample
    from granite_train.data.sources import SourceReader, SourceSpec

    spec = SourceSpec("clips", source, split=split, id_column=None)
    reader, out = SourceReader(spec), []
    while (record := reader.next_record()) is not None and len(out) < limit:
        if speakers and record.get("speaker") not in speakers:
            continue
        audio = record["audio"]
        wave, rate = decode_audio(audio["bytes"] if audio.get("bytes") is not None else audio["path"])
        wave = to_mono(torch.as_tensor(wave))
        if rate != SR:
            wave = resample(wave, rate, SR)
        out.append((wave.numpy().astype(np.float32), (record.get("text") or "").strip()))
    return out


def build(clips, out: Path, seed: int, min_s: float, max_s: float) -> list[dict]:
    """Recordings + manifest; returns the truth (clip spans and pauses) per recording."""
    rng = random.Random(seed)
    order = list(range(len(clips)))
    rng.shuffle(order)
    (out / "audio").mkdir(parents=True, exist_ok=True)
    truth, rows, k = [], [], 0
    while order:
        target = rng.uniform(min_s, max_s)
        pieces, spans, pauses, texts, t = [], [], [], [], 0.0
        while order and t < target:
            wave, text = clips[order.pop()]
            if pieces:
                gap = rng.uniform(0.3, 1.0)
                noise = rng.random() < 0.5
                pause = (np.random.default_rng(rng.randrange(2**31)).standard_normal(int(gap * SR)) * 10 ** (-50 / 20)
                         if noise else np.zeros(int(gap * SR)))  # fmt: skip
                pieces.append(pause.astype(np.float32))
                pauses.append((t, t + len(pause) / SR))
                t += len(pause) / SR
            pieces.append(wave)
            spans.append((t, t + len(wave) / SR, text))
            texts.append(text)
            t += len(wave) / SR
        name = f"audio/rec{k:03d}.wav"
        sf.write(out / name, np.concatenate(pieces), SR)
        rows.append({"audio_filepath": name, "text": " ".join(texts), "duration": t})
        truth.append({"id": f"long/{name}", "clips": spans, "pauses": pauses})
        k += 1
    (out / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (out / "truth.json").write_text(json.dumps(truth))
    return truth


def score(truth: list[dict], segments_dir: Path) -> dict:
    import pyarrow.parquet as pq

    rows = []
    for f in sorted((segments_dir / "data").glob("*.parquet")):
        rows += pq.read_table(f, columns=["recording", "start", "end", "text"]).to_pylist()
    by_rec = {t["id"]: t for t in truth}
    cuts_in_pause = cuts = exact = 0
    for r in rows:
        t = by_rec[r["recording"]]
        for edge in (r["start"], r["end"]):
            inner = 0.01 < edge < t["clips"][-1][1] - 0.01
            if inner:
                cuts += 1
                cuts_in_pause += any(a <= edge <= b for a, b in t["pauses"])
        # a clip belongs to the segment that holds its midpoint
        inside = [text for a, b, text in t["clips"] if r["start"] <= (a + b) / 2 < r["end"]]
        exact += " ".join(inside).split() == r["text"].split()
    return {
        "segments": len(rows),
        "cut_points": cuts,
        "cuts_inside_a_pause": cuts_in_pause / cuts if cuts else None,
        "segments_exact": exact / len(rows) if rows else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help="the aligner (needed unless --build-only)")
    parser.add_argument("--clips", required=True, help="'fsdd' or a dataset path")
    parser.add_argument("--split", default="train")
    parser.add_argument("--speakers", default=None, help="comma-separated (FSDD)")
    parser.add_argument("--limit", type=int, default=300, help="clips to use")
    parser.add_argument("--out", required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--min-seconds", type=float, default=60.0)
    parser.add_argument("--max-seconds", type=float, default=120.0)
    parser.add_argument(
        "--build-only",
        action="store_true",
        help="write the joined recordings (a test set with exact transcripts) only",
    )
    # keep every segment and recording (no score or heard-words filter): the cuts are what is scored
    parser.add_argument(
        "--segment-args", default="--lowercase --min-score 0.0 --min-heard 0", help="for data_prep.segment"
    )
    args = parser.parse_args()
    root = Path(__file__).resolve().parents[1]
    source = str(root.parent / "shared" / "data" / "fsdd") if args.clips == "fsdd" else args.clips
    speakers = args.speakers.split(",") if args.speakers else None
    out = Path(args.out)
    truth = build(
        _clips(source, args.split, speakers, args.limit),
        out / "long",
        args.seed,
        args.min_seconds,
        args.max_seconds,
    )
    if args.build_only:
        print(f"{len(truth)} recordings with their transcripts: {out / 'long' / 'manifest.jsonl'}")
        return
    if not args.model:
        parser.error("--model is required unless --build-only")
    cmd = [sys.executable, "-m", "data_prep.segment", "--model", args.model, "--data", str(out / "long" / "manifest.jsonl"),
           "--out", str(out / "segments"), "--language", "en", *args.segment_args.split()]  # fmt: skip
    subprocess.run(cmd, check=True, cwd=root)
    report = score(truth, out / "segments")
    (out / "report.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
