"""One long recording through ``python -m data_prep.segment``: peak memory, wall time, cut quality.

    .venv/bin/python benchmarks/segment_long.py                        # 2 hours, windowed alignment
    .venv/bin/python benchmarks/segment_long.py --minutes 8 --compare  # 8 min: one pass vs windowed
    .venv/bin/python benchmarks/segment_long.py --minutes 30 --model work/released/demo_tiny_en

The recording is FSDD digit clips (``../shared/data/fsdd/recordings``; ``3_george_12.wav`` says
"three"), resampled to 16 kHz and joined in a seeded order with 0.3-1.0 s pauses (silence or -50 dBFS
noise) until it is ``--minutes`` long; its transcript is the clips' words. The segmenter runs in a
child process per variant: ``windowed`` aligns in windows whatever the length (``--whole-seconds
0``), ``full`` in one pass (the path before windows: ``--whole-seconds 1e9``). Each child's peak
resident memory is its own (``os.wait4``), next to that of a child that only imports the segmenter
(torch, datasets and the model code: the floor). Cut quality: the share of inner cut points that fall inside a
pause, and of segments whose text is exactly the words of the clips whose midpoints they hold.

Without ``--model`` the aligner is a randomly initialised encoder of the ``tiny`` preset (the demo
model's shape): memory and time are those of a real run, but what it aligns is noise (the cuts
then land in pauses through ``quietest_cuts``' energy search alone).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
FSDD = ROOT.parent / "shared" / "data" / "fsdd" / "recordings"
DIGITS = "zero one two three four five six seven eight nine".split()
SR = 16000
FLOOR_IMPORTS = (
    "import datasets, pyarrow, tqdm, data_prep.segment, granite_train.audio.io, "
    "granite_train.data.sources, granite_train.models.ctc_align, granite_train.models.export"
)
"""What the segmenter imports before it reads a recording: the floor under its peak memory."""
VARIANTS = {"windowed": ["--whole-seconds", "0"], "full": ["--whole-seconds", "1e9"]}


@dataclass
class Truth:
    """Where each clip and each pause of the built recording lies (seconds)."""

    clips: list[tuple[float, float, str]]
    pauses: list[tuple[float, float]]


def _clip(path: Path) -> np.ndarray:
    """One FSDD clip at 16 kHz, float32."""
    import torch

    from granite_train.audio.resample import resample

    wave, rate = sf.read(path, dtype="float32")
    return resample(torch.from_numpy(wave), rate, SR).numpy() if rate != SR else wave


def build(out: Path, minutes: float, seed: int) -> Truth:
    """Write ``out/long.wav`` (16-bit, 16 kHz, ``minutes`` long) and ``out/long.jsonl``, clip by clip."""
    rng = random.Random(seed)
    files = sorted(FSDD.glob("*.wav"))
    cache: dict[Path, np.ndarray] = {}
    clips, pauses, t = [], [], 0.0
    with sf.SoundFile(out / "long.wav", "w", SR, 1, "PCM_16") as sink:
        while t < minutes * 60:
            if clips:
                gap = rng.uniform(0.3, 1.0)
                noise = rng.random() < 0.5
                pause = np.zeros(int(gap * SR), np.float32)
                if noise:
                    pause += 10 ** (-50 / 20) * np.random.default_rng(rng.randrange(2**31)).standard_normal(
                        len(pause)
                    )
                sink.write(pause)
                pauses.append((t, t + len(pause) / SR))
                t += len(pause) / SR
            path = rng.choice(files)
            wave = cache.setdefault(path, _clip(path))
            sink.write(wave)
            clips.append((t, t + len(wave) / SR, DIGITS[int(path.name.split("_")[0])]))
            t += len(wave) / SR
    row = {"audio_filepath": "long.wav", "text": " ".join(c[2] for c in clips), "duration": t}
    (out / "long.jsonl").write_text(json.dumps(row) + "\n")
    return Truth(clips, pauses)


def random_encoder(out: Path) -> Path:
    """A randomly initialised ``tiny`` encoder, exported as the segmenter reads it."""
    import torch

    from granite_train.models.encoder import CTCEncoder, encoder_config
    from granite_train.models.export import export_hf_encoder

    torch.manual_seed(0)
    return export_hf_encoder(CTCEncoder(encoder_config("tiny")).eval(), out / "random_tiny_encoder")


def measured(cmd: list[str]) -> tuple[float, float, float]:
    """Run ``cmd`` (must succeed); its own peak resident memory (GiB), wall time and CPU time (s:
    user + system, all threads; steadier than wall time on a shared machine)."""
    start = time.perf_counter()
    child = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(child.pid, 0)  # the child's own rusage (getrusage of that process)
    seconds = time.perf_counter() - start
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed with exit status {child.returncode}")
    return usage.ru_maxrss / 2**20, seconds, usage.ru_utime + usage.ru_stime  # ru_maxrss: KiB on Linux


def score(truth: Truth, out: Path) -> dict[str, float | int | None]:
    """Segments, inner cut points, the share of them inside a pause, the share of exact segments."""
    import pyarrow.parquet as pq

    rows = []
    for f in sorted((out / "data").glob("*.parquet")):
        if pq.read_schema(f).names != ["id"]:  # a shard with no segments holds an id column only
            rows += pq.read_table(f, columns=["start", "end", "text"]).to_pylist()
    rows.sort(key=lambda r: r["start"])
    cuts = [r["end"] for r in rows[:-1]]
    inside = sum(any(a <= c <= b for a, b in truth.pauses) for c in cuts)
    exact = sum(
        [w for a, b, w in truth.clips if r["start"] <= (a + b) / 2 < r["end"]] == r["text"].split()
        for r in rows
    )
    return {
        "segments": len(rows),
        "inner_cuts": len(cuts),
        "cuts_in_pause": inside / len(cuts) if cuts else None,
        "segments_exact": exact / len(rows) if rows else None,
    }


def main(argv: list[str] | None = None) -> dict[str, dict]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--minutes", type=float, default=120.0, help="length of the recording")
    parser.add_argument("--model", default=None, help="the aligner (default: a random tiny encoder)")
    parser.add_argument("--full", action="store_true", help="align in one pass (the path before windows)")
    parser.add_argument("--compare", action="store_true", help="both: one pass, then windowed")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--work", default=None, help="folder for the recording and outputs (default: a temp one)"
    )
    parser.add_argument(
        "--segment-args",
        default="--lowercase --min-score 0.0 --min-heard 0.0",
        help="more options of data_prep.segment (default: keep every segment, so cuts can be scored)",
    )
    args = parser.parse_args(argv)
    variants = ["full", "windowed"] if args.compare else ["full"] if args.full else ["windowed"]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.work or tmp)
        work.mkdir(parents=True, exist_ok=True)
        truth = build(work, args.minutes, args.seed)
        model = args.model or str(random_encoder(work))
        floor, floor_s, _ = measured([sys.executable, "-c", FLOOR_IMPORTS])
        print(f"{args.minutes:g} min, {len(truth.clips)} clips; aligner {args.model or 'random tiny encoder'}; "
              f"floor (imports only): {floor:.2f} GiB, {floor_s:.1f} s")  # fmt: skip
        results = {}
        for name in variants:
            out = work / f"seg_{name}"
            cmd = [sys.executable, "-m", "data_prep.segment", "--model", model, "--data", str(work / "long.jsonl"),
                   "--out", str(out), "--quiet", *VARIANTS[name], *args.segment_args.split()]  # fmt: skip
            peak, seconds, cpu = measured(cmd)
            cuts = score(truth, out)
            results[name] = {"peak_gib": peak, "wall_s": seconds, "cpu_s": cpu, **cuts}
            print(
                f"  {name:9s} peak RSS {peak:5.2f} GiB  wall {seconds:6.1f} s  CPU {cpu:6.1f} s  {json.dumps(cuts)}"
            )
    return {"minutes": args.minutes, "floor_gib": floor, **results}


if __name__ == "__main__":
    main()
