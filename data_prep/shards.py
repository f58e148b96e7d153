"""Resumable parquet shards: the output skeleton every generator shares (tts, translate, keywords;
japanese goes through tts).

An output folder holds::

    data/<split>-<index:05d>.parquet   the rows (found by ``load_dataset(OUT)`` through the card)
    .shards/<split>-<index:05d>.json   the shard's state: fingerprint of its inputs, counts, rejects
    README.md                          dataset card, rebuilt from the states after every run
    <rejects>.jsonl                    every input that produced no row, with its shard and reason

A shard is finished when its parquet file exists and its state carries the fingerprint of the
shard's inputs and settings; a rerun skips it. Both files are written to a temp file and renamed,
state first, so the parquet file appearing is the commit point: a killed run leaves either a
finished shard or one that is redone. A generator keeps only what is its own: how a shard's rows
are made, its columns, what goes into the fingerprint and the text of its card.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    import pyarrow as pa

STATE_DIR = ".shards"
"""Per-shard state files (``<split>-XXXXX.json``) live in ``<out>/.shards``."""
ROW_GROUP_SIZE = 100
"""Rows per parquet row group, in every generator's shards (part of their byte-identity)."""

T = TypeVar("T")


# ----------------------------------------------------------------------------------------- files


def write_atomic(path: Path, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp)`` on a temp file next to ``path``, then rename it to ``path``: readers and
    reruns never see a half-written file. The temp file is removed if ``write`` raises."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def fingerprint(parts: Any, *, sort_keys: bool = False, ensure_ascii: bool = False) -> str:
    """SHA-1 of ``parts`` as JSON: the identity of a shard's inputs and settings.

    The JSON options shape the digest, so each caller keeps the ones its existing state files were
    written with (otherwise every finished shard would be redone once).
    """
    key = json.dumps(parts, sort_keys=sort_keys, ensure_ascii=ensure_ascii)
    return hashlib.sha1(key.encode("utf-8")).hexdigest()


def chunked(items: Iterable[T], size: int) -> Iterator[list[T]]:
    """Consecutive runs of ``size`` items (the last may be shorter): the shard plan of a stream."""
    chunk: list[T] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def shard_name(split: str, index: int) -> str:
    """``train-00003``: the stem of a shard's parquet and state files (sorts in index order)."""
    return f"{split}-{index:05d}"


# ---------------------------------------------------------------------------------------- shards


