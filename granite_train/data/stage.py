"""Stage sources once into large parquet shards that any number of ranks x workers read without decoding.

``granite-train stage`` (:mod:`granite_train.workflows.stage`) reads each source once through the
same reader and checks as training (:class:`~granite_train.data.sources.SourceReader`,
:class:`~granite_train.data.prepare.ExamplePreparer`: decoded, downmixed, resampled to 16 kHz,
too short / too long / silent / without text dropped and counted) and writes, per source::

    <out>/<source>/<split>-00000.parquet   rows: id, audio {bytes, path}, duration, text, speaker,
                                           language, task (+ the prompt fields the row carried)
    <out>/<source>/.stage/<split>-00000.json   the shard's state: rows, seconds, sha256, the reader
                                           position after it, what was dropped in it and why

and over all sources ``index.json`` (every shard: path, rows, seconds, sha256, duration range),
``report.md`` (hours per source, drops by reason with an example) and ``data.yaml`` (the staged
sources as a ``configs/data`` ``sources:`` block, weights and languages kept).

Shards hold ``rows_per_shard`` rows, so the loader gives whole files to each rank x worker
(:func:`~granite_train.data.sources.shard_stream`) and buckets by the ``duration`` column and the
FLAC header, never decoding to plan. A killed run resumes: a shard counts as written when its
state file exists and names the parquet file's sha256; the reader restarts from the position the
last such state recorded, so a resumed staging writes the same shards, byte for byte, as an
uninterrupted one. ``out`` may be a local folder or an fsspec URL (``s3://bucket/staged``).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from granite_train.audio.encode import CODECS, encode_audio
from granite_train.data.errors import DataError
from granite_train.data.prepare import ExamplePreparer, PrepareConfig
from granite_train.data.sources import PROMPT_FIELDS, SourceReader, SourceSpec

log = logging.getLogger(__name__)

STATE_DIR = ".stage"
INDEX_NAME = "index.json"
COLUMNS = ("id", "audio", "duration", "text", "speaker", "language", "task", "source")


@dataclass
class StageSettings:
    """How sources are staged.

    Attributes:
        rows_per_shard: rows per parquet file (the unit ranks x workers split by); the last shard
            of a source holds the rest.
        codec: audio codec of the stored bytes: ``flac`` (lossless, default), ``wav``, ``opus``, ``mp3``.
        prepare: the checks and repairs each record goes through (training's ``PrepareConfig``;
            CTC targets are not built: the staged text is the transcript as written).
        row_group_size: rows per parquet row group (a reader's smallest read).
        storage_options: fsspec options for ``out`` when it is a URL (credentials, endpoint).
    """

    rows_per_shard: int = 2000
    codec: str = "flac"
    prepare: PrepareConfig = field(
        default_factory=lambda: PrepareConfig(ctc_targets=False, check_ctc_length=False)
    )
    row_group_size: int = 100
    storage_options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.codec not in CODECS:
            raise ValueError(f"stage codec must be one of {sorted(CODECS)}, got {self.codec!r}")
        if self.rows_per_shard < 1 or self.row_group_size < 1:
            raise ValueError(
                f"rows_per_shard and row_group_size must be >= 1, got {self.rows_per_shard}, {self.row_group_size}"
            )


@dataclass
class ShardState:
    """One written shard (its ``.stage/*.json``)."""

    path: str  # relative to the staged folder
    source: str
    split: str
    index: int
    rows: int
    seconds: float
    sha256: str
    min_duration: float
    max_duration: float
    fingerprint: str  # of the source and the settings: a rerun with other ones must not resume
    reader_state: dict[str, Any]  # the source reader's position after this shard's last row
    dropped: dict[str, int]  # reason -> count, records dropped while filling this shard
    fixed: dict[str, int]
    examples: dict[str, str]  # reason -> "id: detail", the first of each in this shard


def _join(root: str, *parts: str) -> str:
    return "/".join([root.rstrip("/"), *parts])


class _Output:
    """The staged folder, local or an fsspec URL: whole-file writes only (an object store has no rename)."""

    def __init__(self, url: str, storage_options: dict[str, Any]):
        from fsspec.core import url_to_fs

        self.fs, self.root = url_to_fs(url, **storage_options)
        self.url = url

    def write(self, relative: str, data: bytes) -> None:
        path = _join(self.root, relative)
        self.fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
        tmp = path + ".tmp"
        with self.fs.open(tmp, "wb") as f:
            f.write(data)
        self.fs.mv(tmp, path)  # a rename on disk, copy + delete on an object store

    def read(self, relative: str) -> bytes | None:
        path = _join(self.root, relative)
        if not self.fs.exists(path):
            return None
        with self.fs.open(path, "rb") as f:
            return f.read()

    def list(self, relative: str, suffix: str) -> list[str]:
        path = _join(self.root, relative)
        if not self.fs.exists(path):
            return []
        return sorted(p.rsplit("/", 1)[-1] for p in self.fs.ls(path, detail=False) if p.endswith(suffix))


def _shard_name(split: str, index: int) -> str:
    return f"{split}-{index:05d}"


def _parquet_bytes(rows: list[dict[str, Any]], row_group_size: int) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    audio = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    schema = pa.schema(
        [("id", pa.string()), ("audio", audio), ("duration", pa.float64()), ("text", pa.string()),
         ("speaker", pa.string()), ("language", pa.string()), ("task", pa.string()), ("source", pa.string()),
         *[(k, pa.string()) for k in PROMPT_FIELDS if k != "task"]]
    )  # fmt: skip
    # the card of `datasets`: the audio column is an Audio feature, decoded on access by load_dataset
    features = {"audio": {"_type": "Audio", "sampling_rate": 16000}}
    schema = schema.with_metadata({"huggingface": json.dumps({"info": {"features": features}})})
    table = pa.Table.from_pylist(rows, schema=schema)
    buffer = io.BytesIO()
    pq.write_table(table, buffer, row_group_size=row_group_size, compression="zstd")
    return buffer.getvalue()


def _row(example, codec: str) -> dict[str, Any]:
    record = example.record
    # the row's own id, without the reader's "<source>/" prefix: read back as a source of the same
    # name, a staged record keeps the id it had (held-out splits and logged ids stay valid)
    source = str(record.get("source"))
    row_id = record["id"].removeprefix(f"{source}/")
    row = {
        "id": row_id,
        "audio": {"bytes": encode_audio(example.waveform, example.sample_rate, codec), "path": None},
        "duration": round(example.duration, 4),
        "text": record.get("text"),
        "speaker": record.get("speaker"),
        "language": record.get("language"),
        "task": record.get("task") or "asr",
        "source": record.get("source"),
    }
    for key in PROMPT_FIELDS:
        if key != "task":
            value = record.get(key)
            row[key] = json.dumps(value) if isinstance(value, list | dict) else value
    return row


def stage_fingerprint(spec: SourceSpec, settings: StageSettings) -> str:
    """What a staged source depends on: the source spec and every setting but the storage options."""
    values = {
        "source": asdict(spec),
        "settings": {k: v for k, v in asdict(settings).items() if k != "storage_options"},
    }
    return hashlib.sha1(json.dumps(values, sort_keys=True, default=str).encode()).hexdigest()


def _verified_states(out: _Output, spec: SourceSpec, fingerprint: str) -> list[ShardState]:
    """The shards already written, in order, up to the first whose file is missing or differs.

    Shards of another source or other settings under the same name are an error, not a resume."""
    source, split = spec.name, spec.split
    states = []
    for name in out.list(_join(source, STATE_DIR), ".json"):
        if not name.startswith(f"{split}-"):
            continue
        state = ShardState(**json.loads(out.read(_join(source, STATE_DIR, name))))
        if state.fingerprint != fingerprint:
            raise StageError(
                f"{out.url}/{source} holds {split!r} shards staged from another source or with other settings "
                f"(this run: {spec.path!r}); stage into another out=, or delete that folder to stage it again"
            )
        data = out.read(state.path)
        if state.index != len(states) or data is None or hashlib.sha256(data).hexdigest() != state.sha256:
            log.warning("stage %s: shard %s is missing or changed: staging again from it", source, state.path)
            break
        states.append(state)
    return states


def stage_source(
    spec: SourceSpec,
    out: _Output,
    settings: StageSettings,
    progress: Callable[[int], None] | None = None,
    stop_after_shards: int | None = None,
) -> list[ShardState]:
    """Stage one source (see the module doc); returns all its shard states, resumed ones included.

    ``stop_after_shards``: return after writing that many new shards (tests: a run killed between two
    shards).
    """
    fingerprint = stage_fingerprint(spec, settings)
    states = _verified_states(out, spec, fingerprint)
    reader = SourceReader(spec)
    if states:
        reader.load_state_dict(states[-1].reader_state)
        log.info("stage %s: %d shard(s) already written, resuming", spec.name, len(states))
        if reader.passes > 0:  # the last shard ended the pass: nothing left
            return states
    preparer = ExamplePreparer(settings.prepare, targets=None)
    counted_unreadable: set[str] = set()
    written = 0
    while True:
        rows: list[dict[str, Any]] = []
        durations: list[float] = []
        before = Counter(preparer.counts)
        first_examples = {k: dict(v) for k, v in preparer.examples.items()}
        while len(rows) < settings.rows_per_shard:
            record = reader.next_record()
            preparer.count_unreadable(spec.name, reader.unreadable, counted_unreadable)
            if record is None:
                break
            example = preparer(record)
            if progress is not None:
                progress(1)
            if example is None:
                continue
            rows.append(_row(example, settings.codec))
            durations.append(example.duration)
        counts = Counter(preparer.counts)
        counts.subtract(before)
        dropped = {k: v for k, v in counts.items() if v > 0 and not k.startswith("fixed_")}
        fixed = {k: v for k, v in counts.items() if v > 0 and k.startswith("fixed_")}
        new_examples = {
            reason: text
            for reason, text in preparer.examples.get(spec.name, {}).items()
            if reason not in first_examples.get(spec.name, {})
        }
        if not rows:
            if not states:
                raise StageError(
                    f"source {spec.name!r}: no usable record ({_describe_drops(dropped, new_examples)}); "
                    "nothing was staged"
                )
            # the pass ended right after the last shard: its state takes the end position and the
            # records dropped after its last row
            last = states[-1]
            last.reader_state = reader.state_dict()
            last.dropped = dict(Counter(last.dropped) + Counter(dropped))
            last.fixed = dict(Counter(last.fixed) + Counter(fixed))
            last.examples = {**new_examples, **last.examples}
            out.write(_join(spec.name, STATE_DIR, f"{_shard_name(spec.split, last.index)}.json"), _json(last))
            return states
        index = len(states)
        name = _shard_name(spec.split, index)
        data = _parquet_bytes(rows, settings.row_group_size)
        relative = _join(spec.name, f"{name}.parquet")
        out.write(relative, data)  # the parquet file first; the state naming its sha256 commits it
        state = ShardState(
            path=relative, source=spec.name, split=spec.split, index=index, rows=len(rows),
            seconds=round(sum(durations), 4), sha256=hashlib.sha256(data).hexdigest(),
            min_duration=min(durations, default=0.0), max_duration=max(durations, default=0.0),
            fingerprint=fingerprint, reader_state=reader.state_dict(), dropped=dropped, fixed=fixed, examples=new_examples,
        )  # fmt: skip
        out.write(_join(spec.name, STATE_DIR, f"{name}.json"), _json(state))
        states.append(state)
        written += 1
        if reader.passes > 0:  # the pass ended inside this shard
            return states
        if stop_after_shards is not None and written >= stop_after_shards:
            return states


class StageError(DataError):
    """A source that cannot be staged (the message says why)."""


def _describe_drops(dropped: dict[str, int], examples: dict[str, str]) -> str:
    if not dropped:
        return "the source is empty"
    return ", ".join(
        f"{reason}: {n} (e.g. {examples.get(reason, '?')})" for reason, n in sorted(dropped.items())
    )


def _json(value: Any) -> bytes:
    return (
        json.dumps(asdict(value) if hasattr(value, "__dataclass_fields__") else value, indent=1) + "\n"
    ).encode()


def _summary(spec: SourceSpec, states: Sequence[ShardState]) -> dict[str, Any]:
    dropped: Counter[str] = Counter()
    fixed: Counter[str] = Counter()
    examples: dict[str, str] = {}
    for state in states:
        dropped.update(state.dropped)
        fixed.update(state.fixed)
        for reason, text in state.examples.items():
            examples.setdefault(reason, text)
    left_out = (states[-1].reader_state.get("left_out") if states else None) or {}
    return {
        "source": spec.name,
        "split": spec.split,
        "shards": len(states),
        "rows": sum(s.rows for s in states),
        "hours": sum(s.seconds for s in states) / 3600,
        "dropped": dict(dropped),
        "fixed": dict(fixed),
        "examples": examples,
        "left_out": left_out,
    }


def stage(
    specs: Sequence[SourceSpec],
    out_url: str,
    settings: StageSettings | None = None,
    progress: Callable[[int], None] | None = None,
    stop_after_shards: int | None = None,
) -> dict[str, Any]:
    """Stage every source of ``specs`` into ``out_url``; returns (and writes) the index."""
    settings = settings or StageSettings()
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise ValueError(f"source names must be unique (they name the staged folders), got {names}")
    out = _Output(out_url, settings.storage_options)
    sources, shards = [], []
    for spec in specs:
        states = stage_source(spec, out, settings, progress, stop_after_shards)
        summary = _summary(spec, states)
        summary.update(weight=spec.weight, language=spec.language, task=spec.task)
        sources.append(summary)
        shards += [
            {k: getattr(s, k) for k in ("path", "source", "split", "rows", "seconds", "sha256",
                                         "min_duration", "max_duration")}
            for s in states
        ]  # fmt: skip
    index = {"codec": settings.codec, "sample_rate": settings.prepare.sample_rate, "sources": sources,
             "shards": shards}  # fmt: skip
    out.write(INDEX_NAME, _json(index))
    out.write("report.md", report_markdown(index, out_url).encode())
    out.write("data.yaml", data_yaml(index, out_url).encode())
    return index


def report_markdown(index: dict[str, Any], out_url: str) -> str:
    """Hours per source, and what was dropped (or repaired) and why, with the first example of each."""
    lines = [f"# Staged data: {out_url}", "",
             f"Audio: {index['codec']} at {index['sample_rate']} Hz. Shards: {len(index['shards'])}.", "",
             "| source | split | shards | rows | hours | dropped | repaired |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: |"]  # fmt: skip
    for s in index["sources"]:
        lines.append(
            f"| {s['source']} | {s['split']} | {s['shards']} | {s['rows']} | {s['hours']:.3f} | "
            f"{sum(s['dropped'].values())} | {sum(s['fixed'].values())} |"
        )
    for s in index["sources"]:
        if not (s["dropped"] or s["fixed"] or s["left_out"]):
            continue
        lines += ["", f"`{s['source']}`:", ""]
        for reason, count in sorted({**s["dropped"], **s["fixed"]}.items()):
            lines.append(f"- {reason}: {count} (e.g. {s['examples'].get(reason, '?')})")
        for reason, count in sorted(s["left_out"].items()):
            lines.append(f"- not this split ({reason}): {count}")
    return "\n".join(lines) + "\n"


def data_yaml(index: dict[str, Any], out_url: str) -> str:
    """The staged sources as a ``configs/data`` ``sources:`` list (paste under ``train:``)."""
    lines = [f"# staged by granite-train stage into {out_url}", "sources:"]
    for s in index["sources"]:
        entry = {"name": s["source"], "path": _join(out_url, s["source"]), "kind": "parquet",
                 "split": s["split"], "weight": s["weight"], "size": round(s["hours"], 4)}  # fmt: skip
        if s.get("language"):
            entry["language"] = s["language"]
        lines.append("  - " + json.dumps(entry))
    return "\n".join(lines) + "\n"


__all__ = [
    "ShardState",
    "StageError",
    "StageSettings",
    "stage",
    "stage_source",
    "report_markdown",
    "data_yaml",
]
