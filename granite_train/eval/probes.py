"""Hallucination probes: what a speech LLM says when there is nothing (or almost nothing) to say.

IBM published no hallucination evaluation. A language model behind an audio encoder can answer
silence, noise or a single word with a fluent invented sentence, and WER on long utterances hides
it. The built-in probe set, written as a parquet test set and decoded like any other:

* ``silence``: dither at about -80 dBFS (digital zeros are not what a microphone records);
* ``noise``: white noise at -35 and -20 dBFS;
* ``word``: one English word spoken by espeak-ng (skipped, and logged, when it is not installed).

:func:`probe_report` gives, per kind, the share of non-empty outputs (any word for silence and
noise is invented) and of over-long outputs (more than twice the reference's words; more than
none for silence and noise), and the mean words per output.
"""

from __future__ import annotations

import io
import logging
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import soundfile as sf

from granite_train.text.normalize import get_normalizer

log = logging.getLogger(__name__)

__all__ = ["PROBE_KINDS", "PROBE_WORDS", "probe_markdown", "probe_report", "write_probe_set"]

PROBE_KINDS = ("silence", "noise", "word")
PROBE_WORDS = ("yes", "no", "seven", "hello", "stop", "water", "nine", "thanks")
SAMPLE_RATE = 16000
_SECONDS = (1.0, 2.5, 6.0)


def _flac(wave: np.ndarray, sr: int = SAMPLE_RATE) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, wave.astype(np.float32), sr, format="FLAC")
    return buf.getvalue()


def _espeak(word: str) -> tuple[np.ndarray, int] | None:
    exe = shutil.which("espeak-ng")
    if exe is None:
        return None
    wav = subprocess.run([exe, "-v", "en-us", "--stdout", word], capture_output=True, check=True).stdout
    wave, sr = sf.read(io.BytesIO(wav), dtype="float32")
    return wave, sr


def write_probe_set(out: str | Path, seed: int = 0) -> Path:
    """Write the probe set as ``out/test-00000.parquet`` (columns id, audio, text, language, probe)."""
    rng = np.random.default_rng(seed)
    rows: list[dict[str, Any]] = []
    for k, seconds in enumerate(_SECONDS):
        n = int(seconds * SAMPLE_RATE)
        rows.append(
            {
                "id": f"silence_{k}",
                "audio": _flac(1e-4 * rng.standard_normal(n)),
                "text": "",
                "probe": "silence",
            }
        )
        for level_db in (-35, -20):
            amplitude = 10 ** (level_db / 20)
            rows.append(
                {
                    "id": f"noise_{level_db}_{k}",
                    "audio": _flac(np.clip(amplitude * rng.standard_normal(n), -1, 1)),
                    "text": "",
                    "probe": "noise",
                }
            )
    words = 0
    for k, word in enumerate(PROBE_WORDS):
        spoken = _espeak(word)
        if spoken is None:
            log.warning("espeak-ng is not installed: the one-word probes are left out")
            break
        wave, sr = spoken
        pad = np.zeros(int(0.3 * sr), dtype=np.float32)  # a little room before and after, as recorded
        rows.append(
            {
                "id": f"word_{k}_{word}",
                "audio": _flac(np.concatenate([pad, wave, pad]), sr),
                "text": word,
                "probe": "word",
            }
        )
        words += 1
    table = pa.table(
        {
            "id": [r["id"] for r in rows],
            "audio": [{"bytes": r["audio"], "path": None} for r in rows],
            "text": [r["text"] for r in rows],
            "language": ["en"] * len(rows),
            "probe": [r["probe"] for r in rows],
        }
    )
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, out / "test-00000.parquet")
    log.info("probe set: %d clips (%d one-word) in %s", len(rows), words, out)
    return out


def _kind(utt_id: str) -> str:
    """The probe kind from a row id (``probes/noise_-20_1`` -> ``noise``)."""
    name = utt_id.rsplit("/", 1)[-1]
    return next((k for k in PROBE_KINDS if name.startswith(k + "_")), "other")


def probe_report(rows: Sequence[Mapping[str, Any]], normalizer: str = "whisper_english") -> dict[str, Any]:
    """Per probe kind: clips, non-empty share, over-long share, mean words per output (normalised)."""
    norm = get_normalizer(normalizer)
    out: dict[str, Any] = {}
    for kind in PROBE_KINDS:
        mine = [r for r in rows if _kind(r["id"]) == kind]
        if not mine:
            continue
        hyp_words = [len(norm(r["hypothesis"]).split()) for r in mine]
        ref_words = [len(norm(r["reference"]).split()) for r in mine]
        out[kind] = {
            "clips": len(mine),
            "non_empty_share": sum(h > 0 for h in hyp_words) / len(mine),
            "overlong_share": sum(h > 2 * r for h, r in zip(hyp_words, ref_words)) / len(mine),
            "mean_words": sum(hyp_words) / len(mine),
            "examples": [r["hypothesis"] for r in mine[:3]],
        }
    return out


def probe_markdown(report: Mapping[str, Any]) -> str:
    lines = [
        "| probe | clips | non-empty % | > 2x ref length % | mean words | e.g. |",
        "| --- | ---: | ---: | ---: | ---: | --- |",
    ]
    for kind, r in report.items():
        example = next((e for e in r["examples"] if e), "")
        example = (example[:60] + "...") if len(example) > 60 else example
        lines.append(
            f"| {kind} | {r['clips']} | {100 * r['non_empty_share']:.0f} | {100 * r['overlong_share']:.0f} | "
            f"{r['mean_words']:.1f} | {example!r} |"
        )
    return "\n".join(lines) + "\n"
