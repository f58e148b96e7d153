"""Streamed speech sources: hub ids, parquet, audiofolder and CSV / JSONL manifests, local or in
object storage (any fsspec URL, see :mod:`granite_train.data.remote`).

Every source is opened with ``datasets`` in streaming mode and normalised to *raw records*::

    {"id": str, "audio": {"bytes": bytes | None, "path": str | None}, "text": str,
     "language": str | None, "source": str}

Audio is never decoded by ``datasets`` (``Audio(decode=False)``): decoding, resampling and
validation happen in :mod:`granite_train.data.prepare`, where failures are counted instead of
crashing a worker. A raw record is small and self-contained, which is what lets the pipeline put
buffered records into its resumable state.

A read that fails mid-stream (a dropped connection, a restarted server) is retried from the last
record served, so that nothing is served twice or lost; a file that stays unreadable is skipped,
counted and named (:class:`SourceReader`).
"""

from __future__ import annotations

import copy
import functools
import hashlib
import logging
import os
import re
import time
import zlib
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets
from datasets.distributed import split_dataset_by_node

from granite_train.data import remote
from granite_train.data.errors import DataError
from granite_train.data.manifests import (
    AUDIO_SUFFIXES,
    manifest_encoding,
    missing_column_message,
    suggest_audio_column,
    suggest_text_column,
)
from granite_train.data.skips import format_reasons

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
            or a CSV / TSV / JSONL manifest file / glob; local, or an fsspec URL
            (``s3://bucket/prefix/``, ``s3://bucket/x/*.parquet``, ``gs://...``, ``hf://...``).
        kind: One of ``hub``, ``parquet``, ``audiofolder``, ``jsonl``, ``csv``; ``None`` guesses
            from ``path`` (a URL prefix by listing it: parquet files, or a ``metadata.csv`` /
            ``metadata.jsonl`` for an audiofolder).
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
        storage_options: Options of the fsspec filesystem of URL paths (data files, manifests and
            the audio they name), also passed to ``datasets.load_dataset``; e.g. for ``s3://``
            ``{endpoint_url: http://minio:9000, key: ..., secret: ...}``. Empty: the backend's own
            configuration applies (s3fs: ``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` or
            ``AWS_PROFILE``, ``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL``). Not printed in the
            spec's repr; secrets are better kept in the environment than in a saved config.
        read_attempts: Tries of a read that fails with an I/O or connection error (1: no retry).
            A file still unreadable after them is skipped and named in the reader's report; a
            server that stays unreachable stops the run with a :class:`DataError`.
        retry_backoff: Seconds before the first retry; each further retry waits twice as long.
        retry_backoff_max: The longest wait between two tries, in seconds.
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
    storage_options: dict[str, Any] = field(default_factory=dict, repr=False)
    read_attempts: int = 6
    retry_backoff: float = 1.0
    retry_backoff_max: float = 30.0

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("SourceSpec.name must be a non-empty string")
        if not isinstance(self.storage_options, Mapping):
            raise ValueError(
                f"source {self.name!r}: storage_options must be a mapping of fsspec filesystem options "
                f"(e.g. {{endpoint_url: ..., key: ...}}), got {type(self.storage_options).__name__}"
            )
        self.storage_options = dict(self.storage_options)
        try:
            self.retry_policy  # noqa: B018 -- validates the three retry fields
        except ValueError as err:
            raise ValueError(f"source {self.name!r}: {err}") from None
        for url in [self.path, *self.data_files]:
            if remote.is_url(url):
                remote.check_backend(url, f"source {self.name!r}: path")
        if self.kind is None:
            self.kind = guess_kind(self.path, self.storage_options)
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

    @property
    def retry_policy(self) -> remote.RetryPolicy:
        """How failed reads of this source are retried (``read_attempts``, ``retry_backoff*``)."""
        return remote.RetryPolicy(self.read_attempts, self.retry_backoff, self.retry_backoff_max)

    @property
    def is_remote(self) -> bool:
        """Whether the source's files are fsspec URLs (object storage) rather than local paths."""
        return remote.is_url(self.path) or any(remote.is_url(f) for f in self.data_files)

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


def guess_kind(path: str, storage_options: Mapping[str, Any] | None = None) -> str:
    """Infer the source kind from a path: existing local paths by content, a URL by its suffix or
    glob, else by listing its prefix through fsspec; anything else is a hub id."""
    if remote.is_url(path):
        lowered = path.lower().rstrip("/")
        if lowered.endswith((".csv", ".tsv")):
            return "csv"
        if lowered.endswith((".jsonl", ".json")):
            return "jsonl"
        if lowered.endswith(".parquet") or remote.has_glob(path):
            return "parquet"
        try:
            return remote.url_kind(path, storage_options)
        except DataError:
            raise
        except Exception as err:  # no network, wrong credentials: say what to check
            raise remote.open_error("cannot guess the kind of source", path, err, 1) from err
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
    """The error for a source path that names nothing on this machine (or in its bucket)."""
    if remote.is_url(spec.path):
        return DataError(
            f"source {spec.name!r}: {what or 'data path'} {spec.path!r} matches no file: give a parquet "
            "prefix or glob, a CSV / TSV / JSONL manifest or an audio folder with a metadata.csv / "
            f"metadata.jsonl (access: {remote.settings_hint(spec.path)})"
        )
    where = Path(spec.path).expanduser().absolute()
    return DataError(
        f"source {spec.name!r}: {what or 'data path'} {spec.path!r} does not exist ({where} is neither a "
        "file nor a folder): give an audio folder, a CSV / TSV / JSONL manifest, a parquet file or folder, "
        "or a hub dataset id"
    )


def _local_files(spec: SourceSpec, pattern: str) -> list[str]:
    """The files of ``spec.path`` (a file, glob or folder; local or a URL) matching ``pattern``."""
    path = spec.path
    if remote.is_url(path):  # listed through fsspec: the local filesystem is never consulted
        files = remote.list_files(path, pattern, spec.storage_options)
        if not files:
            raise missing_path_error(spec, "manifest" if spec.kind in ("csv", "jsonl") else "data path")
        return files
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
    if remote.is_url(path):
        if remote.has_glob(path) or path.lower().endswith(".parquet"):
            return files  # a glob or one file: what it names
        names = [(f, f.rsplit("/", 1)[-1], f.rsplit("/", 2)[-2]) for f in files]
        named = [f for f, name, _ in names if name.startswith(f"{split}-") or name == f"{split}.parquet"]
        in_dir = [f for f, _, parent in names if parent == split]
        return named or in_dir or files
    if not Path(path).is_dir():
        return files
    named = [f for f in files if Path(f).name.startswith(f"{split}-") or Path(f).stem == split]
    in_dir = [f for f in files if Path(f).parent.name == split]
    return named or in_dir or files


def audiofolder_metadata(
    path: str, split: str, storage_options: Mapping[str, Any] | None = None
) -> Path | str | None:
    """The ``metadata.csv`` / ``metadata.jsonl`` of an audiofolder split (``<path>/<split>/`` first);
    a URL for an audiofolder in object storage."""
    if remote.is_url(path):
        return remote.metadata_url(path, split, storage_options)
    for folder in (Path(path) / split, Path(path)):
        for name in ("metadata.csv", "metadata.jsonl"):
            if (folder / name).is_file():
                return folder / name
    return None


def source_files(spec: SourceSpec) -> list[str] | None:
    """The data files :func:`open_stream` streams for ``spec`` (listed now), or ``None`` where
    ``datasets`` finds them itself (a hub dataset, an audiofolder without metadata file)."""
    if spec.kind == "hub":
        return None
    if spec.kind == "parquet":
        return list(spec.data_files) or split_files(spec.path, spec.split, spec)
    if spec.kind == "audiofolder":
        if remote.is_url(spec.path):
            metadata = audiofolder_metadata(spec.path, spec.split, spec.storage_options)
            if metadata is None:  # listing every audio object of a bucket prefix is slow and costly
                raise DataError(
                    f"source {spec.name!r}: the audio folder {spec.path!r} in object storage needs a "
                    f"metadata.csv or metadata.jsonl (in {spec.path.rstrip('/')}/{spec.split}/ or at its "
                    "root) naming each audio file and its text; write one, or give a CSV / JSONL manifest"
                )
            return [str(metadata)]
        if not Path(spec.path).is_dir():
            raise FileNotFoundError(f"source {spec.name!r}: audiofolder directory {spec.path!r} not found")
        metadata = audiofolder_metadata(spec.path, spec.split)
        return [str(metadata)] if metadata is not None else None
    if spec.kind == "csv":
        return list(spec.data_files) or _local_files(spec, "*.[ct]sv")
    return list(spec.data_files) or _local_files(spec, "*.jsonl")


def open_stream(spec: SourceSpec, files: list[str] | None = None) -> datasets.IterableDataset:
    """Open ``spec`` as a streamed ``datasets.IterableDataset`` with undecoded audio.

    ``files`` are its data files as :func:`source_files` lists them (listed here when not given).
    URLs are opened through fsspec with ``spec.storage_options``.
    """
    # only when given: local sources call load_dataset exactly as before
    storage = {"storage_options": copy.deepcopy(spec.storage_options)} if spec.storage_options else {}
    if spec.kind != "hub" and files is None:
        files = source_files(spec)
    if spec.kind == "hub":
        ds = _open_hub(spec)
    elif spec.kind == "parquet":
        ds = datasets.load_dataset(
            "parquet", data_files={spec.split: files}, split=spec.split, streaming=True, **storage
        )
    elif spec.kind == "audiofolder":
        if files:
            # Stream the metadata file alone: the audiofolder builder lists every audio file first,
            # which takes seconds on large folders. Paths resolve against the metadata's folder.
            builder = "csv" if files[0].endswith(".csv") else "json"
            encoding = manifest_encoding(files, spec.encoding, spec.storage_options)
            ds = datasets.load_dataset(
                builder, data_files={spec.split: files}, split=spec.split, streaming=True,
                encoding=encoding, **storage,
            )  # fmt: skip
        else:
            ds = datasets.load_dataset("audiofolder", data_dir=spec.path, split=spec.split, streaming=True)
    elif spec.kind == "csv":  # manifest: audio path, text[, speaker, split]; .tsv is tab-separated
        delimiter = "\t" if files[0].endswith(".tsv") else ","
        ds = datasets.load_dataset(
            "csv", data_files={spec.split: files}, split=spec.split, streaming=True, delimiter=delimiter,
            encoding=manifest_encoding(files, spec.encoding, spec.storage_options), **storage,
        )  # fmt: skip
    else:  # jsonl manifest (NeMo style: audio_filepath, text, duration, ...)
        ds = datasets.load_dataset(
            "json", data_files={spec.split: files}, split=spec.split, streaming=True,
            encoding=manifest_encoding(files, spec.encoding, spec.storage_options), **storage,
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
    storage = {"storage_options": copy.deepcopy(spec.storage_options)} if spec.storage_options else {}
    try:
        return datasets.load_dataset(
            spec.path, spec.config, split=spec.split, streaming=True, revision=spec.revision, **storage
        )
    except (FileNotFoundError, ConnectionError, ValueError) as err:  # DatasetNotFoundError is one
        raise DataError(
            f"source {spec.name!r}: {spec.path!r} is neither a local path (no such file or folder in "
            f"{Path.cwd()}) nor a dataset the hub serves: {err}"
        ) from err


def shard_stream(ds: datasets.IterableDataset, shard_index: int, num_shards: int) -> datasets.IterableDataset:
    """Give each (rank, worker) its own disjoint part of a stream.

    When the number of files divides by ``num_shards`` each reader gets whole files; otherwise
    ``datasets`` falls back to every ``num_shards``-th example, which is still disjoint but reads
    every file (stage into a file count that ranks x workers divides: ``granite-train stage``).
    """
    if num_shards <= 1:
        return ds
    if ds.num_shards < num_shards:
        log.debug("stream has %d file shards for %d readers: example-level split", ds.num_shards, num_shards)
    return split_dataset_by_node(ds, rank=shard_index, world_size=num_shards)


def _relative_base(spec: SourceSpec) -> Path | str | None:
    """The folder relative audio paths resolve against (manifests and audiofolder metadata): a
    local folder, or a URL prefix for a manifest in object storage."""
    if spec.kind == "audiofolder":
        metadata = audiofolder_metadata(spec.path, spec.split, spec.storage_options)
        if isinstance(metadata, str):
            return remote.url_parent(metadata)
        return metadata.parent if metadata is not None else None
    if spec.kind not in ("jsonl", "csv"):
        return None
    where = spec.data_files[0] if spec.data_files else spec.path
    if remote.is_url(where):  # a manifest file or glob: its folder; a prefix: itself
        return _url_folder(where)
    p = Path(where)
    return p.parent if not p.is_dir() else p


def resolve_audio_path(path: str, base: Path | str | None) -> str:
    """A manifest's audio path as the pipeline opens it: URLs and absolute paths as written,
    relative ones against ``base`` (the manifest's folder, local or a URL)."""
    if base is None or remote.is_url(path) or os.path.isabs(path):
        return path
    if isinstance(base, str) and remote.is_url(base):
        return remote.join_url(base, path)
    return str(Path(base) / path)


# Per-example prompt fields written by the data_prep generators (keywords, translation targets),
# carried into raw records for the stage-2 prompt builder. Small strings: fine in resumable state.
PROMPT_FIELDS = (
    "task",
    "prompt_suffix",
    "draft",
    "keywords",
    "bias_words",
    "source_language",
    "target_language",
)


def normalize_record(
    spec: SourceSpec, row: dict[str, Any], index: int, base_dir: Path | str | None = None
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
    if raw["bytes"] is None and raw["path"]:
        raw["path"] = resolve_audio_path(raw["path"], base)

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


# why a file of a source was left unread, in the reader's report (see granite_train.data.skips.HINTS)
UNREADABLE_FILE = "unreadable_file"
_UNSET: Any = object()


class SourceReader:
    """A resumable reader over one source's share of the stream (one rank x worker slot).

    ``state_dict()`` captures the ``datasets`` stream position plus our pass counter, so a restored
    reader yields exactly the records an uninterrupted one would have yielded next.

    Faults: a read that fails with an I/O or connection error (a dropped connection, a restarted
    server) is tried again from the stream position after the last record served, after a backoff
    (``spec.read_attempts``, ``spec.retry_backoff``), so nothing is served twice or lost. A file
    that stays unreadable (deleted, no access) is skipped: the position moves to the start of the
    next file, and the file is named in ``unreadable`` (all passes), ``last_pass["unreadable"]``
    and :meth:`report_lines`, logged once. A server that stays unreachable is a :class:`DataError`
    naming the URL and the settings to check (a training run resumes from its checkpoint).
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
        self.last_pass: dict[str, Any] = {"rows": 0, "left_out": {}, "examples": {}, "unreadable": []}
        self.retries = 0  # failed reads tried again, all passes
        self.unreadable: dict[str, str] = {}  # files skipped as unreadable (all passes) -> the error
        self.unreadable_in_pass: list[str] = []  # ... and those of the current pass
        self._stream: datasets.IterableDataset | None = None
        self._iter: Iterator[dict[str, list]] | None = None
        self._resume_state: dict | None = None
        self._good_state: dict | None = None  # the stream position after the last record served
        self._failures = 0  # failed tries in a row at the current position
        self._files: list[str] = []  # the data files of the open stream, to name a failing one
        self._share: list[str] | None = None
        self._files_digest: str | None = None  # ... as a digest, saved in the state
        self._resume_digest: str | None = None
        if spec.is_remote:
            # the folder of a manifest in object storage is found by listing: at the first open,
            # with retries, not here; and audio URLs under it are read with this source's options
            self._base_dir: Path | str | None = _UNSET
            for url in (spec.path, *spec.data_files):
                if remote.is_url(url):
                    remote.register_storage(_url_folder(url), spec.storage_options, spec.retry_policy)
        else:
            self._base_dir = _relative_base(spec)

    def _open(self) -> None:
        spec, failures = self.spec, 0
        while True:
            try:
                files = source_files(spec)
                stream = open_stream(spec, files)
                if self._base_dir is _UNSET:
                    self._base_dir = _relative_base(spec)
                break
            except Exception as err:
                # a local path fails at once as before; object storage may be down for a while
                if not spec.is_remote or not remote.is_transient(err):
                    raise
                failures += 1
                if failures >= spec.retry_policy.attempts:
                    raise remote.open_error(f"source {spec.name!r}", spec.path, err, failures) from err
                self._wait(failures, spec.path, err)
        self._files = list(files or [])
        # the file behind each shard index of this reader's stream, to name one that fails
        self._share = remote.shard_files(self._files, stream.num_shards, self.shard_index, self.num_shards)
        self._files_digest = _digest(self._files) if files else None
        if self._resume_state is not None and self._resume_digest not in (None, self._files_digest):
            # the position is an index into the file list: with files added or removed since the
            # state was saved, it points elsewhere (as for a local folder whose files changed)
            log.warning(
                "source %r: its data files changed since the resume state was saved (now %d file(s)): "
                "the resumed position may repeat or leave out records; restore the files to resume exactly",
                spec.name, len(self._files),
            )  # fmt: skip
        self._resume_digest = None
        self._stream = shard_stream(stream, self.shard_index, self.num_shards)
        self._stream.set_epoch(self.seed + self.passes)
        self._good_state = self._resume_state
        if self._resume_state is not None:
            self._stream.load_state_dict(remote.live_state(self._resume_state))
            self._resume_state = None
        self._failures = 0
        # ``.iter`` (unlike ``__iter__``) does not re-split the stream by DataLoader worker: our
        # (rank, worker) split above is the only one.
        self._iter = self._stream.iter(batch_size=1)

    def _next_row(self) -> dict[str, list] | None:
        """The stream's next row (a batch of one), or ``None`` at the end of the pass."""
        while True:
            if self._iter is None:
                self._open()
            try:
                batch = next(self._iter)
            except StopIteration:
                return None
            except Exception as err:
                if not remote.is_transient(err):
                    raise  # a bug in the data (a parse error): retrying would hit it again
                self._recover(err)
                continue
            self._failures = 0
            # after each record, not after a failure: a failed read may have moved the position
            self._good_state = self._stream.state_dict()
            return batch

    def _recover(self, err: BaseException) -> None:
        """Continue the stream after the I/O fault ``err``: from the last good position after a
        backoff, or past the failing file once it stayed unreadable ``read_attempts`` times."""
        spec = self.spec
        file = self._failing_file(err)
        unreachable = remote.is_unreachable(err)
        self._failures += 1
        known_dead = file is not None and file in self.unreadable and not unreachable
        if known_dead or self._failures >= spec.retry_policy.attempts:
            if unreachable:
                raise remote.unreachable_error(
                    f"source {spec.name!r}", file or spec.path, err, self._failures
                ) from err
            self._skip_file(err, file)
        else:
            self.retries += 1
            self._wait(self._failures, file or spec.path, err)
            self._stream.load_state_dict(remote.live_state(self._good_state))
        self._iter = self._stream.iter(batch_size=1)

    def _failing_file(self, err: BaseException) -> str | None:
        """The file the failed read was in: by the stream's live position, else by the error."""
        moved = remote.skip_shard(self._stream.state_dict()) if self._share else None
        if moved is not None and moved[1] < len(self._share):
            return self._share[moved[1]]
        return remote.failing_file(err, self._files)

    def _skip_file(self, err: BaseException, file: str | None) -> None:
        spec = self.spec
        moved = remote.skip_shard(self._stream.state_dict())  # the live position: in the failing file
        if moved is None:
            raise DataError(
                f"source {spec.name!r}: {file or spec.path} stays unreadable ({remote.describe(err)}) after "
                f"{self._failures} attempt(s), and this stream cannot skip a file; restore the file or "
                "remove it from the source"
            ) from err
        state, shard = moved
        name = file or f"{spec.path} (file {shard + 1} of this reader's share)"
        if name in self.unreadable_in_pass:  # the position did not move: never loop on one file
            raise DataError(
                f"source {spec.name!r}: skipping the unreadable {name} did not move the stream past it "
                f"({remote.describe(err)}); restore the file or remove it from the source"
            ) from err
        if name not in self.unreadable:
            self.unreadable[name] = remote.describe(err)
            log.warning(
                "source %r: skipped %s: still unreadable after %d attempt(s) (%s); the rest of its "
                "records are left out (see the source's report)",
                spec.name, name, self._failures, remote.describe(err),
            )  # fmt: skip
        self.unreadable_in_pass.append(name)
        self._failures = 0
        self._good_state = state
        self._stream.load_state_dict(state)

    def _wait(self, failures: int, what: str, err: BaseException) -> None:
        policy = self.spec.retry_policy
        delay = policy.delay(failures)
        log.warning(
            "source %r: reading %s failed (%s); retry %d of %d in %.1f s",
            self.spec.name, what, remote.describe(err), failures, policy.attempts - 1, delay,
        )  # fmt: skip
        time.sleep(delay)

    def next_record(self) -> dict[str, Any] | None:
        """The next raw record, or ``None`` at the end of the current pass."""
        while True:
            batch = self._next_row()
            if batch is None:
                self._iter = None
                self._stream = None
                self._good_state = None
                self.passes += 1
                self.last_pass = {
                    "rows": self.count, "left_out": dict(self.left_out), "examples": dict(self.left_out_examples),
                    "unreadable": list(self.unreadable_in_pass),
                }  # fmt: skip
                self.count = 0
                self.left_out, self.left_out_examples = Counter(), {}
                self.unreadable_in_pass = []
                return None
            row = {k: v[0] for k, v in batch.items()}
            index = self.count * self.num_shards + self.shard_index
            self.count += 1
            reason = self.spec.left_out_because(row)
            if reason is None:
                record = normalize_record(self.spec, row, index, self._base_dir)
                path = record["audio"]["path"]
                if path and self.spec.storage_options and remote.is_url(path):
                    # audio in a bucket the source's path does not name: read it with its options too
                    remote.register_storage(_url_folder(path), self.spec.storage_options,
                                            self.spec.retry_policy, prefix=False)  # fmt: skip
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

    def report_lines(self) -> list[str]:
        """The files this reader left unread, as the skip report words skipped records: a count,
        the first file with its error, the fix; then every file by name."""
        if not self.unreadable:
            return []
        first, error = next(iter(self.unreadable.items()))
        lines = [f"source {self.spec.name!r} ({self.spec.path}): {len(self.unreadable)} file(s) left unread"]
        lines += format_reasons(
            {UNREADABLE_FILE: len(self.unreadable)}, {UNREADABLE_FILE: f"{first}: {error}"}
        )
        lines += [f"    {name}" for name in self.unreadable]
        return lines

    def state_dict(self) -> dict[str, Any]:
        # the position after the last record served (also while a failed read is being retried)
        stream_state = self._good_state if self._stream is not None else self._resume_state
        return {
            "passes": self.passes, "count": self.count, "stream": stream_state,
            "left_out": dict(self.left_out), "left_out_examples": dict(self.left_out_examples),
            "unreadable": dict(self.unreadable), "unreadable_in_pass": list(self.unreadable_in_pass),
            "retries": self.retries,
            "files_digest": self._files_digest if self._stream is not None else self._resume_digest,
        }  # fmt: skip

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.passes = state["passes"]
        self.count = state["count"]
        self.left_out = Counter(state.get("left_out", {}))
        self.left_out_examples = dict(state.get("left_out_examples", {}))
        self.unreadable = dict(state.get("unreadable", {}))
        self.unreadable_in_pass = list(state.get("unreadable_in_pass", []))
        self.retries = state.get("retries", 0)
        self._resume_digest = state.get("files_digest")
        self._resume_state = state["stream"]
        self._stream = None
        self._iter = None


def _digest(files: list[str]) -> str:
    return hashlib.sha1("\n".join(files).encode("utf-8")).hexdigest()[:16]


def _url_folder(url: str) -> str:
    """The folder a URL names: a file's or glob's parent, else the prefix itself."""
    last = url.rstrip("/").split("://", 1)[-1].rsplit("/", 1)[-1]
    is_file = "/" in url.split("://", 1)[-1].rstrip("/") and (
        remote.has_glob(last) or last.lower().endswith(_FILE_SUFFIXES + AUDIO_SUFFIXES)
    )
    return remote.url_parent(url) if is_file else url.rstrip("/")
