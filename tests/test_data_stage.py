"""granite-train stage (granite_train/data/stage.py): sources staged once into parquet shards.

What staging must hold: every usable record once, as the training pipeline would prepare it (the
FLAC bytes decode to the same 16 kHz samples up to 16-bit rounding); every dropped record counted
and named; shards readers split by whole files; a killed run resumed into the very same bytes; a
rerun that finds everything written writes nothing.
"""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import soundfile as sf
import yaml

from granite_train.data.prepare import ExamplePreparer, PrepareConfig
from granite_train.data.sources import SourceReader, SourceSpec
from granite_train.data.stage import StageError, StageSettings, stage
from tests.corpus import audio_bytes, make_corpus, speechlike, write_parquet

PREPARE = PrepareConfig(ctc_targets=False, check_ctc_length=False, min_duration=0.2, max_duration=30.0)


@pytest.fixture(scope="module")
def corpora(tmp_path_factory):
    root = tmp_path_factory.mktemp("stage_corpora")
    ids_a = make_corpus(root, "a", 23, num_shards=2, seed=1)
    # b: 8 kHz stereo audio (resampled and downmixed when staged), one clip too short, one without text
    rows = []
    for i in range(9):
        wave = speechlike(0.1 if i == 3 else 1.0 + 0.1 * i, sr=8000, seed=500 + i, channels=2)
        rows.append({"id": f"b-{i}", "audio": {"bytes": audio_bytes(wave, sr=8000), "path": None},
                     "text": "" if i == 5 else f"word {i}", "language": "en"})  # fmt: skip
    write_parquet(root / "b" / "shard-000.parquet", rows)
    return root, ids_a


def _specs(root: Path) -> list[SourceSpec]:
    return [SourceSpec("a", str(root / "a"), weight=2.0, language="en"), SourceSpec("b", str(root / "b"))]


def _settings(**kw) -> StageSettings:
    return StageSettings(**{"rows_per_shard": 5, "prepare": PREPARE, **kw})


def _read_all(spec: SourceSpec, shard_index: int = 0, num_shards: int = 1) -> list[dict]:
    reader, out = SourceReader(spec, shard_index, num_shards), []
    while (record := reader.next_record()) is not None:
        out.append(record)
    return out


