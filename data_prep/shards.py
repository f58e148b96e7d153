"""Shard bookkeeping shared by the resumable generators (``data/<split>-XXXXX.parquet`` + state files)."""

from __future__ import annotations

import sys
from pathlib import Path

STATE_DIR = ".shards"
"""Per-shard state files (``<split>-XXXXX.json``) live in ``<out>/.shards``."""


def remove_stale_shards(out: Path, split: str, num_shards: int) -> None:
    """Delete this split's shards ``k >= num_shards`` (left by a previous, longer run) and temp files."""
    for sub, suffix in (("data", ".parquet"), (STATE_DIR, ".json")):
        folder = out / sub
        if not folder.is_dir():
            continue
        for p in folder.iterdir():
            stale_tmp = p.name.startswith(".") and ".tmp-" in p.name
            stem = p.name[: -len(suffix)] if p.name.endswith(suffix) else ""
            head, _, idx = stem.rpartition("-")
            beyond = head == split and idx.isdigit() and int(idx) >= num_shards
            if stale_tmp or beyond:
                print(f"removing stale {p}", file=sys.stderr)
                p.unlink()
