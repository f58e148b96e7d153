"""Streamed speech sources: hub ids, local parquet, audiofolder and JSONL manifests.

Every source is opened with ``datasets`` in streaming mode and normalised to *raw records*::

    {"id": str, "audio": {"bytes": bytes | None, "path": str | None}, "text": str,
     "language": str | None, "source": str}

Audio is never decoded by ``datasets`` (``Audio(decode=False)``): decoding, resampling and
validation happen in :mod:`granite_train.data.prepare`, where failures are counted instead of
crashing a worker. A raw record is small and self-contained, which is what lets the pipeline put
buffered records into its resumable state.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import re
import zlib
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets
from datasets.distributed import split_dataset_by_node

from granite_train.data.errors import DataError
from granite_train.data.manifests import (
    manifest_encoding,
    missing_column_message,
    suggest_audio_column,
    suggest_text_column,
)

log = logging.getLogger(__name__)

SOURCE_KINDS = ("hub", "parquet", "audiofolder", "jsonl", "csv")
HOLDOUT_MODES = ("exclude", "only")
HOLDOUT_KEYS = ("speaker", "recording", "content")
# conventional audio path columns (NeMo manifests, audiofolder metadata, CSV manifests)
AUDIO_PATH_COLUMNS = ("audio_filepath", "file_name", "path")


@dataclass
class SourceSpec:
    """One corpus of a mixture.

    Attributes:
        name: Short unique name; used in sample ids, logs and skip counts.
        path: Hub id (``kind=hub``), a parquet file / glob / directory, an audiofolder directory,
            or a JSONL manifest file / glob.
        kind: One of ``hub``, ``parquet``, ``audiofolder``, ``jsonl``; ``None`` guesses from ``path``.
        split: Dataset split to stream.
        config: Hub dataset config name (e.g. ``"en"`` for multilingual corpora).
        weight: Multiplier on this source's sampling probability (see :mod:`.mixture`).
        size: Relative size (hours or examples) used for alpha balancing; 1.0 when unknown.
        audio_column: Column holding audio (``Audio`` struct, path string or bytes).
        text_column: Column holding the transcript (the target). With the default ``text``, a row
            without it takes ``target_text`` (``data_prep.translate``'s output) instead.
        id_column: Column with a unique id; ``None`` uses the audio path or a running index.
        language: Language code for every example, or ``None`` to read ``language_column``.
        language_column: Column with per-example language codes.
        revision: Hub revision to pin (reproducibility).
        task: Stage-2 task of every example (``asr``, ``ast``), or ``None`` to read the ``task``
            column (default ``asr``). The other prompt fields (:data:`PROMPT_FIELDS`) are always
            carried over from the row when present.
        speaker_column: Column with a speaker id (kept in the record; the held-out split uses it).
        holdout: A held-out split made from this source itself: ``exclude`` drops the held-out
            records (train on the rest), ``only`` keeps just them (evaluate on them); ``None``
            reads every record. A manifest row with a ``split`` column is always kept only when it
            equals ``split``.
        holdout_share: Share of speakers (or of recordings, when the source names no speakers)
            held out, chosen by a hash of the speaker (or audio path / id): the same on every run.
            :func:`granite_train.data.holdout.plan_holdout` instead picks keys that reach the share
            and writes them to ``holdout_keys``.
        holdout_speakers: These speakers are the held-out split instead of a hashed share.
        holdout_by: What the held-out split is made of: ``speaker``, ``recording`` (the audio path
            or id) or ``content`` (a hash of the audio bytes); ``None`` takes the first a row has.
        holdout_keys: These keys (of the ``holdout_by`` kind) are the held-out split.
        encoding: Text encoding of a CSV / TSV / JSONL manifest; ``None`` detects it (UTF-8,
            UTF-16 with a BOM, else a logged guess such as cp1252).
    """

    name: str
    path: str
    kind: str | None = None
    split: str = "train"
    config: str | None = None
    weight: float = 1.0
    size: float = 1.0
    audio_column: str = "audio"
    text_column: str = "text"
    id_column: str | None = "id"
    language: str | None = None
    language_column: str | None = "language"
    revision: str | None = None
    data_files: list[str] = field(default_factory=list)
    task: str | None = None
    speaker_column: str | None = "speaker"
    holdout: str | None = None
    holdout_share: float = 0.1
    holdout_speakers: list[str] = field(default_factory=list)
    holdout_by: str | None = None
    holdout_keys: list[str] = field(default_factory=list)
    encoding: str | None = None

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("SourceSpec.name must be a non-empty string")
        if self.kind is None:
            self.kind = guess_kind(self.path)
        if self.kind not in SOURCE_KINDS:
            raise ValueError(f"source {self.name!r}: kind must be one of {SOURCE_KINDS}, got {self.kind!r}")
        if self.weight < 0 or self.size <= 0:
            raise ValueError(f"source {self.name!r}: need weight >= 0 and size > 0")
        if self.holdout not in (None, *HOLDOUT_MODES):
            raise ValueError(
                f"source {self.name!r}: holdout must be one of {HOLDOUT_MODES} or null, got {self.holdout!r}"
            )
        if self.holdout_by not in (None, *HOLDOUT_KEYS):
            raise ValueError(
                f"source {self.name!r}: holdout_by must be one of {HOLDOUT_KEYS} or null, got {self.holdout_by!r}"
            )
        if self.holdout_keys and self.holdout_by is None:
            raise ValueError(f"source {self.name!r}: holdout_keys need holdout_by (one of {HOLDOUT_KEYS})")
        if not 0.0 < self.holdout_share < 1.0:
            raise ValueError(
                f"source {self.name!r}: holdout_share must be in (0, 1), got {self.holdout_share}"
            )

    def holdout_key(self, row: Mapping[str, Any], by: str | None = None) -> tuple[str, str] | None:
        """``(kind, key)`` that places ``row`` on one side of the held-out split: its speaker, else
        its recording (audio path or id), else a hash of its audio bytes (``by`` forces one kind);
        ``None`` when the row has none of them."""
        kinds = (by,) if by else HOLDOUT_KEYS
        for kind in kinds:
            key = self.key_of(row, kind)
            if key is not None:
                return kind, key
        return None

    def key_of(self, row: Mapping[str, Any], kind: str) -> str | None:
        if kind == "speaker":
            speaker = row.get(self.speaker_column) if self.speaker_column else None
            return None if speaker is None or str(speaker) == "" else str(speaker)
        audio = row.get(self.audio_column)
        if kind == "recording":
            path = (
                audio.get("path") if isinstance(audio, Mapping) else audio if isinstance(audio, str) else None
            )
            path = path or next((row[k] for k in AUDIO_PATH_COLUMNS if row.get(k)), None)
            key = path or (row.get(self.id_column) if self.id_column else None)
            return None if key is None else str(key)
        data = audio.get("bytes") if isinstance(audio, Mapping) else audio
        return hashlib.sha1(data).hexdigest()[:16] if isinstance(data, (bytes, bytearray)) and data else None

    def is_held_out(self, row: Mapping[str, Any]) -> bool:
        """Whether ``row`` belongs to the held-out split: ``holdout_keys`` when given (see
        :mod:`granite_train.data.holdout`), ``holdout_speakers``, else a hash of the row's key (its
        speaker, so every utterance of a speaker is on the same side; else its recording or audio
        content) below ``holdout_share``. A row without any key is never held out."""
        if self.holdout_keys:
            found = self.holdout_key(row, self.holdout_by)
            return found is not None and found[1] in self._holdout_key_set
        if self.holdout_speakers:
            speaker = self.key_of(row, "speaker")
            return speaker is not None and speaker in self.holdout_speakers
        found = self.holdout_key(row, self.holdout_by)
        if found is None:
            return False
        digest = zlib.crc32(found[1].encode("utf-8")) % 10_000
        return digest < self.holdout_share * 10_000

    @functools.cached_property
    def _holdout_key_set(self) -> frozenset[str]:
        return frozenset(self.holdout_keys)  # thousands of recordings: a set, not a list scan per row

    def keeps(self, row: Mapping[str, Any]) -> bool:
        """Whether this source serves ``row``: its manifest split, then its side of the holdout."""
        return self.left_out_because(row) is None

    def left_out_because(self, row: Mapping[str, Any]) -> str | None:
        """Why this source does not serve ``row`` (``other_split``, ``held_out``, ``not_held_out``),
        or ``None`` when it does."""
        if self.kind in ("csv", "jsonl") and row.get("split") not in (None, self.split):
            return "other_split"
        if self.holdout is None or self.is_held_out(row) == (self.holdout == "only"):
            return None
        return "held_out" if self.holdout == "exclude" else "not_held_out"


def guess_kind(path: str) -> str:
    """Infer the source kind from a path: existing local paths by content, anything else is a hub id."""
    p = Path(path)
    if path.endswith((".csv", ".tsv")):
        return "csv"
    if path.endswith((".jsonl", ".json")) or (p.is_file() and p.suffix in (".jsonl", ".json")):
        return "jsonl"
    if path.endswith(".parquet") or "*" in path:
        return "parquet"
    if p.is_dir():
        has_metadata = any((p / m).exists() for m in ("metadata.csv", "metadata.jsonl"))
        if any(p.rglob("*.parquet")) and not has_metadata:
            return "parquet"
        return "audiofolder"
    return "hub"


_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")
_FILE_SUFFIXES = (".csv", ".tsv", ".json", ".jsonl", ".parquet", ".arrow", ".txt", ".wav", ".flac", ".mp3")


def looks_like_hub_id(path: str) -> bool:
    """``name`` or ``owner/name`` without a file suffix: what a hub dataset id looks like (a
    relative folder such as ``data/calls`` looks the same, so a missing one is checked on the hub)."""
    return bool(_HUB_ID.match(path)) and not path.lower().endswith(_FILE_SUFFIXES)


def hub_offline() -> bool:
    return any(
        os.environ.get(v, "").lower() in ("1", "true", "yes")
        for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
    )


def missing_path_error(spec: SourceSpec, what: str = "") -> DataError:
    """The error for a source path that names nothing on this machine."""
    where = Path(spec.path).expanduser().absolute()
    return DataError(
        f"source {spec.name!r}: {what or 'data path'} {spec.path!r} does not exist ({where} is neither a "
        "file nor a folder): give an audio folder, a CSV / TSV / JSONL manifest, a parquet file or folder, "
        "or a hub dataset id"
    )


def _local_files(spec: SourceSpec, pattern: str) -> list[str]:
    path = spec.path
    p = Path(path)
    if p.is_dir():
        files = sorted(str(f) for f in p.rglob(pattern))
        if not files:
            raise DataError(f"source {spec.name!r}: no {pattern} files in the folder {path!r}")
        return files
    import glob

    files = sorted(glob.glob(path))
    if not files:
        raise missing_path_error(spec, "manifest" if spec.kind in ("csv", "jsonl") else "data path")
    return files


def split_files(path: str, split: str, spec: SourceSpec | None = None) -> list[str]:
    """Parquet files of ``split`` under ``path``, by the Hub's naming conventions
    (``<split>-*.parquet``, ``<split>/*.parquet``, ``<split>.parquet``); all files if none match."""
    files = _local_files(spec or SourceSpec("parquet", path, kind="parquet"), "*.parquet")
    if not Path(path).is_dir():
        return files
    named = [f for f in files if Path(f).name.startswith(f"{split}-") or Path(f).stem == split]
    in_dir = [f for f in files if Path(f).parent.name == split]
    return named or in_dir or files


def audiofolder_metadata(path: str, split: str) -> Path | None:
    """The ``metadata.csv`` / ``metadata.jsonl`` of an audiofolder split (``<path>/<split>/`` first)."""
    for folder in (Path(path) / split, Path(path)):
        for name in ("metadata.csv", "metadata.jsonl"):
            if (folder / name).is_file():
                return folder / name
    return None


def open_stream(spec: SourceSpec) -> datasets.IterableDataset:
    """Open ``spec`` as a streamed ``datasets.IterableDataset`` with undecoded audio."""
    if spec.kind == "hub":
        ds = _open_hub(spec)
    elif spec.kind == "parquet":
        files = spec.data_files or split_files(spec.path, spec.split, spec)
        ds = datasets.load_dataset(
            "parquet", data_files={spec.split: files}, split=spec.split, streaming=True
        )
    elif spec.kind == "audiofolder":
        if not Path(spec.path).is_dir():
            raise FileNotFoundError(f"source {spec.name!r}: audiofolder directory {spec.path!r} not found")
        metadata = audiofolder_metadata(spec.path, spec.split)
        if metadata is not None:
            # Stream the metadata file alone: the audiofolder builder lists every audio file first,
            # which takes seconds on large folders. Paths resolve against the metadata's folder.
            builder = "csv" if metadata.suffix == ".csv" else "json"
            encoding = manifest_encoding([str(metadata)], spec.encoding)
            ds = datasets.load_dataset(
                builder, data_files={spec.split: [str(metadata)]}, split=spec.split, streaming=True,
                encoding=encoding,
            )  # fmt: skip
        else:
            ds = datasets.load_dataset("audiofolder", data_dir=spec.path, split=spec.split, streaming=True)
    elif spec.kind == "csv":  # manifest: audio path, text[, speaker, split]; .tsv is tab-separated
        files = spec.data_files or _local_files(spec, "*.[ct]sv")
        delimiter = "\t" if files[0].endswith(".tsv") else ","
        ds = datasets.load_dataset(
            "csv", data_files={spec.split: files}, split=spec.split, streaming=True, delimiter=delimiter,
            encoding=manifest_encoding(files, spec.encoding),
        )  # fmt: skip
    else:  # jsonl manifest (NeMo style: audio_filepath, text, duration, ...)
        files = spec.data_files or _local_files(spec, "*.jsonl")
        ds = datasets.load_dataset(
            "json", data_files={spec.split: files}, split=spec.split, streaming=True,
            encoding=manifest_encoding(files, spec.encoding),
        )  # fmt: skip
    features = ds.features or {}
    if isinstance(features.get(spec.audio_column), datasets.Audio):
        ds = ds.cast_column(spec.audio_column, datasets.Audio(decode=False))
    return ds


def _open_hub(spec: SourceSpec) -> datasets.IterableDataset:
    """A hub dataset, or a :class:`DataError` saying why a path is not one."""
    if not looks_like_hub_id(spec.path):
        raise missing_path_error(spec)
    if hub_offline():
        raise DataError(
            f"source {spec.name!r}: {spec.path!r} is not a local path (no such file or folder in "
            f"{Path.cwd()}) and the hub is offline (HF_HUB_OFFLINE / HF_DATASETS_OFFLINE): fix the path, "
            "or go online to stream it as a hub dataset"
        )
    try:
        return datasets.load_dataset(
            spec.path, spec.config, split=spec.split, streaming=True, revision=spec.revision
        )
    except (FileNotFoundError, ConnectionError, ValueError) as err:  # DatasetNotFoundError is one
        raise DataError(
            f"source {spec.name!r}: {spec.path!r} is neither a local path (no such file or folder in "
            f"{Path.cwd()}) nor a dataset the hub serves: {err}"
        ) from err


def shard_stream(ds: datasets.IterableDataset, shard_index: int, num_shards: int) -> datasets.IterableDataset:
    """Give each (rank, worker) its own disjoint part of a stream.

    With at least ``num_shards`` files each reader gets whole files; otherwise ``datasets`` falls
    back to every ``num_shards``-th example, which is still disjoint but reads every file.
    """
    if num_shards <= 1:
        return ds
    if ds.num_shards < num_shards:
        log.debug("stream has %d file shards for %d readers: example-level split", ds.num_shards, num_shards)
    return split_dataset_by_node(ds, rank=shard_index, world_size=num_shards)


def _relative_base(spec: SourceSpec) -> Path | None:
    """The folder relative audio paths resolve against (manifests and audiofolder metadata)."""
    if spec.kind == "audiofolder":
        metadata = audiofolder_metadata(spec.path, spec.split)
        return metadata.parent if metadata is not None else None
    if spec.kind not in ("jsonl", "csv"):
        return None
    p = Path(spec.data_files[0] if spec.data_files else spec.path)
    return p.parent if not p.is_dir() else p


# Per-example prompt fields written by the data_prep generators (keywords, translation targets),
# carried into raw records for the stage-2 prompt builder. Small strings: fine in resumable state.
PROMPT_FIELDS = (
    "task",
    "prompt_suffix",
    "keywords",
    "bias_words",
    "source_language",
    "target_language",
)


def normalize_record(
    spec: SourceSpec, row: dict[str, Any], index: int, base_dir: Path | None = None
) -> dict[str, Any]:
    """Map a source row to a raw record (see module docstring). Never decodes audio."""
    audio = row.get(spec.audio_column)
    if audio is None:  # conventional path columns: NeMo manifests, audiofolder metadata, CSV manifests
        audio = next((row[k] for k in AUDIO_PATH_COLUMNS if row.get(k)), None)
    if isinstance(audio, dict):
        raw = {"bytes": audio.get("bytes"), "path": audio.get("path")}
    elif isinstance(audio, (bytes, bytearray)):
        raw = {"bytes": bytes(audio), "path": None}
    elif isinstance(audio, (str, os.PathLike)):
        raw = {"bytes": None, "path": str(audio)}
    else:
        raw = {"bytes": None, "path": None}
    base = base_dir if base_dir is not None else _relative_base(spec)
    if raw["bytes"] is None and raw["path"] and base is not None and not os.path.isabs(raw["path"]):
        raw["path"] = str(base / raw["path"])

    sample_id = row.get(spec.id_column) if spec.id_column else None
    if sample_id is None and isinstance(audio, (str, os.PathLike)):
        sample_id = str(audio)  # the path as the manifest writes it: stable whatever the layout
    if sample_id is None:
        # Fall back to a running index: stable for a fixed (world size, workers) layout.
        sample_id = f"{index:09d}"
    text = row.get(spec.text_column)
    if text is None and spec.text_column == "text":
        # data_prep.translate writes the training target as target_text (the transcript is source_text)
        text = row.get("target_text")
    problems = {}  # why a field is missing, for the skip report: the columns the row does have
    if spec.text_column not in row and text is None:
        suggestion = suggest_text_column(row, exclude=(spec.speaker_column or "", spec.id_column or ""))
        problems["text"] = missing_column_message("text", spec.text_column, row, suggestion)
    if raw["bytes"] is None and raw["path"] is None and spec.audio_column not in row:
        problems["audio"] = missing_column_message("audio", spec.audio_column, row, suggest_audio_column(row))
    language = spec.language
    if language is None and spec.language_column:
        language = row.get(spec.language_column)
    record = {
        "id": f"{spec.name}/{sample_id}",
        "audio": raw,
        "text": text if isinstance(text, str) else None,
        "language": language,
        "source": spec.name,
    }
    for key in PROMPT_FIELDS:
        if row.get(key) is not None:
            record[key] = row[key]
    if spec.speaker_column and row.get(spec.speaker_column) is not None:
        record["speaker"] = str(row[spec.speaker_column])
    duration = row.get("duration")  # NeMo manifests: checked against the header before decoding
    if isinstance(duration, (int, float)) and not isinstance(duration, bool):
        record["duration"] = float(duration)
    if problems:
        record["problems"] = problems
    if spec.task:
        record["task"] = spec.task
    return record


class SourceReader:
    """A resumable reader over one source's share of the stream (one rank x worker slot).

    ``state_dict()`` captures the ``datasets`` stream position plus our pass counter, so a restored
    reader yields exactly the records an uninterrupted one would have yielded next.
    """

    def __init__(
        self, spec: SourceSpec, shard_index: int = 0, num_shards: int = 1, seed: int = 0, keys: bool = False
    ):
        self.spec = spec
        self.keys = keys  # attach each row's held-out split keys (speaker, recording, content hash)
        self.shard_index = shard_index
        self.num_shards = num_shards
        self.seed = seed
        self.passes = 0  # completed passes over this source
        self.count = 0  # records read in the current pass
        # rows of the current pass this source does not serve (held out, another split), by reason,
        # with the first such row's id; and the last finished pass's row and left-out counts
        self.left_out: Counter[str] = Counter()
        self.left_out_examples: dict[str, str] = {}
        self.last_pass: dict[str, Any] = {"rows": 0, "left_out": {}, "examples": {}}
        self._stream: datasets.IterableDataset | None = None
        self._iter: Iterator[dict[str, list]] | None = None
        self._resume_state: dict | None = None
        self._base_dir = _relative_base(spec)

    def _open(self) -> None:
        self._stream = shard_stream(open_stream(self.spec), self.shard_index, self.num_shards)
        self._stream.set_epoch(self.seed + self.passes)
        if self._resume_state is not None:
            self._stream.load_state_dict(self._resume_state)
            self._resume_state = None
        # ``.iter`` (unlike ``__iter__``) does not re-split the stream by DataLoader worker: our
        # (rank, worker) split above is the only one.
        self._iter = self._stream.iter(batch_size=1)

    def next_record(self) -> dict[str, Any] | None:
        """The next raw record, or ``None`` at the end of the current pass."""
        while True:
            if self._iter is None:
                self._open()
            try:
                batch = next(self._iter)
            except StopIteration:
                self._iter = None
                self._stream = None
                self.passes += 1
                self.last_pass = {
                    "rows": self.count, "left_out": dict(self.left_out), "examples": dict(self.left_out_examples)
                }  # fmt: skip
                self.count = 0
                self.left_out, self.left_out_examples = Counter(), {}
                return None
            row = {k: v[0] for k, v in batch.items()}
            index = self.count * self.num_shards + self.shard_index
            self.count += 1
            reason = self.spec.left_out_because(row)
            if reason is None:
                record = normalize_record(self.spec, row, index, self._base_dir)
                if self.keys:
                    record["keys"] = {
                        k: v for k in HOLDOUT_KEYS if (v := self.spec.key_of(row, k)) is not None
                    }
                return record
            # the other side of a split, not this source's record
            self.left_out[reason] += 1
            if reason not in self.left_out_examples:
                key = self.spec.holdout_key(row, self.spec.holdout_by)
                what = (
                    f"split {row.get('split')!r}"
                    if reason == "other_split"
                    else (f"{key[0]} {key[1]!r}" if key else "")
                )
                self.left_out_examples[reason] = what

    def state_dict(self) -> dict[str, Any]:
        stream_state = self._stream.state_dict() if self._stream is not None else self._resume_state
        return {
            "passes": self.passes, "count": self.count, "stream": stream_state,
            "left_out": dict(self.left_out), "left_out_examples": dict(self.left_out_examples),
        }  # fmt: skip

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.passes = state["passes"]
        self.count = state["count"]
        self.left_out = Counter(state.get("left_out", {}))
        self.left_out_examples = dict(state.get("left_out_examples", {}))
        self._resume_state = state["stream"]
        self._stream = None
        self._iter = None
