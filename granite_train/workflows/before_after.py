"""The shared core of the workflow commands: score -> train -> score -> ``results.md`` / ``results.json``.

* ``finetune`` scores the released model, trains, scores the export: :func:`score_train_score`;
* ``add-language`` trains in resumable steps, then scores the given and the trained models in its
  ``eval`` step: :func:`score_before_after`;
* the demo scores what each stage trained: :meth:`Scoring.run`.

Each writes its results with :func:`write_results`, the place of the **data report**: a markdown
``data_report`` goes under ``## Data`` in ``results.md`` and ``data_counts`` under ``"data"`` in
``results.json`` (e.g. what each training source served and skipped).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from granite_train.data.sources import SourceSpec
from granite_train.eval.report import EvalResult
from granite_train.eval.settings import EvalSettings

if TYPE_CHECKING:
    from granite_train.training.run import TrainResult

DECODERS = ("ctc", "generate")


@dataclass(frozen=True)
class Scoring:
    """How one model is scored on the test sets.

    Attributes:
        label: its name in the results table (``speech LLM``, ``encoder (greedy CTC)``).
        key: its evaluation folders are ``<key>_before`` and ``<key>_after``.
        decoder: ``ctc`` (an encoder, greedy CTC: :func:`granite_train.eval.run.run_eval`) or
            ``generate`` (a speech LLM: :func:`granite_train.eval.generate.run_generate_eval`).
        settings: decoding and scoring settings.
    """

    label: str
    key: str
    decoder: str
    settings: EvalSettings = field(default_factory=EvalSettings)

    def __post_init__(self) -> None:
        if self.decoder not in DECODERS:
            raise ValueError(f"decoder must be one of {DECODERS}, got {self.decoder!r}")

    def run(self, model: str | Path, tests: Sequence[SourceSpec], folder: Path) -> list[EvalResult]:
        """Score ``model`` on ``tests``; the evaluation's own files go to ``folder``."""
        from granite_train.eval.generate import run_generate_eval
        from granite_train.eval.run import run_eval

        evaluate = run_eval if self.decoder == "ctc" else run_generate_eval
        results, _ = evaluate(model, tests, folder, self.settings)
        return results


@dataclass
class ScoreRow:
    """One test set of one model, before and after (rates as fractions; None: not scored)."""

    model: str
    test_set: str
    utterances: int
    wer_before: float | None
    wer_after: float | None
    cer_before: float | None
    cer_after: float | None
    rtfx_after: float | None

    def to_json(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "test set": self.test_set,
            "utterances": self.utterances,
            "wer_before": self.wer_before,
            "wer_after": self.wer_after,
            "cer_before": self.cer_before,
            "cer_after": self.cer_after,
            "rtfx_after": self.rtfx_after,
        }

    @classmethod
    def from_json(cls, row: Mapping[str, Any]) -> ScoreRow:
        """Inverse of :meth:`to_json` (a resumed run reads its rows back; ``utts``: older runs)."""
        utterances = row["utterances"] if "utterances" in row else row["utts"]
        rates = ("wer_before", "wer_after", "cer_before", "cer_after", "rtfx_after")
        return cls(row["model"], row["test set"], utterances, *(row.get(k) for k in rates))


def compare(label: str, before: Sequence[EvalResult] | None, after: Sequence[EvalResult]) -> list[ScoreRow]:
    """Rows of ``label``'s table: each test set before (None: not scored) and after."""
    befores = list(before) if before is not None else [None] * len(after)
    return [
        ScoreRow(
            model=label,
            test_set=a.name,
            utterances=a.num_utts,
            wer_before=b.wer if b is not None else None,
            wer_after=a.wer,
            cer_before=b.cer if b is not None else None,
            cer_after=a.cer,
            rtfx_after=a.rtfx,
        )
        for b, a in zip(befores, after)
    ]


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}"


