"""Issue 27's table of customer inputs, each run through ``granite-train finetune`` as a new user
would: what the command does now, how long it takes, and the message it prints.

    .venv/bin/python scripts/customer_data_rows.py --out work/customer_rows      # all rows, a markdown table

Each row builds its input under ``--out`` (FSDD clips from ``../shared/data/fsdd`` where it needs
real speech, generated audio elsewhere) and a tiny released-layout model; the rows that used to
hang must now exit non-zero within 60 s with the message quoted, the others run the data check
(``check=true``: no training) and show what it found. ``tests/test_finetune_customer_data.py``
runs the same rows.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

ROOT = Path(__file__).resolve().parents[1]
FSDD = ROOT.parent / "shared" / "data" / "fsdd" / "recordings"
SPEAKERS = ("george", "jackson", "nicolas", "yweweler")
DIGITS = "zero one two three four five six seven eight nine".split()


@dataclass
class Row:
    """One customer input: what it is, the finetune arguments, and what must come out."""

    name: str
    args: list[str]
    exit_code: int  # 2: a data error; 0: checked (check=true) and reported
    expect: str  # a text the output must contain


def _clips(folder: Path, per_speaker: int = 3) -> list[tuple[str, str, str]]:
    """(file name, transcript, speaker) of FSDD clips copied into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for speaker in SPEAKERS:
        for digit in range(per_speaker):
            name = f"{digit}_{speaker}_0.wav"
            (folder / name).write_bytes((FSDD / name).read_bytes())
            rows.append((name, DIGITS[digit], speaker))
    return rows


def _csv(path: Path, header: str, lines: list[str], encoding: str = "utf-8") -> Path:
    path.write_text("\n".join([header, *lines]) + "\n", encoding=encoding)
    return path


def all_missing(out: Path) -> Row:
    manifest = _csv(
        out / "m.csv", "audio,text,speaker", [f"calls/c{k}.wav,hello there,s{k % 2}" for k in range(4)]
    )
    return Row("every audio path missing", [f"data={manifest}"], 2, "missing_file: 4")


def other_text_column(out: Path) -> Row:
    clips = _clips(out)
    manifest = _csv(out / "m.csv", "audio,transcript,speaker", [f"{n},{t},{s}" for n, t, s in clips])
    return Row("transcript column named `transcript`", [f"data={manifest}"], 2, "set text_column=transcript")


def empty_transcripts(out: Path) -> Row:
    clips = _clips(out)
    manifest = _csv(out / "m.csv", "audio,text,speaker", [f"{n},,{s}" for n, _, s in clips])
    return Row("every transcript empty", [f"data={manifest}"], 2, "no_text: 12")


def split_takes_all(out: Path) -> Row:
    clips = _clips(out)
    manifest = _csv(out / "m.csv", "audio,text,speaker", [f"{n},{t},{s}" for n, t, s in clips])
    args = [f"data={manifest}", f"holdout_speakers=[{','.join(SPEAKERS)}]"]
    return Row("held-out split takes every record", args, 2, "nothing left to train on")


def bytes_only_parquet(out: Path) -> Row:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [
        {"audio": {"bytes": (FSDD / name).read_bytes(), "path": None}, "text": text}
        for name, text, _ in _clips(out / "c")
    ]
    pq.write_table(pa.Table.from_pylist(rows), out / "train.parquet")
    return Row("parquet of audio bytes, no path / id / speaker, holdout 0.2",
               [f"data={out / 'train.parquet'}", "holdout_share=0.2", "check=true"], 0, "held-out split by content")  # fmt: skip


def latin1(out: Path) -> Row:
    clips = _clips(out)
    lines = [f"{n},{t} café,{s}" for n, t, s in clips]
    manifest = _csv(out / "m.csv", "audio,text,speaker", lines, encoding="latin-1")
    return Row("manifest in Latin-1", [f"data={manifest}", "check=true"], 0, "| mine | 12 | 12 |")