def _digests(folder: Path) -> dict[str, str]:
    """sha256 of every file but report.md and data.yaml (they name the folder itself)."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name not in ("report.md", "data.yaml")
    }


def test_every_usable_record_once_as_training_prepares_it_and_drops_named(corpora, tmp_path):
    root, ids_a = corpora
    index = stage(_specs(root), str(tmp_path / "staged"), _settings())
    by_source = {s["source"]: s for s in index["sources"]}
    assert by_source["a"]["rows"] == 23 and by_source["a"]["shards"] == 5  # 5 + 5 + 5 + 5 + 3
    assert by_source["b"]["rows"] == 7 and by_source["b"]["dropped"] == {"too_short": 1, "no_text": 1}
    # repairs happen before the duration check: the too-short clip was resampled and downmixed too;
    # the one without text was dropped before its audio was decoded
    assert by_source["b"]["fixed"] == {"fixed_resampled": 8, "fixed_downmixed": 8}
    assert by_source["b"]["examples"]["too_short"].startswith("b/b-3")
    report = (tmp_path / "staged" / "report.md").read_text()
    assert "too_short: 1 (e.g. b/b-3" in report and "no_text: 1 (e.g. b/b-5" in report
    for shard in index["shards"]:  # checksums and sizes in the index are the files'
        data = (tmp_path / "staged" / shard["path"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == shard["sha256"]
        assert pq.read_metadata(io.BytesIO(data)).num_rows == shard["rows"]

    # the staged sources, read by the same reader as any parquet source, through data.yaml
    listed = yaml.safe_load((tmp_path / "staged" / "data.yaml").read_text())["sources"]
    assert [s["name"] for s in listed] == ["a", "b"] and listed[0]["weight"] == 2.0
    staged = {s["name"]: SourceSpec(**s) for s in listed}
    preparer = ExamplePreparer(PREPARE, targets=None)
    originals = {r["id"]: preparer(r) for spec in _specs(root) for r in _read_all(spec)}
    seen = []
    for spec in staged.values():
        for record in _read_all(spec):
            original = originals[record["id"]]
            assert original is not None and record["text"] == original.record["text"]
            wave, sr = sf.read(io.BytesIO(record["audio"]["bytes"]), dtype="float32")
            assert sr == 16000 and wave.ndim == 1
            # FLAC at 16 bits: the prepared samples, rounded to the nearest of 65536 levels
            assert np.abs(wave - original.waveform.numpy()).max() <= 1 / 32768 + 1e-7
            assert record["duration"] == pytest.approx(original.duration, abs=1e-4)
            seen.append(record["id"])
    assert sorted(seen) == sorted(i for i, ex in originals.items() if ex is not None)
    assert len(seen) == len(set(seen)) == 30


def test_readers_split_the_staged_shards_by_whole_files(corpora, tmp_path):
    root, _ = corpora
    # datasets hands out whole files when their count divides by the readers' (4 files, 2 readers);
    # otherwise it falls back to every N-th example (disjoint still, but each reader reads every file)
    index = stage(_specs(root)[:1], str(tmp_path / "staged"), _settings(rows_per_shard=6))
    assert len(index["shards"]) == 4
    spec = SourceSpec("a", str(tmp_path / "staged" / "a"))
    shares = [[r["id"] for r in _read_all(spec, i, 2)] for i in range(2)]
    assert not set(shares[0]) & set(shares[1]) and len(shares[0]) + len(shares[1]) == 23
    files = {}
    for shard in index["shards"]:
        ids = pq.read_table(tmp_path / "staged" / shard["path"], columns=["id"]).column("id").to_pylist()
        files[shard["path"]] = {f"a/{i}" for i in ids}  # the reader prefixes the source name
    for share in shares:  # each reader's ids are a union of whole shard files: two of the four
        touched = [ids for ids in files.values() if ids & set(share)]
        assert len(touched) == 2 and set(share) == set().union(*touched)


def test_a_killed_run_resumes_into_the_same_bytes_and_a_finished_one_writes_nothing(corpora, tmp_path):
    root, _ = corpora
    clean = tmp_path / "clean"
    stage(_specs(root), str(clean), _settings())
    resumed = tmp_path / "resumed"
    stage(_specs(root), str(resumed), _settings(), stop_after_shards=2)  # killed after 2 shards of each
    assert len(list((resumed / "a").glob("*.parquet"))) == 2
    stage(_specs(root), str(resumed), _settings())
    assert _digests(resumed) == _digests(clean)

    # a shard changed on disk is staged again from there; a finished run rewrites no shard
    shard = resumed / "a" / "train-00003.parquet"
    shard.write_bytes(b"garbage")
    mtimes = {p: p.stat().st_mtime_ns for p in (resumed / "a").glob("train-0000[012].parquet")}
    stage(_specs(root), str(resumed), _settings())
    assert _digests(resumed) == _digests(clean)
    assert {p: p.stat().st_mtime_ns for p in mtimes} == mtimes


def test_lossy_codecs_decode_to_the_staged_duration(corpora, tmp_path):
    root, _ = corpora
    spec = SourceSpec("b", str(root / "b"))
    for codec in ("opus", "mp3", "wav"):
        index = stage([spec], str(tmp_path / codec), _settings(codec=codec, rows_per_shard=100))
        table = pq.read_table(tmp_path / codec / index["shards"][0]["path"]).to_pylist()
        for row in table[:3]:
            wave, sr = sf.read(io.BytesIO(row["audio"]["bytes"]), dtype="float32")
            # lossy encoders pad a little; the stored duration is the prepared audio's
            assert sr == 16000 and abs(len(wave) / sr - row["duration"]) < 0.08, (codec, len(wave) / sr)


def test_a_source_without_one_usable_record_is_an_error_naming_why(tmp_path):
    rows = [{"id": "x", "audio": {"bytes": audio_bytes(speechlike(0.05, seed=1)), "path": None},
             "text": "hi", "language": "en"}]  # fmt: skip
    write_parquet(tmp_path / "bad" / "s.parquet", rows)
    with pytest.raises(StageError, match=r"no usable record \(too_short: 1 \(e.g. bad/x"):
        stage([SourceSpec("bad", str(tmp_path / "bad"))], str(tmp_path / "out"), _settings())
    with pytest.raises(ValueError, match="codec must be one of"):
        StageSettings(codec="aac")


def test_cli_stages_a_path_and_a_data_group_and_says_what_is_wrong(corpora, tmp_path):
    root, _ = corpora
    cli = [sys.executable, "-m", "granite_train.cli", "stage"]
    out = tmp_path / "cli"
    done = subprocess.run([*cli, f"data={root / 'a'}", f"out={out}", "rows_per_shard=10", "progress=false"],
                          capture_output=True, text=True, timeout=180, cwd=tmp_path)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert "23 rows in 3 shards" in done.stdout
    assert json.loads((out / "index.json").read_text())["sources"][0]["rows"] == 23
    missing = subprocess.run([*cli, f"data={tmp_path / 'nowhere'}", f"out={tmp_path / 'other'}"],
                             capture_output=True, text=True, timeout=180, cwd=tmp_path)  # fmt: skip
    assert missing.returncode == 2 and "does not exist" in missing.stderr
    # the same folder name from another source: refused, not resumed into
    (tmp_path / "elsewhere").mkdir()
    (root / "a").rename(tmp_path / "elsewhere" / "a")
    try:
        other = subprocess.run([*cli, f"data={tmp_path / 'elsewhere' / 'a'}", f"out={out}"],
                               capture_output=True, text=True, timeout=180, cwd=tmp_path)  # fmt: skip
    finally:
        (tmp_path / "elsewhere" / "a").rename(root / "a")
    assert other.returncode == 2 and "staged from another source or with other settings" in other.stderr
    group = subprocess.run([*cli, "data=fsdd", f"out={out}", "--cfg", "job"],
                           capture_output=True, text=True, timeout=180, cwd=tmp_path)  # fmt: skip
    assert group.returncode == 0, group.stderr[-2000:]
    assert "name: fsdd" in group.stdout  # the configs/data group was composed, not taken as a path
