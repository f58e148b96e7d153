"""Speculative vs autoregressive decoding of one speech LLM on one test set: WER, RTFx, paths.

    .venv/bin/python benchmarks/speculative_decoding.py --model work/released/demo_tiny_en \
        --data work/demo/corpus/tts_en --out work/speculative
    .venv/bin/python benchmarks/speculative_decoding.py --model DIR --data DIR --device cuda --dtype bf16 \
        --pairs 0.7/0.2 3.0/0.1 --num-beams 2

One process, one model load, ``--rounds`` rounds of: greedy autoregressive decoding, each
``ctc_threshold/confidence_threshold`` pair, and the CTC draft alone (the gate wide open: the
encoder's own WER and speed). Each setting's RTFx is its median over the rounds, so drift of a
shared machine hits every setting alike; on a loaded CPU use ``--threads 1`` (idle OpenMP threads
spin while others are descheduled, which makes multi-threaded timings erratic).
RTFx is the leaderboard's (summed per-batch compute time; :mod:`granite_train.eval.generate`).
Prints a markdown table (RTFx ratio and WER change against autoregressive, share of utterances on
each path) and writes ``speculative.json``, ``speculative.md`` and ``speculative.png`` (WER against
RTFx) under ``--out``. The script does not pick a setting: read the curve.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from granite_train.eval.generate import evaluate_speech_llm, load_speech_llm_checked  # noqa: E402
from granite_train.eval.speculative import PATHS, SpeculativeSettings  # noqa: E402

OPEN_GATE = 1e9  # every draft under the entropy gate: the CTC transcript alone


def _pair(text: str) -> tuple[float, float]:
    try:
        ctc, confidence = (float(v) for v in text.split("/"))
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"expected CTC/CONFIDENCE such as 0.7/0.2, got {text!r}") from err
    return ctc, confidence


def _row(name: str, result, reference=None) -> dict:
    paths = result.details.get("paths") or {}
    total = sum(paths.values()) or 1
    row = {
        "setting": name,
        "wer": result.wer,
        "cer": result.cer,
        "rtfx": result.rtfx,
        "utts": result.num_utts,
        "paths": {p: paths.get(p, 0) / total for p in (*PATHS, "autoregressive") if p in paths},
        "overlong_share": (result.details.get("hallucination") or {}).get("overlong_share"),
    }
    if reference is not None:
        row["rtfx_ratio"] = result.rtfx / reference["rtfx"]
        row["wer_change_points"] = 100 * (result.wer - reference["wer"])
    return row


def _markdown(rows: list[dict]) -> str:
    lines = [
        "| decoding | WER % | change (points) | RTFx | x autoregressive | ctc / verified / fallback % | > 2x length % |",
        "| --- | ---: | ---: | ---: | ---: | --- | ---: |",
    ]
    for r in rows:
        shares = " / ".join(f"{100 * r['paths'].get(p, 0):.0f}" for p in PATHS)
        change = f"{r['wer_change_points']:+.2f}" if "wer_change_points" in r else ""
        ratio = f"{r['rtfx_ratio']:.2f}" if "rtfx_ratio" in r else "1.00"
        over = "" if r["overlong_share"] is None else f"{100 * r['overlong_share']:.1f}"
        lines.append(
            f"| {r['setting']} | {100 * r['wer']:.2f} | {change} | {r['rtfx']:.1f} | {ratio} | "
            f"{shares if r['setting'] != 'autoregressive' else '-'} | {over} |"
        )
    return "\n".join(lines) + "\n"


def _plot(rows: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for r in rows:
        ax.scatter(
            r["rtfx"], 100 * r["wer"], color="black" if r["setting"] == "autoregressive" else "tab:blue"
        )
        ax.annotate(
            r["setting"], (r["rtfx"], 100 * r["wer"]), fontsize=7, xytext=(4, 4), textcoords="offset points"
        )
    ax.set_xlabel("RTFx (audio s / compute s)")
    ax.set_ylabel("WER %")
    ax.set_xscale("log")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", required=True, help="exported speech LLM folder (ours or a released one)")
    parser.add_argument(
        "--data", required=True, help="test set: parquet folder / file, audiofolder, or hub id"
    )
    parser.add_argument("--split", default="test")
    parser.add_argument("--language", default="en")
    parser.add_argument("--pairs", nargs="+", type=_pair, default=[(0.7, 0.2), (1.5, 0.1), (3.0, 0.1)])
    parser.add_argument(
        "--num-beams", type=int, default=1, help="beams of autoregressive / fallback decoding"
    )
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=200)
    parser.add_argument(
        "--no-leading-space", action="store_true", help="draft without a leading space (released 4.0-1b)"
    )
    parser.add_argument(
        "--prompt-draft",
        default="dataset",
        choices=["dataset", "ctc", "none"],
        help="a model trained with the encoder's draft in its prompt: ctc (decoded per batch), as eval's prompt_draft",
    )
    parser.add_argument("--rounds", type=int, default=2, help="timed passes per setting (median RTFx)")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    parser.add_argument("--out", type=Path, default=Path("work/speculative"))
    args = parser.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)

    speech = load_speech_llm_checked(args.model)
    if args.dtype in ("float32", "fp32"):
        speech = speech.float()
    dataset = {"name": "test", "path": args.data, "split": args.split, "language": args.language}
    common = dict(
        device=args.device,
        dtype=args.dtype,
        batch_size=args.batch_size,
        max_new_tokens=args.max_new_tokens,
        num_beams=args.num_beams,
        prompt_draft=args.prompt_draft,
        progress=True,
    )
    args.out.mkdir(parents=True, exist_ok=True)

    def run(speculative: SpeculativeSettings | None, tag: str):
        (result,) = evaluate_speech_llm(
            speech,
            [dataset],
            speculative=speculative,
            hypotheses_path=args.out / f"hypotheses_{tag}.jsonl",
            **common,
        )
        return result

    space = not args.no_leading_space
    settings = {"autoregressive": None}
    for ctc, confidence in args.pairs:
        settings[f"speculative {ctc:g} / {confidence:g}"] = SpeculativeSettings(
            ctc, confidence, draft_leading_space=space
        )
    settings["CTC draft alone"] = SpeculativeSettings(OPEN_GATE, 0.0, draft_leading_space=space)
    runs: dict[str, list] = {name: [] for name in settings}
    for _ in range(args.rounds):
        for name, setting in settings.items():
            runs[name].append(run(setting, name.replace(" / ", "_").replace(" ", "_")))

    def median_row(name: str, reference=None) -> dict:
        results = runs[name]
        row = _row(name, results[0])
        row["rtfx"] = statistics.median(r.rtfx for r in results)
        row["rtfx_runs"] = [r.rtfx for r in results]
        if reference is not None:
            row["rtfx_ratio"] = row["rtfx"] / reference["rtfx"]
            row["wer_change_points"] = 100 * (row["wer"] - reference["wer"])
        return row

    reference = median_row("autoregressive")
    rows = [reference] + [median_row(name, reference) for name in settings if name != "autoregressive"]
    first = runs["autoregressive"][0]
    table = _markdown(rows)
    print(table, end="")
    device = first.details.get("device")
    header = f"model `{args.model}`, data `{args.data}` ({args.split}), {device}, {args.dtype}, beams {args.num_beams}\n\n"
    (args.out / "speculative.md").write_text(header + table)
    (args.out / "speculative.json").write_text(
        json.dumps({"settings": vars(args) | {"out": str(args.out)}, "rows": rows}, indent=2, default=str)
        + "\n"
    )
    _plot(rows, args.out / "speculative.png", f"{Path(args.model).name} on {Path(args.data).name}, {device}")
    print(f"results in {args.out}")


if __name__ == "__main__":
    main()