def missing_path(out: Path) -> Row:
    return Row("data path that does not exist", [f"data={out / 'no_such_folder'}"], 2, "does not exist")


def few_speakers(out: Path) -> Row:
    clips = _clips(out)
    manifest = _csv(out / "m.csv", "audio,text,speaker", [f"{n},{t},{s}" for n, t, s in clips])
    return Row("default holdout_share=0.1, 4 speakers", [f"data={manifest}", "check=true"], 0,
               "held-out split by speaker: 2 of 4 speakers")  # fmt: skip


def two_hours(out: Path) -> Row:
    clips = _clips(out)
    with sf.SoundFile(
        out / "call.flac", "w", samplerate=16000, channels=1
    ) as f:  # 2 h, written a minute at a time
        minute = (0.01 * np.random.default_rng(0).standard_normal(16000 * 60)).astype(np.float32)
        for _ in range(120):
            f.write(minute)
    lines = ["call.flac,a two hour call,s9"] + [f"{n},{t},{s}" for n, t, s in clips]
    manifest = _csv(out / "m.csv", "audio,text,speaker", lines)
    return Row(
        "a 2-hour recording without segmentation", [f"data={manifest}", "check=true"], 0, "too_long: 1"
    )


def nemo_duration_zero(out: Path) -> Row:
    clips = _clips(out)
    lines = [json.dumps({"audio_filepath": n, "text": t, "speaker": s, "duration": 0}) for n, t, s in clips]
    (out / "m.jsonl").write_text("\n".join(lines) + "\n")
    return Row("NeMo manifest with `duration: 0`", [f"data={out / 'm.jsonl'}", "check=true"], 0,
               "fixed_duration_from_header: 12")  # fmt: skip


# the rows that hung before issue 27 (or were a traceback): each must now exit 2 with its message
FAILING = ("all_missing", "other_text_column", "empty_transcripts", "split_takes_all", "missing_path")
ROWS: list[Callable[[Path], Row]] = [
    all_missing, other_text_column, empty_transcripts, split_takes_all, bytes_only_parquet, latin1,
    missing_path, few_speakers, two_hours, nemo_duration_zero,
]  # fmt: skip


def run_row(row: Row, model: Path, out: Path, timeout: float = 120) -> tuple[int, float, str]:
    """(exit code, seconds, stdout + stderr) of ``granite-train finetune`` on the row's input."""
    command = [sys.executable, "-m", "granite_train.cli", "finetune", f"model={model}", *row.args,
               f"output_dir={out / 'run'}", "steps=2"]  # fmt: skip
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    return done.returncode, time.perf_counter() - start, done.stdout + done.stderr


def message_of(output: str) -> str:
    """The command's own error message (its first two lines: what, and the first reason)."""
    lines = output.splitlines()
    for k, line in enumerate(lines):
        if line.startswith("granite-train finetune:"):
            return " ".join(x.strip() for x in lines[k : k + 2])
    return ""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="work/customer_rows", help="folder for the inputs and runs")
    args = parser.parse_args(argv)
    from granite_train.models.tiny_release import build_tiny_released_model

    out = Path(args.out).resolve()
    model = build_tiny_released_model(out / "model")
    print("| input | exit | seconds | what the user sees |\n|---|---:|---:|---|")
    failures = 0
    for make in ROWS:
        folder = out / make.__name__
        folder.mkdir(parents=True, exist_ok=True)
        row = make(folder)
        code, seconds, output = run_row(row, model, folder)
        ok = code == row.exit_code and row.expect in output and seconds < 60
        failures += not ok
        seen = message_of(output) or next((line for line in output.splitlines() if row.expect in line), "")
        print(
            f"| {row.name} | {code} | {seconds:.1f} | `{seen.strip()[:300]}`{'' if ok else ' **UNEXPECTED**'} |"
        )
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