def comparison_table(rows: Sequence[ScoreRow], model_column: bool = False) -> str:
    """Markdown: per test set (and model, with ``model_column``) WER and CER before and after."""
    header = ["test set", "utterances", "WER before %", "WER after %", "change (points)", "CER before %",
              "CER after %"]  # fmt: skip
    header = ["model", *header] if model_column else header
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        known = r.wer_before is not None and r.wer_after is not None
        change = f"{100 * (r.wer_after - r.wer_before):+.2f}" if known else "-"  # type: ignore[operator]
        cells = [r.test_set, str(r.utterances), _pct(r.wer_before), _pct(r.wer_after), change,
                 _pct(r.cer_before), _pct(r.cer_after)]  # fmt: skip
        lines.append("| " + " | ".join([r.model, *cells] if model_column else cells) + " |")
    return "\n".join(lines) + "\n"


def _announce(tag: str, scoring: Scoring, model: str | Path, when: str) -> None:
    print(f"[{tag}] scoring {scoring.label} `{model}` ({when})", flush=True)


def score_before_after(
    pairs: Sequence[tuple[Scoring, str | Path, str | Path]],
    tests: Sequence[SourceSpec],
    folder: Path,
    tag: str = "eval",
) -> list[ScoreRow]:
    """Each ``(scoring, model before, model after)`` scored on ``tests``: the rows of the table."""
    rows = []
    for scoring, before_model, after_model in pairs:
        _announce(tag, scoring, before_model, "before")
        before = scoring.run(before_model, tests, folder / f"{scoring.key}_before")
        _announce(tag, scoring, after_model, "after")
        rows += compare(
            scoring.label, before, scoring.run(after_model, tests, folder / f"{scoring.key}_after")
        )
    return rows


@dataclass
class TrainedAndScored:
    """What :func:`score_train_score` did: the table's rows, the training run and its export."""

    rows: list[ScoreRow]
    trained: TrainResult
    export: Path


def score_train_score(
    scoring: Scoring,
    model: str | Path,
    tests: Sequence[SourceSpec],
    folder: Path,
    train: Callable[[], TrainResult],
    export: str,
    tag: str = "eval",
) -> TrainedAndScored:
    """Score ``model`` on ``tests``, ``train()``, score the run's ``export`` folder on the same tests.

    Scoring first fails fast on a broken test set and shows the baseline before training starts.
    """
    _announce(tag, scoring, model, "before")
    before = scoring.run(model, tests, folder / f"{scoring.key}_before")
    trained = train()
    exported = trained.output_dir / export
    _announce(tag, scoring, exported, "after")
    after = scoring.run(exported, tests, folder / f"{scoring.key}_after")
    return TrainedAndScored(compare(scoring.label, before, after), trained, exported)


def write_results(
    out: Path,
    title: str,
    intro: str,
    table: str,
    payload: Mapping[str, Any],
    sections: Sequence[str] = (),
    data_report: str | None = None,
    data_counts: Mapping[str, Any] | None = None,
) -> tuple[Path, Path]:
    """Write ``results.md`` and ``results.json`` in ``out``; returns their paths.

    ``results.md``: ``# title``, ``intro``, ``table``, then ``data_report`` under ``## Data`` (when
    given), then ``sections`` (markdown, each with its own heading). ``results.json``: ``payload``,
    plus ``data_counts`` under ``"data"`` (when given).
    """
    blocks = [f"# {title}", intro, table]
    if data_report is not None:
        blocks.append(f"## Data\n\n{data_report}")
    blocks += sections
    markdown = "\n\n".join(b.strip("\n") for b in blocks if b.strip()) + "\n"
    document = {**payload, "data": dict(data_counts)} if data_counts is not None else dict(payload)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.md").write_text(markdown, encoding="utf-8")
    (out / "results.json").write_text(
        json.dumps(document, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
    )
    return out / "results.md", out / "results.json"


__all__ = [
    "DECODERS",
    "ScoreRow",
    "Scoring",
    "TrainedAndScored",
    "compare",
    "comparison_table",
    "score_before_after",
    "score_train_score",
    "write_results",
]
