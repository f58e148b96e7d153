"""``granite-train data-check``: your data read once, before anything trains.

Every record is validated from its audio header (nothing decoded): what is usable (records,
hours), what is skipped and why (one example row and the fix per reason), and the held-out split
``finetune`` would make. ``data_check.md`` / ``data_check.json`` go to ``output_dir``. Exit 2 when
nothing is usable or the split cannot be made.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from granite_train.data.check import check_sources
from granite_train.data.holdout import choose_holdout
from granite_train.data.prepare import PrepareConfig
from granite_train.data.sources import SourceSpec


@dataclass
class DataCheckConfig:
    """What to check (``configs/data_check.yaml``).

    Attributes:
        data_path: (``data=``) your audio: an audiofolder folder, a CSV / TSV / JSONL manifest, a
            parquet file or folder, or a hub id.
        output_dir: where ``data_check.md`` / ``data_check.json`` go.
        data_split: the split to read.
        language: of the audio (recorded with each record).
        text_column / audio_column / speaker_column: the columns, as ``finetune`` takes them.
        encoding: of a CSV / TSV / JSONL manifest; None detects it.
        min_duration / max_duration: the usable durations in seconds (``finetune``'s recipe: 0.2 / 30).
        holdout_share / holdout_speakers / min_heldout_utterances: the held-out split to show, as
            ``finetune`` makes it.
    """

    data_path: str
    output_dir: str
    data_split: str = "train"
    language: str | None = None
    text_column: str = "text"
    audio_column: str = "audio"
    speaker_column: str | None = "speaker"
    encoding: str | None = None
    min_duration: float = 0.2
    max_duration: float = 30.0
    holdout_share: float = 0.1
    holdout_speakers: list[str] = field(default_factory=list)
    min_heldout_utterances: int = 20


def run_data_check(config: DataCheckConfig) -> str:
    """Check, write the report, return it; :class:`DataError` when nothing is usable."""
    local = {"id_column": None} if Path(config.data_path).exists() else {}
    spec = SourceSpec(
        "mine", config.data_path, split=config.data_split, language=config.language,
        text_column=config.text_column, audio_column=config.audio_column,
        speaker_column=config.speaker_column, encoding=config.encoding, **local,
    )  # fmt: skip
    prepare = PrepareConfig(
        min_duration=config.min_duration, max_duration=config.max_duration, ctc_targets=False
    )
    check = check_sources([spec], prepare)
    out = Path(config.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    report = f"# Data check of `{config.data_path}`\n\n{check.to_markdown()}"
    payload = {"check": check.to_json()}
    try:
        check.raise_if_unusable()
        plan = choose_holdout(
            check.sources[0],
            list(config.holdout_speakers),
            config.holdout_share,
            config.min_heldout_utterances,
        )
        report += f"\n{plan.format()}\n"
        payload["heldout_split"] = asdict(plan)
    finally:  # the report is written also when it ends in an error
        (out / "data_check.md").write_text(report, encoding="utf-8")
        (out / "data_check.json").write_text(json.dumps(payload, indent=2, ensure_ascii=False) + "\n")
    return report


__all__ = ["DataCheckConfig", "run_data_check"]
