"""Held-out measurements of the multi-task tiny model against the ASR-only one (issue 17).

    .venv/bin/python scripts/multitask_eval.py --work work --corpus work/corpus

For each model (``speech_llm_multitask_tiny`` and ``speech_llm_asr_only_tiny``, their exports
under ``WORK/experiments``): ASR WER on the corpus's test split; on the multi-task model also
keyword biasing on the biasing test set (names and acronyms never in training) with and without
the list in the prompt (B-WER, U-WER, recall), and AST BLEU (sacrebleu) on the held-out
translations, with the audio and with it zeroed. Writes ``WORK/experiments/multitask_eval.json``
and prints one markdown table.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _pct(value) -> str:
    return "-" if value is None else f"{100 * value:.2f}"


def main() -> None:
    from granite_train.eval.generate import run_generate_eval
    from granite_train.eval.settings import EvalSettings

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", default="work")
    parser.add_argument("--corpus", default="work/corpus")
    parser.add_argument("--max-new-tokens", type=int, default=96)
    args = parser.parse_args()
    work = Path(args.work)
    experiments = work / "experiments"
    asr = {
        "name": "asr_test",
        "path": f"{args.corpus}/tts_en",
        "split": "test",
        "language": "en",
        "task": "asr",
    }
    keywords = {"name": "biasing_testset", "path": str(work / "kw" / "testset"), "split": "test",
                "language": "en", "keywords_in_prompt": "both"}  # fmt: skip
    ast = {"name": "ast_test", "path": str(work / "ast" / "tts_en_es"), "split": "test", "language": "en"}
    settings = EvalSettings(max_new_tokens=args.max_new_tokens, progress=False, normalize_translations=True)
    silent = EvalSettings.of(settings, zero_audio=True)

    out: dict = {}
    for run in ("speech_llm_multitask_tiny", "speech_llm_asr_only_tiny"):
        model = experiments / run / "speech_llm_hf"
        sets = [asr] if "asr_only" in run else [asr, keywords, ast]
        results, _ = run_generate_eval(model, sets, experiments / run / "heldout_eval", settings)
        out[run] = {r.name: {"wer": r.wer, "cer": r.cer, "utts": r.num_utts, **r.details} for r in results}
        if "asr_only" not in run:
            zeroed, _ = run_generate_eval(model, [ast], experiments / run / "heldout_eval_zero_audio", silent)
            out[run]["ast_test/zero_audio"] = {"utts": zeroed[0].num_utts, **zeroed[0].details}
    (experiments / "multitask_eval.json").write_text(json.dumps(out, indent=2, default=str))

    multi, only = out["speech_llm_multitask_tiny"], out["speech_llm_asr_only_tiny"]
    print("| measure | multi-task | ASR-only |\n|---|---|---|")
    print(f"| ASR WER, espeak-ng test ({multi['asr_test']['utts']} utts) | {_pct(multi['asr_test']['wer'])} | "
          f"{_pct(only['asr_test']['wer'])} |")  # fmt: skip
    for name, row in multi.items():
        if name.startswith("biasing_testset"):
            b = row.get("biasing") or {}
            print(f"| {name}: WER / B-WER / U-WER / recall | {_pct(b.get('wer'))} / {_pct(b.get('b_wer'))} / "
                  f"{_pct(b.get('u_wer'))} / {_pct(b.get('recall'))} | - |")  # fmt: skip
    print(f"| AST BLEU en->es ({multi['ast_test']['utts']} utts) | {multi['ast_test'].get('bleu'):.2f} | - |")
    print(f"| AST BLEU, audio zeroed | {multi['ast_test/zero_audio'].get('bleu'):.2f} | - |")


if __name__ == "__main__":
    main()