@dataclass(frozen=True)
class Shard:
    """One output shard: where its files live and the fingerprint that marks it finished."""

    out_dir: Path
    split: str
    index: int
    fingerprint: str = ""
    """Empty where only the shard's paths are needed."""

    @property
    def name(self) -> str:
        return shard_name(self.split, self.index)

    @property
    def parquet_path(self) -> Path:
        return self.out_dir / "data" / f"{self.name}.parquet"

    @property
    def state_path(self) -> Path:
        return self.out_dir / STATE_DIR / f"{self.name}.json"

    def done(self) -> dict[str, Any] | None:
        """The saved state if the shard is finished with this fingerprint, else None (redo it)."""
        if not (self.parquet_path.is_file() and self.state_path.is_file()):
            return None
        try:
            state = json.loads(self.state_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return state if state.get("fingerprint") == self.fingerprint else None

    def new_state(self, format_version: int, **fields: Any) -> dict[str, Any]:
        """A state dict: the shard's identity and fingerprint first, then the generator's fields."""
        return {
            "format_version": format_version,
            "fingerprint": self.fingerprint,
            "split": self.split,
            "index": self.index,
            **fields,
        }

    def write(self, state: Mapping[str, Any], table: pa.Table) -> None:
        """Save the state, then the rows; the parquet file appearing commits the shard."""
        import pyarrow.parquet as pq

        text = json.dumps(state, ensure_ascii=False, indent=1)
        write_atomic(self.state_path, lambda p: p.write_text(text, encoding="utf-8"))
        write_atomic(self.parquet_path, lambda p: pq.write_table(table, p, row_group_size=ROW_GROUP_SIZE))


class Rejected(Exception):
    """An input that produces no row: counted per ``reason`` and listed in the rejects file."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(reason, detail)
        self.reason = reason
        self.detail = detail


def reason_counts(records: Iterable[Mapping[str, Any]]) -> dict[str, int]:
    """Rejected records per ``reason``, sorted by reason (as stored in a state)."""
    return dict(sorted(Counter(r["reason"] for r in records).items()))


# ----------------------------------------------------------------------------------- whole folder


def finished_states(out: Path, *, drop: Collection[str] = ()) -> list[dict[str, Any]]:
    """States of every finished shard in ``out`` (all splits; train first, then by split and index).

    Several runs (one per split) can share a folder, and its card and rejects file cover all of
    them. ``drop``: keys removed as each state is read (big lists, re-read later one at a time).
    """
    states = []
    folder = out / STATE_DIR
    for p in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        if not (out / "data" / f"{p.stem}.parquet").is_file():
            continue
        try:
            state = json.loads(p.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        for key in drop:
            state.pop(key, None)
        states.append(state)
    return sorted(states, key=lambda st: (st["split"] != "train", st["split"], st["index"]))


def by_split(states: Iterable[Mapping[str, Any]]) -> dict[str, list[Any]]:
    """States grouped by split, in the order the splits first occur."""
    groups: dict[str, list[Any]] = {}
    for st in states:
        groups.setdefault(st["split"], []).append(st)
    return groups


def split_bytes(out: Path, states: Iterable[Mapping[str, Any]]) -> dict[str, int]:
    """Parquet bytes per split of the shards whose states are given (for the card)."""
    sizes: dict[str, int] = {}
    for st in states:
        size = Shard(out, st["split"], st["index"]).parquet_path.stat().st_size
        sizes[st["split"]] = sizes.get(st["split"], 0) + size
    return sizes


def write_rejects(path: Path, per_shard: Iterable[tuple[str, Iterable[Mapping[str, Any]]]]) -> None:
    """JSON lines ``{"shard": name, **record}`` for each (shard name, rejected records) pair."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for name, records in per_shard:
            for rec in records:
                f.write(json.dumps({"shard": name, **rec}, ensure_ascii=False) + "\n")


def remove_stale_shards(out: Path, split: str, num_shards: int) -> None:
    """Delete this split's shards ``k >= num_shards`` (left by a previous, longer run) and temp
    files: ``data/<split>-*`` would pick them up. Other splits sharing the folder are kept."""

    def beyond(name: str) -> bool:
        head, _, idx = name.rpartition("-")
        return head == split and idx.isdigit() and int(idx) >= num_shards

    _remove_shard_files(out, beyond)


def remove_unplanned_shards(
    out: Path, planned: Collection[str], splits: Collection[str] | None = None
) -> None:
    """Delete every shard whose name is not in ``planned``, and temp files: for a generator that
    plans all splits of the folder in one run, or (``splits``) only those splits' shards."""

    def stale(name: str) -> bool:
        in_scope = splits is None or name.rpartition("-")[0] in splits
        return in_scope and name not in planned

    _remove_shard_files(out, stale)


def _remove_shard_files(out: Path, stale: Callable[[str], bool]) -> None:
    for sub, suffix in (("data", ".parquet"), (STATE_DIR, ".json")):
        folder = out / sub
        if not folder.is_dir():
            continue
        for p in folder.iterdir():
            interrupted = p.name.startswith(".") and ".tmp-" in p.name
            name = p.name[: -len(suffix)] if p.name.endswith(suffix) else ""
            if interrupted or (name and stale(name)):
                print(f"removing stale {p}", file=sys.stderr)
                p.unlink()


# ------------------------------------------------------------------------------------------ card


def size_category(n: int) -> str:
    """The Hugging Face ``size_categories`` tag of ``n`` examples."""
    for limit, name in (
        (1_000, "n<1K"),
        (10_000, "1K<n<10K"),
        (100_000, "10K<n<100K"),
        (1_000_000, "100K<n<1M"),
    ):
        if n < limit:
            return name
    return "1M<n<10M" if n < 10_000_000 else "n>10M"


def write_readme(
    out: Path,
    meta: Mapping[str, Any],
    splits: Mapping[str, tuple[int, int]],
    features: Any,
    body: Iterable[str],
) -> Path:
    """Write ``out/README.md``: a Hugging Face YAML header, then the markdown ``body`` lines.

    The header is ``meta`` plus ``configs`` mapping each split to ``data/<split>-*`` (so that
    ``load_dataset(out)`` finds the shards) and ``dataset_info`` with the ``datasets.Features``
    of the shards and ``splits``: split -> (parquet bytes, examples). Cards carry no timings, so
    identical inputs give identical cards.
    """
    import yaml

    total_bytes = sum(b for b, _ in splits.values())
    header = {
        **meta,
        "configs": [
            {"config_name": "default", "data_files": [{"split": s, "path": f"data/{s}-*"} for s in splits]}
        ],
        "dataset_info": {
            "features": features._to_yaml_list(),
            "splits": [{"name": s, "num_bytes": b, "num_examples": n} for s, (b, n) in splits.items()],
            "download_size": total_bytes,
            "dataset_size": total_bytes,
        },
    }
    dumped = yaml.safe_dump(header, sort_keys=False, allow_unicode=True, width=1000).rstrip()
    path = out / "README.md"
    path.write_text("\n".join(["---", dumped, "---", *body]) + "\n", encoding="utf-8")
    return path
