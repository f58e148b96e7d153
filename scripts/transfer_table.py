"""The issue-19 transfer table: rows (a)-(d) of scripts/transfer_table.sh, scored on the espeak-ng
test split, the same sentences read by Flite (held out of every row) and FSDD speaker yweweler.

    .venv/bin/python scripts/transfer_table.py --runs work/transfer --out work/transfer/table

Writes ``table.md`` (CER and WER per row and test set, the examples seen per training source, and
the issue's two goals checked) and ``table.png`` (CER per row, grouped by test set).
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

from granite_train.eval.report import read_results_json

ROWS = {
    "a": "(a) espeak-ng only",
    "b": "(b) espeak-ng + Festival",
    "c": "(c) (b) + acoustic variety",
    "d": "(d) (c) + FSDD george/jackson/nicolas",
}
SETS = {
    "espeak_test": "espeak-ng test",
    "flite_test": "Flite (held out)",
    "fsdd_yweweler": "FSDD yweweler (real)",
}


def read_row(run: Path) -> dict[str, dict[str, float]]:
    """-> {test set: {"cer": %, "wer": %, "utts": n}} of one row's ``eval/results.json``."""
    results = read_results_json(run / "eval" / "results.json")
    return {r.name: {"cer": 100 * r.cer, "wer": 100 * r.wer, "utts": r.num_utts} for r in results}


def seen_per_source(run: Path) -> dict[str, int]:
    """Examples seen per training source at the last logged validation (``data/seen/<source>``)."""
    seen: dict[str, int] = {}
    for path in sorted(run.rglob("metrics.csv")):
        with open(path, newline="") as f:
            for row in csv.DictReader(f):
                for key, value in row.items():
                    if key.startswith("data/seen/") and value not in ("", None):
                        seen[key.removeprefix("data/seen/")] = int(float(value))
    return seen


def goals(scores: dict[str, dict]) -> list[str]:
    """The issue's goals, each marked met / not met with its numbers."""
    lines = []
    if {"a", "c"} <= scores.keys():
        a, c = scores["a"]["flite_test"]["cer"], scores["c"]["flite_test"]["cer"]
        met = "met" if c <= a / 2 else "not met"
        lines.append(f"- (c) halves (a)'s CER on Flite: {c:.2f}% vs {a:.2f}% / 2 = {a / 2:.2f}%: **{met}**")
    if {"a", "d"} <= scores.keys():
        y = scores["d"]["fsdd_yweweler"]["cer"]
        lines.append(f"- (d) CER <= 30% on yweweler: {y:.2f}%: **{'met' if y <= 30 else 'not met'}**")
        drop = scores["d"]["espeak_test"]["cer"] - scores["a"]["espeak_test"]["cer"]
        met = "met" if drop <= 2 else "not met"
        lines.append(f"- (d) loses <= 2 points on the espeak-ng split vs (a): {drop:+.2f} points: **{met}**")
    return lines


def markdown(scores: dict[str, dict], seen: dict[str, dict[str, int]]) -> str:
    head = "| row | " + " | ".join(f"{v} CER %" for v in SETS.values()) + " | seen per source |"
    lines = [head, "| --- |" + " ---: |" * len(SETS) + " --- |"]
    for row, label in ROWS.items():
        if row not in scores:
            continue
        cells = [f"{scores[row][s]['cer']:.2f}" if s in scores[row] else "n/a" for s in SETS]
        counts = ", ".join(f"{k} {v}" for k, v in sorted(seen.get(row, {}).items())) or "-"
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {counts} |")
    wer = ["", "WER % (same runs):", "", "| row | " + " | ".join(SETS.values()) + " |"]
    wer.append("| --- |" + " ---: |" * len(SETS))
    for row, label in ROWS.items():
        if row in scores:
            wer.append(
                f"| {label} | "
                + " | ".join(f"{scores[row][s]['wer']:.2f}" for s in SETS if s in scores[row])
                + " |"
            )
    utts = {s: next((scores[r][s]["utts"] for r in scores if s in scores[r]), 0) for s in SETS}
    sizes = ", ".join(f"{SETS[s]} {n}" for s, n in utts.items())
    return "\n".join([*lines, *wer, "", f"Utterances: {sizes}.", "", "Goals:", "", *goals(scores)]) + "\n"


def plot(scores: dict[str, dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in ROWS if r in scores]
    fig, ax = plt.subplots(figsize=(7, 3.6))
    width = 0.8 / len(rows)
    for i, row in enumerate(rows):
        values = [scores[row].get(s, {}).get("cer", 0.0) for s in SETS]
        ax.bar([k + i * width for k in range(len(SETS))], values, width, label=ROWS[row])
    ax.set_xticks([k + width * (len(rows) - 1) / 2 for k in range(len(SETS))], list(SETS.values()))
    ax.set_ylabel("greedy CTC CER %")
    ax.axhline(30, color="grey", lw=0.8, ls="--")
    ax.legend(fontsize=7)
    ax.set_title("Stage 1 (tiny), 2400 steps: does synthetic speech transfer?", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=Path, default=Path("work/transfer"), help="folder with a/ b/ c/ d/")
    p.add_argument("--out", type=Path, default=Path("work/transfer/table"))
    args = p.parse_args(argv)
    scores = {r: read_row(args.runs / r) for r in ROWS if (args.runs / r / "eval" / "results.json").exists()}
    if not scores:
        raise SystemExit(
            f"no scored rows under {args.runs} (expected {'/, '.join(ROWS)}/ with eval/results.json)"
        )
    seen = {r: seen_per_source(args.runs / r) for r in scores}
    args.out.mkdir(parents=True, exist_ok=True)
    text = markdown(scores, seen)
    (args.out / "table.md").write_text(text)
    (args.out / "scores.json").write_text(json.dumps({"scores": scores, "seen": seen}, indent=2) + "\n")
    plot(scores, args.out / "table.png")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
