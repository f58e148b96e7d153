"""Data jobs behind the CLI: the demo corpus and the pipeline report. Plain arguments, no Hydra."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tqdm import tqdm

from granite_train.data.builders import build_pipeline_config
from granite_train.data.collate import Collator
from granite_train.data.pipeline import SpeechDataPipeline, build_dataloader
from granite_train.data.report import DataReport

log = logging.getLogger(__name__)


def generate_demo_corpus(demo: Mapping[str, Any], corpus_dir: str | Path, seed: int = 0) -> dict[str, Any]:
    """Synthesise one dataset per language under ``corpus_dir/<lang>`` (finished shards are kept)."""
    from data_prep.tts.generate import generate_corpus

    texts_dir = Path(demo["texts_dir"])
    summaries = {}
    for lang in demo["languages"]:
        n = demo["sentences_per_language"] * (4 if lang == "en" else 1)
        print(f"[demo] {lang}: synthesising up to {n} sentences with {demo['backend']}", flush=True)
        summaries[lang] = generate_corpus(
            {lang: texts_dir / f"{lang}.txt"},
            Path(corpus_dir) / lang,
            backend=demo["backend"],
            seed=seed,
            test_fraction=demo["test_fraction"],
            max_sentences_per_language=n,
            num_workers=demo.get("num_workers"),
            shard_size=max(1, n // 2),
        )
    hours = sum(s.audio_seconds for s in summaries.values()) / 3600
    generated = sum(s.generated_audio_seconds for s in summaries.values())
    wall = sum(s.wall_seconds for s in summaries.values())
    speed = f"{generated / wall:.0f}x realtime" if generated else "all shards already done"
    print(f"[demo] corpus: {hours:.2f} h in {len(summaries)} languages at {corpus_dir} ({speed})", flush=True)
    return summaries


def run_data_report(data: Mapping[str, Any], max_batches: int | None = None, split: str = "train") -> DataReport:
    """Iterate the ``split`` ("train" or "val") pipeline of ``data`` (a ``configs/data`` mapping) and report."""
    if not data.get(split):
        raise ValueError(f"data.{split} is not set in this data config")
    config = build_pipeline_config(data[split])
    pipeline = SpeechDataPipeline(config)
    loader = build_dataloader(
        pipeline,
        num_workers=int(data.get("num_workers", 0)),
        collator=Collator(compute_features=bool(data.get("compute_features", True))),
    )
    report = DataReport(sample_rate=config.prepare.sample_rate)
    bar = tqdm(loader, total=max_batches, desc="batches", unit="batch", dynamic_ncols=True)
    for batch in bar:
        report.update(batch)
        bar.set_postfix(utt=report.utterances, hours=f"{report.audio_seconds / 3600:.2f}")
        if max_batches is not None and report.batches >= max_batches:
            break
    return report
