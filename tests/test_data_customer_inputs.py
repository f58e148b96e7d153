"""Customer data never hangs, crashes or silently vanishes: each input of issue 27's table either
stops with a :class:`DataError` naming the fix, within seconds, or is skipped, counted once and
reported with an example row."""

from __future__ import annotations

import contextlib
import json
import signal
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from granite_train.data.errors import DataError
from granite_train.data.pipeline import PipelineConfig, SpeechDataPipeline, build_dataloader
from granite_train.data.prepare import PrepareConfig
from granite_train.data.sources import SourceReader, SourceSpec
from tests.corpus import speechlike


@contextlib.contextmanager
def deadline(seconds: int):
    """Fail instead of hanging: today's bug was an endless loop."""

    def expired(*_):
        raise TimeoutError(f"still running after {seconds} s: the pipeline hangs")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def write_clips(folder: Path, names: list[str], seconds: float = 1.0) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for k, name in enumerate(names):
        sf.write(folder / name, speechlike(seconds, seed=k), 16000)


def train_batches(spec: SourceSpec, n: int = 3, **prepare) -> list:
    """``n`` batches of an infinite training stream over ``spec`` (what `finetune` trains on)."""
    cfg = PipelineConfig(
        sources=[spec], infinite=True, shuffle_buffer=0, max_frames=2000, prepare=PrepareConfig(**prepare)
    )
    loader = build_dataloader(SpeechDataPipeline(cfg, rank=0, world_size=1))
    out = []
    with deadline(60):
        for batch in loader:
            out.append(batch)
            if len(out) == n:
                break
    return out


def csv_manifest(path: Path, header: str, rows: list[str], encoding: str = "utf-8") -> Path:
    path.write_text("\n".join([header, *rows]) + "\n", encoding=encoding)
    return path


def test_every_audio_path_missing_stops_naming_the_reason_and_a_row(tmp_path):
    manifest = csv_manifest(tmp_path / "m.csv", "audio,text", [f"gone{k}.wav,hello there" for k in range(4)])
    with pytest.raises(DataError) as err:
        train_batches(SourceSpec("mine", str(manifest), id_column=None))
    message = str(err.value)
    assert "source 'mine'" in message and "4 record(s)" in message
    assert "missing_file: 4" in message and "gone0.wav" in message


def test_transcript_column_under_another_name_is_named_with_the_fix(tmp_path):
    write_clips(tmp_path, [f"c{k}.wav" for k in range(4)])
    manifest = csv_manifest(
        tmp_path / "m.csv", "audio,transcript", [f"c{k}.wav,good morning" for k in range(4)]
    )
    with pytest.raises(DataError) as err:
        train_batches(SourceSpec("mine", str(manifest), id_column=None))
    message = str(err.value)
    assert "no_text: 4" in message
    assert "column 'text' not found; columns are: audio, transcript; set text_column=transcript" in message
    # and with the fix the same manifest trains
    batches = train_batches(SourceSpec("mine", str(manifest), id_column=None, text_column="transcript"))
    assert batches[0].texts[0] == "good morning"


def test_every_transcript_empty_stops(tmp_path):
    write_clips(tmp_path, [f"c{k}.wav" for k in range(3)])
    rows = [json.dumps({"audio_filepath": f"c{k}.wav", "text": " "}) for k in range(3)]
    (tmp_path / "m.jsonl").write_text("\n".join(rows) + "\n")
    with pytest.raises(DataError, match=r"no_text: 3 \(e.g. mine/.*c0.wav: empty transcript\)"):
        train_batches(SourceSpec("mine", str(tmp_path / "m.jsonl"), id_column=None))


def test_held_out_split_taking_every_record_stops_saying_so(tmp_path):
    write_clips(tmp_path, [f"c{k}.wav" for k in range(4)])
    manifest = csv_manifest(
        tmp_path / "m.csv", "audio,text,speaker", [f"c{k}.wav,hi there,carol" for k in range(4)]
    )
    spec = SourceSpec("mine", str(manifest), id_column=None, holdout="exclude", holdout_speakers=["carol"])
    with pytest.raises(DataError, match=r"held_out: 4 \(e.g. speaker 'carol'\)"):
        train_batches(spec)


def test_good_rows_train_and_bad_ones_are_counted_once_per_record(tmp_path):
    write_clips(tmp_path, ["a.wav", "b.wav"])
    manifest = csv_manifest(tmp_path / "m.csv", "audio,text", ["a.wav,one two", "b.wav,", "lost.wav,three"])
    batches = train_batches(SourceSpec("mine", str(manifest), id_column=None), n=12)
    skipped = {}
    for batch in batches:
        for reason, n in batch.skipped.items():
            skipped[reason] = skipped.get(reason, 0) + n
    # twelve batches are several passes over the three rows: each bad row counted once
    assert skipped == {"no_text": 1, "missing_file": 1}
    assert {i.rsplit("/", 1)[-1] for b in batches for i in b.ids} == {"a.wav"}


