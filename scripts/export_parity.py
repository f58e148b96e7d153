"""Greedy transcripts of an exported stage-2 folder: plain transformers vs `granite-train eval`.

    .venv/bin/python scripts/export_parity.py \
        --model work/experiments/speech_llm_tiny_en/speech_llm_hf \
        --hypotheses work/experiments/speech_llm_tiny_en/eval_beam1/hypotheses.jsonl \
        --corpus work/corpus/tts_en --limit 100

`granite-train eval` (num_beams=1) decodes the held-out set in padded batches through our loader;
this script loads the same folder with `AutoModelForSpeechSeq2Seq` + `AutoProcessor` only, decodes
each utterance alone with `generate(do_sample=False, num_beams=1)` and the instruction the eval used,
and counts the transcripts that are identical. Prints every mismatch; exits 1 if there is one.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
from pathlib import Path

import pyarrow.parquet as pq
import soundfile as sf
from transformers import AutoModelForSpeechSeq2Seq, AutoProcessor

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from granite_train.demo import greedy_transcript  # noqa: E402  (plain transformers calls only)


def held_out_waves(corpus: Path, split: str) -> dict[str, tuple[str, object]]:
    """Utterance id (as the eval writes it: ``{dataset}/{id}``, matched on the id) -> (text, wave)."""
    out = {}
    for shard in sorted((corpus / "data").glob(f"{split}-*.parquet")):
        for row in pq.read_table(shard, columns=["id", "text", "audio"]).to_pylist():
            wave, _ = sf.read(io.BytesIO(row["audio"]["bytes"]), dtype="float32")
            out[row["id"]] = (row["text"], wave)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", required=True, help="exported folder (speech_llm_hf)")
    parser.add_argument("--hypotheses", required=True, help="hypotheses.jsonl of a greedy granite-train eval")
    parser.add_argument("--corpus", required=True, help="parquet corpus folder the eval read")
    parser.add_argument("--split", default="test")
    parser.add_argument("--limit", type=int, default=None, help="first N utterances of the eval")
    parser.add_argument("--max-new-tokens", type=int, default=200, help="as the eval (its default: 200)")
    args = parser.parse_args(argv)

    rows = [json.loads(line) for line in Path(args.hypotheses).read_text().splitlines() if line.strip()]
    rows = rows[: args.limit] if args.limit else rows
    waves = held_out_waves(Path(args.corpus), args.split)
    processor = AutoProcessor.from_pretrained(args.model)
    model = AutoModelForSpeechSeq2Seq.from_pretrained(args.model).eval()
    same = 0
    for row in rows:
        key = row["id"].split("/", 1)[-1]
        if key not in waves:
            raise SystemExit(f"{row['id']}: not in {args.corpus} ({args.split})")
        _, wave = waves[key]
        text = greedy_transcript(model, processor, wave, row["instruction"], args.max_new_tokens)
        if text == row["hypothesis"]:
            same += 1
        else:
            print(f"MISMATCH {row['id']}\n  eval:         {row['hypothesis']!r}\n  transformers: {text!r}")
    print(f"identical greedy transcripts: {same} / {len(rows)}")
    return 0 if same == len(rows) else 1


if __name__ == "__main__":
    sys.exit(main())
