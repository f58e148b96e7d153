"""The shard writer shared by the generators: atomic writes, resume by fingerprint, stale-shard
cleanup, the folder-wide states, rejects file and dataset card."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from data_prep.shards import (
    STATE_DIR,
    Shard,
    chunked,
    fingerprint,
    finished_states,
    remove_stale_shards,
    remove_unplanned_shards,
    write_atomic,
    write_readme,
    write_rejects,
)


def _table(*texts: str) -> pa.Table:
    return pa.table({"text": list(texts)})


def _files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def _write(out: Path, split: str, index: int, fp: str = "fp", **fields) -> Shard:
    shard = Shard(out, split, index, fp)
    shard.write(shard.new_state(1, **fields), _table(f"{split} {index}"))
    return shard


def _run(out: Path, plan: dict[int, str], texts: dict[int, str]) -> list[int]:
    """A minimal generator over the shared writer: -> indices of the shards it (re)wrote."""
    written = []
    for index, fp in plan.items():
        shard = Shard(out, "train", index, fp)
        if shard.done() is None:
            shard.write(shard.new_state(1, text=texts[index]), _table(texts[index]))
            written.append(index)
    remove_stale_shards(out, "train", len(plan))
    return written


# ----------------------------------------------------------------------------------- atomic write


class Boom(RuntimeError):
    pass


def test_write_atomic_leaves_no_partial_file_when_the_writer_raises(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "x.json"

    def half_then_fail(p: Path) -> None:
        p.write_text('{"half": ')
        raise Boom

    with pytest.raises(Boom):
        write_atomic(target, half_then_fail)
    assert _files(tmp_path) == []  # neither the target nor the temp file

    write_atomic(target, lambda p: p.write_text("old"))
    with pytest.raises(Boom):
        write_atomic(target, half_then_fail)
    assert target.read_text() == "old" and _files(tmp_path) == ["sub/x.json"]  # the old file is intact


def test_shard_whose_parquet_write_fails_is_not_finished(tmp_path: Path) -> None:
    """State first, data last: without its parquet file a shard is redone, whatever its state says."""
    shard = Shard(tmp_path, "train", 0, "fp")
    with pytest.raises(Exception):  # noqa: B017 - pyarrow's error type is not the point
        shard.write(shard.new_state(1), "not a table")
    assert shard.state_path.is_file() and not shard.parquet_path.exists()
    assert shard.done() is None
    assert not [p for p in (tmp_path / "data").iterdir()]  # no temp file left behind


# ------------------------------------------------------------------------------------------ resume


def test_shard_layout_and_state() -> None:
    shard = Shard(Path("/out"), "test", 7, "abc")
    assert shard.name == "test-00007"
    assert shard.parquet_path == Path("/out/data/test-00007.parquet")
    assert shard.state_path == Path("/out") / STATE_DIR / "test-00007.json"
    state = shard.new_state(3, num_rows=2)
    assert list(state) == ["format_version", "fingerprint", "split", "index", "num_rows"]
    assert state == {"format_version": 3, "fingerprint": "abc", "split": "test", "index": 7, "num_rows": 2}


def test_finished_shard_with_matching_fingerprint_is_skipped(tmp_path: Path) -> None:
    plan = {0: "a", 1: "b"}
    assert _run(tmp_path, plan, {0: "zero", 1: "one"}) == [0, 1]
    before = {p: (tmp_path / p).read_bytes() for p in _files(tmp_path)}
    assert _run(tmp_path, plan, {0: "ZERO", 1: "ONE"}) == []  # nothing rewritten...
    assert {p: (tmp_path / p).read_bytes() for p in _files(tmp_path)} == before  # ...byte for byte
    state = Shard(tmp_path, "train", 1, "b").done()
    assert state is not None and state["text"] == "one"


def test_changed_fingerprint_rewrites_the_shard(tmp_path: Path) -> None:
    _run(tmp_path, {0: "a", 1: "b"}, {0: "zero", 1: "one"})
    assert _run(tmp_path, {0: "a", 1: "b2"}, {0: "zero", 1: "uno"}) == [1]
    shard = Shard(tmp_path, "train", 1, "b2")
    assert json.loads(shard.state_path.read_text())["fingerprint"] == "b2"
    assert pq.read_table(shard.parquet_path).column("text").to_pylist() == ["uno"]
    assert Shard(tmp_path, "train", 1, "b").done() is None  # the old fingerprint no longer matches


def test_unreadable_state_means_not_finished(tmp_path: Path) -> None:
    shard = _write(tmp_path, "train", 0, "a")
    shard.state_path.write_text("{broken")
    assert shard.done() is None


def test_fingerprint_is_stable_and_its_json_options_count() -> None:
    parts = [1, {"b": 2, "a": "é"}, ("x", "y")]
    assert fingerprint(parts) == fingerprint([1, {"b": 2, "a": "é"}, ["x", "y"]])  # tuples are lists
    assert len(fingerprint(parts)) == 40
    assert fingerprint(parts) != fingerprint(parts, sort_keys=True)
    assert fingerprint(parts) != fingerprint(parts, ensure_ascii=True)
    assert fingerprint([{"a": 1, "b": 2}], sort_keys=True) == fingerprint([{"b": 2, "a": 1}], sort_keys=True)


def test_chunked_is_the_shard_plan_of_a_stream() -> None:
    assert list(chunked(iter(range(7)), 3)) == [[0, 1, 2], [3, 4, 5], [6]]
    assert list(chunked([], 3)) == []


# ------------------------------------------------------------------------------------------ cleanup


def test_stale_shards_beyond_the_plan_are_removed(tmp_path: Path, capsys) -> None:
    for index in range(4):
        _write(tmp_path, "train", index)
    _write(tmp_path, "test", 5)  # another split of the same folder
    (tmp_path / "data" / ".train-00001.parquet.tmp-123").write_bytes(b"half")  # an interrupted write
    remove_stale_shards(tmp_path, "train", 2)
    assert _files(tmp_path) == [
        ".shards/test-00005.json",
        ".shards/train-00000.json",
        ".shards/train-00001.json",
        "data/test-00005.parquet",
        "data/train-00000.parquet",
        "data/train-00001.parquet",
    ]
    assert "removing stale" in capsys.readouterr().err


def test_unplanned_shards_of_any_split_are_removed(tmp_path: Path) -> None:
    for split, index in (("train", 0), ("train", 1), ("test", 0)):
        _write(tmp_path, split, index)
    remove_unplanned_shards(tmp_path, {"train-00000"})
    assert _files(tmp_path) == [".shards/train-00000.json", "data/train-00000.parquet"]
    remove_unplanned_shards(tmp_path / "missing", set())  # no folder yet: nothing to do


# ------------------------------------------------------------------------------------ whole folder


def test_finished_states_cover_every_split_train_first(tmp_path: Path) -> None:
    _write(tmp_path, "test", 0, big=[1, 2])
    _write(tmp_path, "train", 1, big=[3])
    _write(tmp_path, "train", 0, big=[])
    _write(tmp_path, "dev", 0, big=[])
    Shard(tmp_path, "dev", 0).parquet_path.unlink()  # unfinished: not listed
    (tmp_path / STATE_DIR / "word_counts-train.json").write_text('{"fingerprint": "x"}')  # not a shard
    states = finished_states(tmp_path, drop=("big",))
    assert [(st["split"], st["index"]) for st in states] == [("train", 0), ("train", 1), ("test", 0)]
    assert all("big" not in st for st in states)
    assert finished_states(tmp_path / "missing") == []


def test_rejects_file_names_the_shard_of_every_record(tmp_path: Path) -> None:
    path = tmp_path / "out" / "rejects.jsonl"
    write_rejects(path, [("train-00000", [{"id": "a", "reason": "x"}]), ("train-00001", []), ("test-00000", [{"id": "é", "reason": "y"}])])  # fmt: skip
    lines = path.read_text(encoding="utf-8").splitlines()
    assert lines == ['{"shard": "train-00000", "id": "a", "reason": "x"}', '{"shard": "test-00000", "id": "é", "reason": "y"}']  # fmt: skip


def test_card_header_maps_splits_to_their_shards(tmp_path: Path) -> None:
    from datasets import Features, Value

    path = write_readme(
        tmp_path,
        {"license": "other", "pretty_name": "x"},
        {"train": (300, 20), "test": (100, 5)},
        Features({"text": Value("string")}),
        ["", "# Title", "", "Body."],
    )
    text = path.read_text(encoding="utf-8")
    _, header, body = text.split("---\n", 2)
    meta = yaml.safe_load(header)
    assert list(meta)[:2] == ["license", "pretty_name"]
    assert meta["configs"][0]["data_files"] == [
        {"split": "train", "path": "data/train-*"},
        {"split": "test", "path": "data/test-*"},
    ]
    assert meta["dataset_info"]["splits"][0] == {"name": "train", "num_bytes": 300, "num_examples": 20}
    assert meta["dataset_info"]["download_size"] == 400
    assert body == "\n# Title\n\nBody.\n"