def test_consecutive_skips_stop_a_long_stream_early(tmp_path):
    write_clips(tmp_path, ["a.wav"])
    rows = [f"lost{k}.wav,text" for k in range(30)] + ["a.wav,fine"]
    manifest = csv_manifest(tmp_path / "m.csv", "audio,text", rows)
    cfg = PipelineConfig(
        sources=[SourceSpec("mine", str(manifest), id_column=None)], infinite=True, shuffle_buffer=0,
        max_frames=2000, max_consecutive_skips=10,
    )  # fmt: skip
    with deadline(60), pytest.raises(DataError, match=r"(?s)after 10 records in a row.*missing_file: 10"):
        next(iter(build_dataloader(SpeechDataPipeline(cfg, rank=0, world_size=1))))


def test_latin1_manifest_is_detected_and_read(tmp_path):
    write_clips(tmp_path, ["a.wav"])
    manifest = csv_manifest(
        tmp_path / "m.csv", "audio,text", ["a.wav,café señor à l'été"], encoding="latin-1"
    )
    batch = train_batches(SourceSpec("mine", str(manifest), id_column=None), n=1)[0]
    assert set(batch.texts) == {"café señor à l'été"}
    utf16 = csv_manifest(tmp_path / "u.csv", "audio,text", ["a.wav,naïve"], encoding="utf-16")
    assert set(train_batches(SourceSpec("u", str(utf16), id_column=None), n=1)[0].texts) == {"naïve"}


def test_a_wrong_given_encoding_names_the_file_and_line(tmp_path):
    manifest = csv_manifest(
        tmp_path / "m.csv", "audio,text", ["a.wav,plain", "b.wav,café"], encoding="latin-1"
    )
    reader = SourceReader(SourceSpec("mine", str(manifest), encoding="utf-8"))
    with pytest.raises(DataError, match=r"m.csv: line 3, column 10 is not utf-8 text \(byte 0xe9\)"):
        reader.next_record()


@pytest.mark.parametrize("path", ["does/not/exist.csv", "./my_audio", "/abs/missing_folder"])
def test_a_path_that_does_not_exist_is_an_error_naming_it(path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DataError, match="does not exist|not a local path") as err:
        SourceReader(SourceSpec("mine", path)).next_record()
    assert repr(path) in str(err.value)


def test_a_hub_like_id_offline_says_the_hub_is_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DataError, match="'someone/calls' is not a local path .* the hub is offline"):
        SourceReader(SourceSpec("mine", "someone/calls")).next_record()


def test_a_two_hour_file_is_skipped_from_its_header_without_decoding(tmp_path, monkeypatch):
    long = tmp_path / "long.flac"
    with sf.SoundFile(long, "w", samplerate=16000, channels=1) as f:  # 2 h of near-silence, written in blocks
        block = (1e-3 * np.random.default_rng(0).standard_normal(16000 * 60)).astype(np.float32)
        for _ in range(120):
            f.write(block)
    write_clips(tmp_path, ["a.wav"])
    manifest = csv_manifest(tmp_path / "m.csv", "audio,text", ["long.flac,a long call", "a.wav,short"])

    import granite_train.data.prepare as prepare

    decoded = []
    real = prepare.decode_audio
    monkeypatch.setattr(prepare, "decode_audio", lambda s: decoded.append(s) or real(s))
    batches = train_batches(SourceSpec("mine", str(manifest), id_column=None), n=4)
    assert all(not str(s).endswith("long.flac") for s in decoded)  # never decoded
    assert sum(b.skipped.get("too_long", 0) for b in batches) == 1


def test_nemo_duration_skips_before_decoding_and_a_mismatch_is_counted(tmp_path):
    write_clips(tmp_path, ["a.wav", "b.wav"], seconds=1.0)
    rows = [{"audio_filepath": "a.wav", "text": "one", "duration": 0},  # wrong: the header wins
            {"audio_filepath": "b.wav", "text": "two", "duration": 1.0}]  # fmt: skip
    (tmp_path / "m.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = PipelineConfig(
        sources=[SourceSpec("mine", str(tmp_path / "m.jsonl"), id_column=None)], shuffle_buffer=0
    )
    pipeline = SpeechDataPipeline(cfg, rank=0, world_size=1)
    skipped, ids = {}, []
    for batch in build_dataloader(pipeline):
        ids += batch.ids
        for reason, n in batch.skipped.items():
            skipped[reason] = skipped.get(reason, 0) + n
    assert len(ids) == 2 and skipped == {"fixed_duration_from_header": 1}


def test_a_loader_worker_raises_the_same_error_and_the_cli_prints_its_message_alone(tmp_path):
    from granite_train.data.errors import data_error_message

    manifest = csv_manifest(tmp_path / "m.csv", "audio,text", [f"gone{k}.wav,hello" for k in range(3)])
    cfg = PipelineConfig(
        sources=[SourceSpec("mine", str(manifest), id_column=None)], infinite=True, shuffle_buffer=0
    )
    loader = build_dataloader(SpeechDataPipeline(cfg, rank=0, world_size=1), num_workers=1)
    with deadline(60), pytest.raises(DataError) as err:
        next(iter(loader))
    assert "Original Traceback" in str(err.value)  # the worker's traceback wraps the message
    message = data_error_message(err.value)
    assert message.startswith("source 'mine' (") and "missing_file: 3" in message
    assert "Traceback" not in message
    assert data_error_message(ValueError("not about data")) is None
