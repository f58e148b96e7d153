"""Does the loader keep up? Audio-seconds per second per core of the training loader, by format and storage.

    .venv/bin/python benchmarks/loader_throughput.py                 # local shards, 4 codecs
    .venv/bin/python benchmarks/loader_throughput.py --s3            # also through a local S3 server
    .venv/bin/python benchmarks/loader_throughput.py --quick         # smaller, for a smoke run

A synthetic corpus (speech-like noise, log-uniform 1-20 s: the durations of read speech) is staged
with ``granite-train stage``'s code into parquet shards of FLAC, Opus, MP3 and WAV bytes at 16 kHz.
Each staged folder is then read by the training loader itself (``SpeechDataPipeline`` +
``Collator``: decode, checks, duration bucketing, padded log-mel features), in this one process
with one torch thread and no DataLoader workers: one core. ``--s3`` starts moto's S3 server on
localhost, uploads the same shards and reads them through ``s3://`` URLs (needs ``moto[server]``
and ``s3fs``). The reference row, read in the same process, is the pre-staging layout: WAV bytes at
8 kHz that the loader must also resample (what the 285x of RESULTS' data-pipeline section
measured on FSDD). Prints a markdown table and writes ``loader_throughput.json`` under ``--out``.
``granite-train plan`` turns the per-core figure into cores per GPU for a recipe.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from granite_train.audio.encode import encode_audio  # noqa: E402
from granite_train.data.collate import Collator  # noqa: E402
from granite_train.data.pipeline import PipelineConfig, SpeechDataPipeline, build_dataloader  # noqa: E402
from granite_train.data.prepare import PrepareConfig  # noqa: E402
from granite_train.data.report import DataReport  # noqa: E402
from granite_train.data.sources import SourceSpec  # noqa: E402
from granite_train.data.stage import StageSettings, stage  # noqa: E402

CODECS = ("flac", "opus", "mp3", "wav")
PREPARE = PrepareConfig(min_duration=0.5, max_duration=30.0, ctc_targets=False, check_ctc_length=False)


def speechlike(seconds: float, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    n = int(seconds * sample_rate)
    t = np.arange(n) / sample_rate
    return (0.1 * rng.standard_normal(n) * (0.6 + 0.4 * np.sin(2 * np.pi * 3 * t))).astype(np.float32)


def write_source(root: Path, n: int, sample_rate: int, seed: int = 0) -> Path:
    """``n`` utterances of log-uniform 1-20 s as WAV bytes at ``sample_rate`` in 4 parquet files."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        seconds = float(np.exp(rng.uniform(np.log(1.0), np.log(20.0))))
        wave = speechlike(seconds, sample_rate, rng)
        rows.append({"id": f"u{i:05d}", "audio": {"bytes": encode_audio(wave, sample_rate, "wav"), "path": None},
                     "text": "words " * max(1, int(seconds * 2)), "language": "en"})  # fmt: skip
    folder = root / f"raw_{sample_rate}"
    folder.mkdir(parents=True, exist_ok=True)
    audio = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    schema = pa.schema(
        [("id", pa.string()), ("audio", audio), ("text", pa.string()), ("language", pa.string())]
    )
    for k in range(4):
        pq.write_table(pa.Table.from_pylist(rows[k::4], schema=schema), folder / f"train-{k:05d}.parquet")
    return folder


