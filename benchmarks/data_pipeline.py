"""Data pipeline benchmark: front-end throughput and bucketing padding, as ratios in one process.

    .venv/bin/python benchmarks/data_pipeline.py            # FSDD real speech + a synthetic corpus
    .venv/bin/python benchmarks/data_pipeline.py --quick    # smaller, for a smoke run

1. Audio-seconds per second per core through decode -> resample (8 kHz -> 16 kHz) -> log-mel
   features, on the real FSDD recordings: our pipeline (one process, one torch thread) vs the
   transformers ``GraniteSpeechFeatureExtractor`` applied per example through ``datasets.map``
   (also one thread). Both read the same audiofolder with ``datasets``; both timings run from
   opening the dataset to the last feature matrix.
2. Padded-frame fraction of batches from our pipeline with duration bucketing vs the same
   pipeline with a single bucket (arrival order), on a synthetic corpus of mixed durations
   (log-uniform 0.5-20 s), under the same frame budget. Target: <= 5% padded frames.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from granite_train.audio.io import encode_flac  # noqa: E402
from granite_train.data.collate import Collator  # noqa: E402
from granite_train.data.pipeline import PipelineConfig, SpeechDataPipeline, build_dataloader  # noqa: E402
from granite_train.data.prepare import PrepareConfig  # noqa: E402
from granite_train.data.report import DataReport  # noqa: E402
from granite_train.data.sources import SourceSpec  # noqa: E402


def ours_throughput(fsdd: Path, limit: int | None) -> tuple[float, int]:
    """Audio seconds per wall second of our pipeline (decode, resample, validate, bucket, features)."""
    cfg = PipelineConfig(
        sources=[SourceSpec("fsdd", str(fsdd), kind="audiofolder", id_column=None, language="en")],
        shuffle_buffer=64,
        max_frames=4000,
        prepare=PrepareConfig(min_duration=0.05),
    )
    start = time.perf_counter()
    loader = build_dataloader(
        SpeechDataPipeline(cfg, rank=0, world_size=1), num_workers=0, collator=Collator()
    )
    report = DataReport()
    for batch in loader:
        assert batch.features is not None
        report.update(batch)
        if limit is not None and report.utterances >= limit:
            break
    return report.audio_seconds / (time.perf_counter() - start), report.utterances


def reference_throughput(fsdd: Path, limit: int | None) -> tuple[float, int, str]:
    """Audio seconds per wall second of transformers' extractor through ``datasets.map``."""
    import datasets
    import torchaudio
    from transformers import GraniteSpeechFeatureExtractor

    fe = GraniteSpeechFeatureExtractor()
    start = time.perf_counter()  # both sides are timed from opening the dataset to the last feature
    ds = datasets.load_dataset("audiofolder", data_dir=str(fsdd), split="train")
    if limit is not None:
        ds = ds.select(range(min(limit, len(ds))))
    try:  # datasets' own decoding (torchcodec + FFmpeg), as most users would write it
        ds16 = ds.cast_column("audio", datasets.Audio(sampling_rate=16000))
        ds16[0]["audio"]
        how = "datasets Audio(sampling_rate=16000) decoding"

        def extract(ex):
            samples = ex["audio"].get_all_samples()
            wave = samples.data.mean(0)
            feats = fe(wave.unsqueeze(0))["input_features"][0]
            return {"input_features": feats.numpy(), "seconds": wave.shape[-1] / 16000}
    except Exception:  # no FFmpeg: decode with soundfile and resample with torchaudio per example
        import soundfile as sf

        ds16 = ds.cast_column("audio", datasets.Audio(decode=False))
        how = "soundfile decode + torchaudio.functional.resample (no FFmpeg for datasets' decoder)"

        def extract(ex):
            audio = ex["audio"]
            data, sr = sf.read(audio["path"] if audio["bytes"] is None else audio["bytes"], dtype="float32")
            wave = torch.from_numpy(data.mean(-1) if data.ndim > 1 else data)
            wave = torchaudio.functional.resample(wave, sr, 16000)
            feats = fe(wave.unsqueeze(0))["input_features"][0]
            return {"input_features": feats.numpy(), "seconds": wave.shape[-1] / 16000}

    out = ds16.map(extract, remove_columns=ds16.column_names, load_from_cache_file=False, keep_in_memory=True)
    wall = time.perf_counter() - start
    return float(np.sum(out["seconds"])) / wall, len(out), how


