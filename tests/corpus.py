"""Tiny synthetic corpora for data tests: no TTS, no hub, fully deterministic."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import soundfile as sf
from datasets import Audio, Features, Value

FEATURES = Features(
    {
        "id": Value("string"),
        "audio": Audio(sampling_rate=16000),
        "text": Value("string"),
        "language": Value("string"),
    }
)


def speechlike(duration: float, sr: int = 16000, seed: int = 0, channels: int = 1) -> np.ndarray:
    """Amplitude-modulated noise: non-silent, finite, with a duration we choose."""
    rng = np.random.default_rng(seed)
    n = int(round(duration * sr))
    t = np.arange(n) / sr
    wave = 0.1 * rng.standard_normal(n) * (0.6 + 0.4 * np.sin(2 * np.pi * 3 * t))
    wave = wave.astype(np.float32)
    return np.stack([wave] * channels, axis=1) if channels > 1 else wave


def audio_bytes(wave: np.ndarray, sr: int = 16000, fmt: str = "FLAC") -> bytes:
    buf = io.BytesIO()
    sf.write(buf, wave, sr, format=fmt, subtype="FLOAT" if fmt == "WAV" else None)
    return buf.getvalue()


def write_parquet(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    table = pa.Table.from_pylist(rows, schema=FEATURES.arrow_schema)
    pq.write_table(table, path)
    return path


def make_corpus(
    root: Path,
    name: str,
    n: int,
    num_shards: int = 2,
    durations: tuple[float, float] = (0.5, 3.0),
    seed: int = 0,
    language: str = "en",
) -> list[str]:
    """Write ``n`` valid utterances as ``num_shards`` parquet files; returns their ids."""
    rng = np.random.default_rng(seed)
    words = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel"]
    rows = []
    for i in range(n):
        dur = float(rng.uniform(*durations))
        text = " ".join(rng.choice(words, size=max(1, int(dur * 1.5))))
        rows.append(
            {
                "id": f"{name}-{i:04d}",
                "audio": {"bytes": audio_bytes(speechlike(dur, seed=seed * 100_000 + i)), "path": None},
                "text": text,
                "language": language,
            }
        )
    for s in range(num_shards):
        write_parquet(root / name / f"shard-{s:03d}.parquet", rows[s::num_shards])
    return [r["id"] for r in rows]
