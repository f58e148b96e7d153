"""The pipeline report behind ``granite-train data-report``. Plain arguments, no Hydra."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from tqdm import tqdm

from granite_train.data.builders import build_pipeline_config
from granite_train.data.collate import Collator
from granite_train.data.pipeline import SpeechDataPipeline, build_dataloader
from granite_train.data.report import DataReport

log = logging.getLogger(__name__)


def run_data_report(
    data: Mapping[str, Any], max_batches: int | None = None, split: str = "train"
) -> DataReport:
    """Iterate the ``split`` ("train" or "val") pipeline of ``data`` (a ``configs/data`` mapping) and report."""
    if not data.get(split):
        raise ValueError(f"data.{split} is not set in this data config")
    config = build_pipeline_config(data[split], f"data.{split}")
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