def write_mixed_corpus(root: Path, n: int, seed: int = 0) -> None:
    """``n`` utterances with log-uniform durations in 0.5-20 s (quiet tones + noise: small FLAC)."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from datasets import Audio, Features, Value

    feats = Features({"id": Value("string"), "audio": Audio(sampling_rate=16000), "text": Value("string")})
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        dur = float(np.exp(rng.uniform(np.log(0.5), np.log(20.0))))
        t = np.arange(int(dur * 16000)) / 16000
        wave = 0.1 * np.sin(2 * np.pi * rng.uniform(100, 400) * t) + 0.003 * rng.standard_normal(t.shape)
        rows.append(
            {
                "id": f"u{i:05d}",
                "audio": {"bytes": encode_flac(wave.astype(np.float32), 16000), "path": None},
                "text": "mixed duration utterance",
            }
        )
    root.mkdir(parents=True, exist_ok=True)
    for s in range(4):
        pq.write_table(
            pa.Table.from_pylist(rows[s::4], schema=feats.arrow_schema), root / f"train-{s:05d}.parquet"
        )


def padding_fraction(corpus: Path, bucketed: bool, max_frames: int, num_buckets: int) -> tuple[float, int]:
    cfg = PipelineConfig(
        sources=[SourceSpec("mixed", str(corpus))],
        shuffle_buffer=512,
        max_frames=max_frames,
        num_buckets=num_buckets,
        bucket_bounds=None if bucketed else [1000.0],  # one bucket = batches in arrival order
    )
    loader = build_dataloader(
        SpeechDataPipeline(cfg, rank=0, world_size=1), collator=Collator(compute_features=False)
    )
    report = DataReport()
    for batch in loader:
        report.update(batch)
    return report.padding_fraction, report.batches


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--fsdd", type=Path, default=REPO.parent / "shared" / "data" / "fsdd")
    parser.add_argument("--quick", action="store_true", help="fewer utterances (smoke run)")
    parser.add_argument("--max-frames", type=int, default=12000, help="padded frames per batch")
    parser.add_argument("--num-buckets", type=int, default=PipelineConfig.num_buckets)
    args = parser.parse_args()
    torch.set_num_threads(1)  # per-core figures
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    limit = 300 if args.quick else None

    print(f"torch threads: {torch.get_num_threads()}  (figures are per core)")
    ref, n_ref, how = reference_throughput(args.fsdd, limit)
    ours, n_ours = ours_throughput(args.fsdd, limit)
    print("\n== 1. decode -> resample -> features (FSDD, 8 kHz real speech) ==")
    print(f"reference: transformers GraniteSpeechFeatureExtractor via datasets.map [{how}]")
    print(f"  reference   {ref:9.1f} audio-s/s/core  ({n_ref} utterances)")
    print(f"  ours        {ours:9.1f} audio-s/s/core  ({n_ours} utterances)")
    print(f"  ratio ours/reference: {ours / ref:.2f}x")

    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "mixed"
        write_mixed_corpus(corpus, 300 if args.quick else 1200)
        bucketed, nb = padding_fraction(corpus, True, args.max_frames, args.num_buckets)
        plain, np_ = padding_fraction(corpus, False, args.max_frames, args.num_buckets)
    print("\n== 2. padded frames, mixed durations 0.5-20 s, budget", args.max_frames, "frames/batch ==")
    print(f"  unbucketed  {100 * plain:6.2f}% padded  ({np_} batches)")
    print(f"  bucketed    {100 * bucketed:6.2f}% padded  ({nb} batches, {args.num_buckets} buckets)")
    print(f"  ratio unbucketed/bucketed padding: {plain / max(bucketed, 1e-9):.1f}x  (target bucketed <= 5%)")


if __name__ == "__main__":
    main()
