"""Sources in object storage, against a real S3-compatible server on localhost (moto's server
mode in a subprocess; no mocked client): the same records as local data, per-rank x per-worker
shares, exact resume, and faults — a server killed and restarted mid-pass, a stalled server, and a
file deleted mid-pass, which is skipped, counted and named."""

from __future__ import annotations

import copy
import csv
import logging
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from pathlib import Path

import boto3
import numpy as np
import pytest
import soundfile as sf

from granite_train.audio.io import AudioFileNotFoundError, decode_audio
from granite_train.data.errors import DataError
from granite_train.data.pipeline import PipelineConfig, SpeechDataPipeline, build_dataloader
from granite_train.data.prepare import PrepareConfig
from granite_train.data.sources import SourceReader, SourceSpec, guess_kind, resolve_audio_path
from tests.corpus import make_corpus, speechlike

BUCKET = "speech"
# short waits everywhere: a test must see a retry, not sit through a production backoff
FAST = {"read_attempts": 40, "retry_backoff": 0.1, "retry_backoff_max": 0.5}  # >= 18 s of retries


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MotoServer:
    """``moto_server`` in a subprocess on a fixed localhost port (in-memory: a restart empties it)."""

    def __init__(self, port: int | None = None):
        self.port = port or _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self) -> MotoServer:
        cmd = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(self.url, timeout=1).close()
                return self
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"moto server did not start on {self.url}") from None
                time.sleep(0.05)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)  # a stopped process dies only once continued
            self.proc.kill()
            self.proc.wait()

    def client(self):
        return boto3.client(
            "s3", endpoint_url=self.url, aws_access_key_id="testing", aws_secret_access_key="testing",
            region_name="us-east-1",
        )  # fmt: skip

    def storage_options(self) -> dict:
        # short timeouts and no botocore retries: faults reach the reader's own retry quickly
        return {
            "endpoint_url": self.url, "key": "testing", "secret": "testing",
            "client_kwargs": {"region_name": "us-east-1"},
            "config_kwargs": {"connect_timeout": 1, "read_timeout": 1, "retries": {"max_attempts": 1}},
        }  # fmt: skip


def _upload(client, local_root: Path, prefix: str = "") -> None:
    """Every file under ``local_root`` to ``s3://BUCKET/<prefix><relative path>``."""
    if BUCKET not in {b["Name"] for b in client.list_buckets().get("Buckets", [])}:
        client.create_bucket(Bucket=BUCKET)
    for f in sorted(local_root.rglob("*")):
        if f.is_file():
            client.upload_file(str(f), BUCKET, prefix + f.relative_to(local_root).as_posix())


