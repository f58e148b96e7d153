"""Per-dataset evaluation results: JSON files and a markdown table.

RTFx follows the Open ASR leaderboard: total audio seconds over total wall-clock seconds of
inference, feature extraction and decoding included (RECIPE.md "Evaluation").
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any


@dataclasses.dataclass
class EvalResult:
    """Scores of one dataset. ``wer`` / ``cer`` are fractions (``None`` if undefined)."""

    name: str
    num_utts: int
    wer: float | None
    cer: float | None
    normalizer: str
    normalizer_version: str | None
    audio_seconds: float
    wall_seconds: float
    details: dict[str, Any] = dataclasses.field(default_factory=dict)
    """Anything else worth keeping: edit counts, language, model, decoding settings."""

    @property
    def rtfx(self) -> float | None:
        """Inverse real-time factor: audio seconds per wall-clock second (``None`` if no time)."""
        if self.wall_seconds <= 0:
            return None
        return self.audio_seconds / self.wall_seconds

    @classmethod
    def from_metrics(
        cls, name: str, metrics: Mapping[str, Any], audio_seconds: float, wall_seconds: float
    ) -> EvalResult:
        """Build from the dict of :func:`granite_train.eval.metrics.error_rates`."""
        info = metrics["normalizer"]
        skip = {"wer", "cer", "num_utts", "normalizer"}
        return cls(
            name=name,
            num_utts=int(metrics["num_utts"]),
            wer=metrics["wer"],
            cer=metrics["cer"],
            normalizer=info["name"],
            normalizer_version=info["version"],
            audio_seconds=float(audio_seconds),
            wall_seconds=float(wall_seconds),
            details={k: v for k, v in metrics.items() if k not in skip},
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain dict with ``rtfx`` added (JSON-ready)."""
        return {**dataclasses.asdict(self), "rtfx": self.rtfx}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> EvalResult:
        """Inverse of :meth:`to_dict`; the derived ``rtfx`` and unknown keys are ignored."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


def write_results_json(results: Sequence[EvalResult], path: str | Path) -> Path:
    """Write ``{"results": [...]}`` to ``path`` (parents created); strict JSON, no NaN."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"results": [r.to_dict() for r in results]}
    path.write_text(json.dumps(payload, indent=2, ensure_ascii=False, allow_nan=False) + "\n")
    return path


def write_result_files(
    results: Sequence[EvalResult], out: str | Path, title: str, settings: str, table: str
) -> None:
    """``results.json`` and ``results.md`` (title, settings line, table, unscored records) in ``out``."""
    out = Path(out)
    write_results_json(results, out / "results.json")
    skips = [f"- {r.name}: {r.details['skipped']}" for r in results if r.details.get("skipped")]
    footer = "\nRecords that could not be scored:\n\n" + "\n".join(skips) + "\n" if skips else ""
    (out / "results.md").write_text(f"# {title}\n\n{settings}\n\n{table}{footer}")


def read_results_json(path: str | Path) -> list[EvalResult]:
    """Read a file written by :func:`write_results_json`."""
    payload = json.loads(Path(path).read_text())
    return [EvalResult.from_dict(r) for r in payload["results"]]


def percent(rate: float | None) -> str:
    return "n/a" if rate is None or math.isnan(rate) else f"{100 * rate:.2f}"


def normalizer_label(r: EvalResult) -> str:
    return r.normalizer if not r.normalizer_version else f"{r.normalizer} ({r.normalizer_version})"


def results_to_markdown(results: Sequence[EvalResult], average: bool = False) -> str:
    """Markdown table: dataset, utts, WER %, CER %, RTFx, normalizer.

    With ``average=True`` a last row gives the unweighted mean WER / CER over the datasets that
    have one (the Open ASR leaderboard's "average WER") and the overall RTFx (all audio over
    all wall time).
    """
    lines = [
        "| dataset | utts | WER % | CER % | RTFx | normalizer |",
        "| --- | ---: | ---: | ---: | ---: | --- |",
    ]

    def row(name: str, utts: int, wer, cer, rtfx, norm: str) -> str:
        rtfx_s = "n/a" if rtfx is None else f"{rtfx:.1f}"
        return f"| {name} | {utts} | {percent(wer)} | {percent(cer)} | {rtfx_s} | {norm} |"

    for r in results:
        lines.append(row(r.name, r.num_utts, r.wer, r.cer, r.rtfx, normalizer_label(r)))
    if average and results:

        def mean(values):
            values = [v for v in values if v is not None]
            return sum(values) / len(values) if values else None

        wall = sum(r.wall_seconds for r in results)
        rtfx = sum(r.audio_seconds for r in results) / wall if wall > 0 else None
        norms = sorted({normalizer_label(r) for r in results})
        lines.append(
            row(
                "**average**",
                sum(r.num_utts for r in results),
                mean(r.wer for r in results),
                mean(r.cer for r in results),
                rtfx,
                ", ".join(norms),
            )
        )
    return "\n".join(lines) + "\n"


def write_hypotheses(rows: Sequence[Mapping[str, Any]], path: str | Path) -> Path:
    """One JSON object per line (per utterance: id, reference, hypothesis, ...)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return path