def loader_throughput(path: str, storage_options: dict | None = None, max_frames: int = 12000) -> dict:
    """Audio seconds per wall second of the training loader over one source (one core)."""
    spec = SourceSpec(
        "bench",
        path,
        kind="parquet",
        id_column="id",
        language="en",
        storage_options=dict(storage_options or {}),
    )
    config = PipelineConfig(sources=[spec], shuffle_buffer=64, max_frames=max_frames, prepare=PREPARE)
    start = time.perf_counter()
    loader = build_dataloader(
        SpeechDataPipeline(config, rank=0, world_size=1), num_workers=0, collator=Collator()
    )
    report = DataReport()
    for batch in loader:
        assert batch.features is not None
        report.update(batch)
    wall = time.perf_counter() - start
    return {"audio_seconds": report.audio_seconds, "wall_seconds": wall, "utterances": report.utterances,
            "x_real_time": report.audio_seconds / wall}  # fmt: skip


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalS3:
    """moto's S3 server on localhost (a real HTTP S3 endpoint), stopped on exit."""

    def __init__(self) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        import urllib.request

        for _ in range(100):
            try:
                urllib.request.urlopen(self.url, timeout=1)
                break
            except OSError:
                time.sleep(0.2)
        self.options = {"key": "test", "secret": "test", "client_kwargs": {"endpoint_url": self.url}}

    def upload(self, local: Path, url: str) -> None:
        import s3fs

        fs = s3fs.S3FileSystem(**self.options)
        bucket = url.removeprefix("s3://").split("/", 1)[0]
        if not fs.exists(bucket):
            fs.mkdir(bucket)
        fs.put(str(local), url.removeprefix("s3://"), recursive=True)

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--utterances", type=int, default=240, help="utterances (~25 min of audio at 240)")
    parser.add_argument("--quick", action="store_true", help="40 utterances (a smoke run)")
    parser.add_argument("--codecs", nargs="+", default=list(CODECS), choices=CODECS)
    parser.add_argument("--s3", action="store_true", help="also read the shards through a local S3 server")
    parser.add_argument("--rounds", type=int, default=3, help="passes per row (the median is reported)")
    parser.add_argument("--out", type=Path, default=REPO / "work" / "loader_throughput")
    args = parser.parse_args()
    torch.set_num_threads(1)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    n = 40 if args.quick else args.utterances
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        raw16, raw8 = write_source(root, n, 16000), write_source(root, n, 8000)
        staged = {}
        for codec in args.codecs:
            settings = StageSettings(rows_per_shard=max(1, n // 4), codec=codec, prepare=PREPARE)
            stage([SourceSpec("bench", str(raw16), kind="parquet")], str(root / codec), settings)
            staged[codec] = root / codec / "bench"
        # (format, storage, path, storage options): every row, then --rounds interleaved passes
        configs = [("wav 8 kHz, resampled (pre-staging)", "local", str(raw8), None)]
        configs += [
            (f"{codec} 16 kHz (staged)", "local", str(folder), None) for codec, folder in staged.items()
        ]
        server = LocalS3() if args.s3 else None
        try:
            if server is not None:
                for codec, folder in staged.items():
                    server.upload(folder, f"s3://bench/{codec}")
                    configs.append((f"{codec} 16 kHz (staged)", "S3 (moto, localhost)", f"s3://bench/{codec}",
                                    server.options))  # fmt: skip
            loader_throughput(str(raw8))  # warm-up: imports, first dataset open
            passes: list[list[dict]] = [[] for _ in configs]
            for _ in range(args.rounds):
                for i, (_, _, path, options) in enumerate(configs):
                    passes[i].append(loader_throughput(path, options))
        finally:
            if server is not None:
                server.close()
        for (fmt, storage, _, _), results in zip(configs, passes):
            best = sorted(results, key=lambda r: r["x_real_time"])[len(results) // 2]  # the median pass
            rows.append({"format": fmt, "storage": storage, **best,
                         "rounds": [r["x_real_time"] for r in results]})  # fmt: skip
        sizes = {
            codec: sum(f.stat().st_size for f in folder.glob("*.parquet")) for codec, folder in staged.items()
        }
    audio_hours = rows[0]["audio_seconds"] / 3600
    lines = [f"Loader throughput, one core ({n} utterances, {audio_hours * 60:.1f} min of audio, 1-20 s each)", "",
             "| audio format | storage | x real time per core | MB per audio hour |", "| --- | --- | ---: | ---: |"]  # fmt: skip
    for row in rows:
        codec = row["format"].split()[0]
        size = f"{sizes[codec] / 1e6 / audio_hours:,.0f}" if "staged" in row["format"] else ""
        row["mb_per_audio_hour"] = sizes[codec] / 1e6 / audio_hours if size else None
        lines.append(f"| {row['format']} | {row['storage']} | {row['x_real_time']:,.0f} | {size} |")
    table = "\n".join(lines)
    print(table)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "loader_throughput.json").write_text(json.dumps(rows, indent=2) + "\n")
    (args.out / "loader_throughput.md").write_text(table + "\n")


if __name__ == "__main__":
    main()