def _manifest_corpus(root: Path, n: int = 10) -> list[str]:
    """``root/m/manifest.csv`` with audio paths relative to it (``clips/u00.wav``)."""
    (root / "m" / "clips").mkdir(parents=True)
    rows = []
    for i in range(n):
        name = f"clips/u{i:02d}.wav"
        sf.write(root / "m" / name, speechlike(0.5 + 0.05 * i, seed=50 + i), 16000)
        rows.append(
            {"audio": name, "text": ("alpha", "bravo", "delta golf", "echo")[i % 4], "speaker": f"s{i % 3}"}
        )
    with open(root / "m" / "manifest.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["audio", "text", "speaker"])
        writer.writeheader()
        writer.writerows(rows)
    return [r["audio"] for r in rows]


@pytest.fixture(scope="module")
def local(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("objects")
    make_corpus(root, "a", 16, num_shards=4, durations=(0.3, 0.6), seed=3)
    _manifest_corpus(root)
    return root


@pytest.fixture(scope="module")
def s3(local):
    server = MotoServer().start()
    _upload(server.client(), local)
    yield server
    server.kill()


def _read_all(reader: SourceReader, limit: int | None = None) -> list[dict]:
    out = []
    while (limit is None or len(out) < limit) and (record := reader.next_record()) is not None:
        out.append(record)
    return out


def _spec(path: str, server: MotoServer | None = None, **kw) -> SourceSpec:
    options = {"storage_options": server.storage_options()} if server is not None else {}
    return SourceSpec("a", path, id_column=None if path.endswith(".csv") else "id", **options, **kw)


def _ids(records: list[dict]) -> list[str]:
    return [r["id"] for r in records]


# -- the same records as local data --------------------------------------------------------------


def test_parquet_prefix_url_streams_the_local_records(local, s3):
    spec = _spec(f"s3://{BUCKET}/a/", s3)
    assert spec.kind == "parquet"  # guessed by listing the prefix, not from the local disk
    remote, here = _read_all(SourceReader(spec)), _read_all(SourceReader(_spec(str(local / "a"))))
    assert len(remote) == 16 and _ids(remote) == _ids(here)
    assert [r["text"] for r in remote] == [r["text"] for r in here]
    for r, h in zip(remote, here):
        np.testing.assert_array_equal(
            decode_audio(r["audio"]["bytes"])[0], decode_audio(h["audio"]["bytes"])[0]
        )
    # a glob URL names the same files
    assert _ids(_read_all(SourceReader(_spec(f"s3://{BUCKET}/a/*.parquet", s3)))) == _ids(here)
    # a prefix holding several splits picks its split's files by the hub's naming, as a folder does
    client = s3.client()
    for i, split in enumerate(["test", "train", "train", "train"]):
        client.upload_file(str(local / f"a/shard-{i:03d}.parquet"), BUCKET, f"splits/{split}-{i:05d}.parquet")
    test = _read_all(SourceReader(_spec(f"s3://{BUCKET}/splits", s3, split="test")))
    assert _ids(test) == _ids(here)[:4]


def test_manifest_url_resolves_relative_audio_in_the_bucket(local, s3):
    url = f"s3://{BUCKET}/m/manifest.csv"
    assert guess_kind(url) == "csv"
    remote, here = (
        _read_all(SourceReader(_spec(url, s3))),
        _read_all(SourceReader(_spec(str(local / "m/manifest.csv")))),
    )
    assert len(remote) == 10 and _ids(remote) == _ids(here)
    assert [r["text"] for r in remote] == [r["text"] for r in here]
    assert remote[0]["audio"]["path"] == f"s3://{BUCKET}/m/clips/u00.wav"
    for r, h in zip(remote, here):  # URL audio is read through fsspec with the source's options
        np.testing.assert_array_equal(
            decode_audio(r["audio"]["path"])[0], decode_audio(h["audio"]["path"])[0]
        )
    with pytest.raises(AudioFileNotFoundError):  # skipped as missing_file by the pipeline, not retried
        decode_audio(f"s3://{BUCKET}/m/clips/nope.wav")


def test_relative_audio_paths_resolve_against_the_manifest_url():
    base = "s3://b/corpus/calls"
    assert resolve_audio_path("clips/a.wav", base) == "s3://b/corpus/calls/clips/a.wav"
    assert resolve_audio_path("../other/./a.wav", base) == "s3://b/corpus/other/a.wav"
    assert resolve_audio_path("gs://x/a.wav", base) == "gs://x/a.wav"  # a URL stays as written
    assert resolve_audio_path("s3://x/a.wav", Path("/data")) == "s3://x/a.wav"  # also in a local manifest
    assert resolve_audio_path("clips/a.wav", Path("/data")) == "/data/clips/a.wav"  # local: as before


@pytest.mark.parametrize("num_workers", [0, 2])  # 2: forked DataLoader workers open their own clients
def test_pipeline_over_urls_serves_the_local_batches(local, s3, num_workers):
    def batches(prefix: str, options: dict) -> list[list[str]]:
        sources = [
            SourceSpec("a", f"{prefix}a", **options),
            SourceSpec("m", f"{prefix}m/manifest.csv", id_column=None, **options),
        ]
        cfg = PipelineConfig(
            sources=sources, seed=3, shuffle_buffer=4, max_frames=400, num_buckets=2,
            prepare=PrepareConfig(min_duration=0.1),
        )  # fmt: skip
        loader = build_dataloader(SpeechDataPipeline(cfg, rank=0, world_size=1), num_workers=num_workers)
        return [b.ids for b in loader]

    remote = batches(f"s3://{BUCKET}/", {"storage_options": s3.storage_options()})
    assert remote == batches(f"{local}/", {})
    assert sum(len(b) for b in remote) == 26  # every record decoded and served, none skipped


def test_storage_options_come_from_the_environment_when_empty(local, s3, monkeypatch):
    for name, value in [("AWS_ACCESS_KEY_ID", "testing"), ("AWS_SECRET_ACCESS_KEY", "testing"),
                        ("AWS_DEFAULT_REGION", "us-east-1"), ("AWS_ENDPOINT_URL_S3", s3.url)]:  # fmt: skip
        monkeypatch.setenv(name, value)
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()  # a cached client would predate these variables
    records = _read_all(SourceReader(SourceSpec("a", f"s3://{BUCKET}/a/")))
    assert len(records) == 16
    s3fs.S3FileSystem.clear_instance_cache()


# -- shares and resume ------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["a/", "m/manifest.csv"])  # 4 files: whole files; 1 file: every 4th row
def test_rank_by_worker_shares_are_disjoint_cover_everything_and_match_local(local, s3, path):
    shares = [_ids(_read_all(SourceReader(_spec(f"s3://{BUCKET}/{path}", s3), slot, 4))) for slot in range(4)]
    local_shares = [_ids(_read_all(SourceReader(_spec(str(local / path)), slot, 4))) for slot in range(4)]
    assert shares == local_shares
    everything = [i for share in shares for i in share]
    assert all(shares) and len(everything) == len(set(everything)) == (16 if path == "a/" else 10)


@pytest.mark.parametrize(("path", "slot", "k"), [("a/", 0, 5), ("a/", 1, 2), ("m/manifest.csv", 0, 3)])
def test_exact_resume_from_a_state_dict(s3, path, slot, k):
    def reader() -> SourceReader:
        return SourceReader(_spec(f"s3://{BUCKET}/{path}", s3), slot, 2)

    full = _ids(_read_all(reader()))
    first = reader()
    assert _ids(_read_all(first, limit=k)) == full[:k]
    resumed = reader()
    resumed.load_state_dict(copy.deepcopy(first.state_dict()))
    assert _ids(_read_all(resumed)) == full[k:]


# -- faults -------------------------------------------------------------------------------------


def _restart_later(server: MotoServer, local: Path, delay: float) -> threading.Thread:
    """Kill the server now; start an empty one on the same port after ``delay`` and upload the
    same objects again, while the reader retries."""
    server.kill()

    def restart():
        time.sleep(delay)
        server.start()
        _upload(server.client(), local)

    thread = threading.Thread(target=restart, daemon=True)
    thread.start()
    return thread


def test_server_killed_restarted_and_stalled_mid_pass_loses_and_repeats_nothing(local, caplog):
    server, restart = MotoServer().start(), None
    try:
        _upload(server.client(), local)
        clean = _ids(_read_all(SourceReader(_spec(str(local / "a")))))
        reader = SourceReader(_spec(f"s3://{BUCKET}/a/", server, **FAST))
        served = _ids(_read_all(reader, limit=2))  # in file 1 of 4: the next read opens file 2
        restart = _restart_later(server, local, delay=0.5)
        with caplog.at_level(logging.WARNING, logger="granite_train.data.sources"):
            served += _ids(_read_all(reader, limit=8 - len(served)))  # to the end of file 2
            restart.join(timeout=30)
            assert reader.retries > 0, "the restart was not noticed: the test did not test it"
            # a stall: requests are accepted, not answered (s3fs's own retries may absorb it, or ours)
            server.proc.send_signal(signal.SIGSTOP)
            threading.Timer(1.5, server.proc.send_signal, (signal.SIGCONT,)).start()
            served += _ids(_read_all(reader))
        assert served == clean  # none lost, none served twice, in order
        assert reader.unreadable == {} and reader.last_pass["unreadable"] == []
        assert any("retry 1 of 39" in r.getMessage() and "'a'" in r.getMessage() for r in caplog.records)
    finally:
        if restart is not None:
            restart.join(timeout=30)  # a failure before the restart must not leave a server behind
        server.kill()


def test_deleted_file_is_skipped_counted_and_named(local, s3, caplog):
    client = s3.client()
    _upload(client, local / "a", prefix="gone/")
    gone = f"s3://{BUCKET}/gone/shard-002.parquet"
    reader = SourceReader(_spec(f"s3://{BUCKET}/gone/", s3, read_attempts=3, retry_backoff=0.05))
    served = _ids(_read_all(reader, limit=1))  # the stream is open: its file list includes shard 2
    client.delete_object(Bucket=BUCKET, Key="gone/shard-002.parquet")
    with caplog.at_level(logging.WARNING, logger="granite_train.data.sources"):
        served += _ids(_read_all(reader))
    expected = [f"a/a-{i:04d}" for s in (0, 1, 3) for i in range(s, 16, 4)]
    assert served == expected  # every other file's records, once each, in order
    assert list(reader.unreadable) == [gone] and "FileNotFoundError" in reader.unreadable[gone]
    assert reader.last_pass["unreadable"] == [gone] and reader.retries == 2
    skipped = [r for r in caplog.records if "skipped" in r.getMessage()]
    assert len(skipped) == 1 and gone in skipped[0].getMessage()  # logged once
    report = "\n".join(reader.report_lines())
    assert "unreadable_file: 1" in report and gone in report
    # the next pass lists the prefix again: the file is gone, nothing is skipped or retried
    assert _ids(_read_all(reader)) == expected and reader.last_pass["unreadable"] == []


def test_a_deleted_file_is_in_the_runs_skip_counts_with_its_name(local, s3, monkeypatch):
    """The training pipeline's own skip counts (what the run report sums) name the file the reader
    skipped, not only the reader's log."""
    client = s3.client()
    _upload(client, local / "a", prefix="gone2/")
    gone = f"s3://{BUCKET}/gone2/shard-001.parquet"
    read = SourceReader.next_record

    def first_record_then_delete(self):  # the stream is open on shard 0: its file list has shard 1
        record = read(self)
        if self.count == 1 and self.passes == 0:
            client.delete_object(Bucket=BUCKET, Key="gone2/shard-001.parquet")
        return record

    monkeypatch.setattr(SourceReader, "next_record", first_record_then_delete)
    spec = _spec(f"s3://{BUCKET}/gone2/", s3, read_attempts=2, retry_backoff=0.05)
    cfg = PipelineConfig(sources=[spec], seed=3, shuffle_buffer=0, max_frames=400, num_buckets=1,
                         prepare=PrepareConfig(min_duration=0.1))  # fmt: skip
    batches = list(build_dataloader(SpeechDataPipeline(cfg, rank=0, world_size=1), num_workers=0))
    ids = [i for batch in batches for i in batch.ids]
    assert sorted(ids) == sorted(f"a/a-{i:04d}" for s in (0, 2, 3) for i in range(s, 16, 4))
    skipped = sum((Counter(b.skipped_by_source) for b in batches), Counter())
    assert skipped == {"a/unreadable_file": 1}
    # data-check: the same skip, with the file's name as its example
    from granite_train.data.check import check_source

    _upload(client, local / "a", prefix="gone2/")
    result = check_source(spec, PrepareConfig(min_duration=0.1), progress=False)
    assert result.skipped["unreadable_file"] == 1 and len(result.records) == 12
    assert result.examples["unreadable_file"].startswith(gone + ": ")


def test_deleted_file_with_an_example_level_split_keeps_the_shares_disjoint(local, s3):
    client = s3.client()
    _upload(client, local / "a", prefix="gone3/")
    # 4 files for 3 readers: every reader reads every file and keeps every 3rd row
    readers = [
        SourceReader(_spec(f"s3://{BUCKET}/gone3/", s3, read_attempts=2, retry_backoff=0.05), i, 3)
        for i in range(3)
    ]
    served = [_ids(_read_all(r, limit=1)) for r in readers]  # each stream is open, in file 1
    client.delete_object(Bucket=BUCKET, Key="gone3/shard-001.parquet")
    served = [ids + _ids(_read_all(r)) for ids, r in zip(served, readers)]
    everything = [i for ids in served for i in ids]
    assert len(everything) == len(set(everything))  # disjoint after the skip too
    assert set(everything) == {f"a/a-{i:04d}" for i in range(16) if i % 4 != 1}
    assert all(list(r.unreadable) == [f"s3://{BUCKET}/gone3/shard-001.parquet"] for r in readers)


def test_unreachable_endpoint_and_missing_backend_are_clear_errors(local):
    dead = MotoServer()  # never started: nothing listens on its port
    spec = _spec(f"s3://{BUCKET}/a/", dead, kind="parquet", read_attempts=2, retry_backoff=0.05)
    with pytest.raises(DataError, match=r"cannot reach 's3://speech/a/'.*AWS_ENDPOINT_URL"):
        SourceReader(spec).next_record()
    with pytest.raises(DataError, match="pip install gcsfs"):
        SourceSpec("g", "gs://bucket/data/*.parquet")
    with pytest.raises(DataError, match="fsspec knows no protocol 'nosuch'"):
        SourceSpec("n", "nosuch://bucket/x.parquet")
