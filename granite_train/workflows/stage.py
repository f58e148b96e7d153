"""``granite-train stage``: sources staged once into large parquet shards (:mod:`granite_train.data.stage`).

``data=`` names a ``configs/data`` group (its ``train`` and ``val`` sources are staged, names,
weights and languages kept) or one source: a local path or an fsspec URL, as every source takes.
Writes ``index.json``, ``report.md`` and ``data.yaml`` beside the shards under ``out``; a rerun
resumes where a killed one stopped and does nothing when everything is written.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from granite_train.data.prepare import PrepareConfig
from granite_train.data.sources import SourceSpec
from granite_train.data.stage import StageSettings, stage
from granite_train.typed_config import from_mapping


@dataclass
class StageConfig:
    """What to stage and how (``configs/stage.yaml``).

    Attributes:
        out: the staged folder: a local path or an fsspec URL (``s3://bucket/staged``).
        data: the composed ``configs/data`` group when ``data=<group>`` is given (its ``train`` /
            ``val`` pipeline sections: their ``sources`` and ``prepare`` limits are used).
        data_path: one source instead: a folder, manifest, parquet file / glob, hub id or URL.
        data_split / language / text_column / audio_column / speaker_column: that source's, as
            ``finetune`` takes them.
        rows_per_shard / codec / row_group_size: the shards (:class:`StageSettings`).
        min_duration / max_duration: usable durations in seconds (a group's own ``prepare`` wins).
        storage_options: fsspec options for ``out`` (credentials, ``endpoint_url``).
        progress: a progress bar over records read.
        seed: what a data group's ``${seed}`` reads (staging itself draws nothing at random).
    """

    out: str
    data: dict[str, Any] | None = None
    data_path: str | None = None
    data_split: str = "train"
    language: str | None = None
    text_column: str = "text"
    audio_column: str = "audio"
    speaker_column: str | None = "speaker"
    rows_per_shard: int = 2000
    codec: str = "flac"
    row_group_size: int = 100
    min_duration: float = 0.2
    max_duration: float = 30.0
    storage_options: dict[str, Any] = field(default_factory=dict)
    progress: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        if (self.data is None) == (self.data_path is None):
            raise ValueError(
                "give data=<configs/data group, e.g. tts_en_engines> or data=<a path or URL>: "
                f"got {'both' if self.data is not None else 'neither'}"
            )


def _limits(config: StageConfig, section: dict[str, Any] | None) -> PrepareConfig:
    values = {"min_duration": config.min_duration, "max_duration": config.max_duration}
    prepare = dict((section or {}).get("prepare") or {})
    for key in ("sample_rate", "min_duration", "max_duration", "silence_db"):
        if key in prepare:
            values[key] = prepare[key]
    return PrepareConfig(**values, ctc_targets=False, check_ctc_length=False)


def _source_name(path: str) -> str:
    """A staged folder's name for one source: the last part of its path or URL, without suffix."""
    last = path.rstrip("/").rsplit("/", 1)[-1]
    name = re.sub(r"[^\w.-]+", "_", last.split(".", 1)[0] if "." in last else last)
    return name or "data"


def sources_to_stage(config: StageConfig) -> tuple[list[SourceSpec], PrepareConfig]:
    """The sources ``config`` names, and the limits their records are checked against."""
    if config.data_path is not None:
        spec = SourceSpec(
            _source_name(config.data_path),
            config.data_path, split=config.data_split, language=config.language,
            text_column=config.text_column, audio_column=config.audio_column,
            speaker_column=config.speaker_column,
        )  # fmt: skip
        return [spec], _limits(config, None)
    specs: list[SourceSpec] = []
    first_section = None
    for section_name in ("train", "val"):
        section = (config.data or {}).get(section_name)
        if not section:
            continue
        first_section = first_section or section
        specs += [from_mapping(SourceSpec, dict(s)) for s in section.get("sources") or []]
    if not specs:
        raise ValueError("the data group has no train or val sources to stage")
    return specs, _limits(config, first_section)


def run_stage(config: StageConfig) -> dict[str, Any]:
    """Stage, write the index / report / data.yaml, return the index."""
    specs, prepare = sources_to_stage(config)
    settings = StageSettings(
        rows_per_shard=config.rows_per_shard, codec=config.codec, prepare=prepare,
        row_group_size=config.row_group_size, storage_options=dict(config.storage_options),
    )  # fmt: skip
    bar = None
    if config.progress:
        from tqdm import tqdm

        bar = tqdm(desc="stage", unit="rec", mininterval=2.0)
    try:
        return stage(specs, config.out, settings, progress=bar.update if bar is not None else None)
    finally:
        if bar is not None:
            bar.close()


__all__ = ["StageConfig", "run_stage", "sources_to_stage"]
