"""Joint CTC / LLM rescoring: WER over the CTC weight, read from one `decoding=rescore` evaluation.

    .venv/bin/granite-train eval model_path=DIR decoding=rescore prompt_draft=ctc output_dir=OUT/eval_rescore ...
    .venv/bin/python benchmarks/ctc_rescore_curve.py --hypotheses OUT/eval_rescore/hypotheses.jsonl --out OUT/rescore_curve

Every row of a rescoring run's ``hypotheses.jsonl`` holds each candidate (the LLM's beams and the
greedy CTC transcript) with its CTC and LLM log-likelihoods, so the choice at any weight is a
re-pick, no decoding (:func:`granite_train.eval.ctc_rescore.pick_candidate`). Rows: each weight; the
LLM's top beam (what beam search alone outputs); the CTC transcript alone; and the oracle (per
utterance the candidate with the fewest word errors: what a perfect rescorer could reach from this
n-best). Scored as the eval scored them (Whisper English normaliser for English). Writes
``curve.json``, ``curve.md`` and ``curve.png``. The weight the eval decoded with was fixed before the
run; the curve is read, not used to pick a weight on the same test split.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from granite_train.eval.ctc_rescore import pick_candidate  # noqa: E402
from granite_train.eval.metrics import error_rates  # noqa: E402

DEFAULT_WEIGHTS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)


def read_rows(path: Path) -> list[dict]:
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not rows or any("candidates" not in r for r in rows):
        raise SystemExit(
            f"{path}: not the hypotheses of a `granite-train eval decoding=rescore` run (no candidates)"
        )
    return rows


def _scores(refs: list[str], hyps: list[str], normalizer: str) -> dict:
    r = error_rates(refs, hyps, normalizer=normalizer)
    return {"wer": r["wer"], "cer": r["cer"]}


def curve(rows: list[dict], weights, normalizer: str) -> list[dict]:
    refs = [r["reference"] for r in rows]
    out = []
    for w in weights:
        picks = [pick_candidate(r["candidates"], w) for r in rows]
        ctc_share = sum(p["source"] == "ctc" for p in picks) / len(picks)
        out.append(
            {
                "setting": f"w = {w:g}",
                "weight": w,
                "ctc_chosen": ctc_share,
                **_scores(refs, [p["text"] for p in picks], normalizer),
            }
        )
    top = [next((c["text"] for c in r["candidates"] if c["source"] == "beam 0"), "") for r in rows]
    out.append({"setting": "LLM top beam (beam search alone)", **_scores(refs, top, normalizer)})
    draft = [r.get("ctc_draft") or "" for r in rows]
    out.append({"setting": "CTC transcript alone", **_scores(refs, draft, normalizer)})
    oracle = []
    for r in rows:
        errors = [error_rates([r["reference"]], [c["text"]], normalizer=normalizer) for c in r["candidates"]]
        best = min(
            range(len(errors)),
            key=lambda k: errors[k]["substitutions"] + errors[k]["deletions"] + errors[k]["insertions"],
        )
        oracle.append(r["candidates"][best]["text"])
    out.append(
        {"setting": "oracle (fewest word errors of the candidates)", **_scores(refs, oracle, normalizer)}
    )
    return out


def markdown(table: list[dict], decoded_weight: float | None) -> str:
    lines = ["| setting | WER % | CER % | CTC transcript chosen % |", "| --- | ---: | ---: | ---: |"]
    for row in table:
        mark = " (decoded)" if decoded_weight is not None and row.get("weight") == decoded_weight else ""
        share = "" if "ctc_chosen" not in row else f"{100 * row['ctc_chosen']:.1f}"
        lines.append(
            f"| {row['setting']}{mark} | {100 * row['wer']:.2f} | {100 * row['cer']:.2f} | {share} |"
        )
    return "\n".join(lines) + "\n"


def plot(table: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = [r for r in table if "weight" in r]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot([r["weight"] for r in points], [100 * r["wer"] for r in points], "o-", label="joint rescoring")
    styles = {"LLM top beam": "--", "CTC transcript": ":", "oracle": "-."}
    for r in table:
        for prefix, style in styles.items():
            if r["setting"].startswith(prefix):
                ax.axhline(100 * r["wer"], linestyle=style, color="gray", label=r["setting"])
    ax.set_xlabel("CTC weight")
    ax.set_ylabel("WER %")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--hypotheses", type=Path, required=True, help="hypotheses.jsonl of a decoding=rescore eval"
    )
    parser.add_argument("--weights", type=float, nargs="+", default=DEFAULT_WEIGHTS)
    parser.add_argument("--normalizer", default="whisper_english")
    parser.add_argument(
        "--decoded-weight", type=float, default=None, help="the weight the eval used (marked)"
    )
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    rows = read_rows(args.hypotheses)
    table = curve(rows, args.weights, args.normalizer)
    args.out.mkdir(parents=True, exist_ok=True)
    text = markdown(table, args.decoded_weight)
    (args.out / "curve.md").write_text(text)
    (args.out / "curve.json").write_text(json.dumps({"utterances": len(rows), "rows": table}, indent=2))
    plot(table, args.out / "curve.png")
    print(f"{len(rows)} utterances from {args.hypotheses}\n{text}", end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
