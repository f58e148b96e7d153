"""``python -m data_prep.drafts``: attach a first-pass CTC transcript (a ``draft`` column) to a parquet
ASR dataset, for stage 2 with the draft in the prompt (``prompts.draft_prefix``).

The drafts are the hypotheses of ``granite-train eval model_path=<the stage-1 encoder>`` on the same
split (``hypotheses.jsonl``): the encoder that the speech LLM is built on, so training sees the
drafts that evaluation will (``eval prompt_draft=ctc`` decodes them from the model's own CTC head)::

    granite-train eval model_path=ENCODER output_dir=work/drafts/train \\
        "datasets=[{name: corpus_train, path: CORPUS, split: train, language: en}]"
    python -m data_prep.drafts --source CORPUS --split train \\
        --hypotheses work/drafts/train/hypotheses.jsonl --out work/drafts/corpus

Shards are copied row for row (audio bytes untouched) with the ``draft`` column added. A row
without a hypothesis (the evaluation skipped it: too long, undecodable) keeps ``draft`` null, is
counted and named in the report, and trains without a draft: nothing is dropped here.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq


def read_hypotheses(path: str | Path) -> dict[str, str]:
    """``id -> hypothesis`` of an eval ``hypotheses.jsonl`` (the ``dataset/`` prefix of ids removed)."""
    drafts: dict[str, str] = {}
    with open(path, encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                key, hyp = str(row["id"]), row["hypothesis"]
            except (json.JSONDecodeError, KeyError) as err:
                raise ValueError(f"{path}:{n}: not an eval hypotheses row (id, hypothesis): {err}") from err
            drafts[key.split("/", 1)[1] if "/" in key else key] = str(hyp or "")
    if not drafts:
        raise ValueError(
            f"{path}: no hypotheses; run `granite-train eval model_path=<encoder>` on the split first"
        )
    return drafts


def attach_drafts(
    source: str | Path, split: str, hypotheses: str | Path, out: str | Path
) -> dict[str, object]:
    """Write ``out/data/<shard>`` for every ``source/data/<split>-*.parquet`` with a ``draft`` column.

    Returns the report (rows, rows without a draft and the first of their ids, unused hypotheses).
    """
    shards = sorted(Path(source, "data").glob(f"{split}-*.parquet"))
    if not shards:
        raise FileNotFoundError(
            f"no {split}-*.parquet under {Path(source, 'data')}: is --source a corpus folder?"
        )
    drafts = read_hypotheses(hypotheses)
    out_dir = Path(out, "data")
    out_dir.mkdir(parents=True, exist_ok=True)
    card = Path(source, "README.md")
    if card.exists() and not Path(out, "README.md").exists():  # the splits and features the loader reads
        shutil.copyfile(card, Path(out, "README.md"))
    rows, missing, used = 0, [], set()
    for shard in shards:
        table = pq.read_table(shard)
        if "id" not in table.column_names:
            raise ValueError(f"{shard}: no id column to match the hypotheses with")
        if "draft" in table.column_names:
            table = table.drop(["draft"])
        ids = [str(i) for i in table.column("id").to_pylist()]
        column = []
        for key in ids:
            if key in drafts:
                column.append(drafts[key])
                used.add(key)
            else:
                column.append(None)
                missing.append(key)
        table = table.append_column("draft", pa.array(column, pa.string()))
        tmp = out_dir / f".{shard.name}.tmp"
        pq.write_table(table, tmp)
        tmp.replace(out_dir / shard.name)  # whole shards only: a rerun never reads a half-written one
        rows += len(ids)
    return {
        "split": split,
        "rows": rows,
        "without_draft": len(missing),
        "without_draft_ids": missing[:20],
        "hypotheses_unused": len(set(drafts) - used),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m data_prep.drafts",
        description="Copy a parquet ASR corpus split with a `draft` column: the first-pass CTC "
        "transcript from an eval hypotheses.jsonl of the stage-1 encoder.",
    )
    p.add_argument("--source", required=True, help="corpus folder with data/<split>-*.parquet")
    p.add_argument("--split", default="train")
    p.add_argument(
        "--hypotheses", required=True, help="hypotheses.jsonl of `granite-train eval` on that split"
    )
    p.add_argument("--out", required=True, help="output corpus folder (data/ shards + drafts-<split>.json)")
    args = p.parse_args(argv)
    try:
        report = attach_drafts(args.source, args.split, args.hypotheses, args.out)
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    Path(args.out, f"drafts-{args.split}.json").write_text(json.dumps(report, indent=2) + "\n")
    print(
        f"{args.split}: {report['rows']} rows, {report['without_draft']} without a draft"
        + (f" (e.g. {', '.join(report['without_draft_ids'][:3])})" if report["without_draft"] else "")
        + f", {report['hypotheses_unused']} hypotheses matched no row -> {args.out}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
