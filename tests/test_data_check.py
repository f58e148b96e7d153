"""The data check (every record read once, from headers) and the held-out split built on it."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import soundfile as sf

from granite_train.data.check import check_source
from granite_train.data.errors import DataError
from granite_train.data.holdout import given_speakers_plan, plan_holdout
from granite_train.data.prepare import PrepareConfig
from granite_train.data.sources import SourceReader, SourceSpec
from tests.corpus import audio_bytes, speechlike


def speakers_manifest(tmp_path, speakers, per_speaker=5, seconds=1.0):
    rows = ["audio,text,speaker"]
    for s, speaker in enumerate(speakers):
        for k in range(per_speaker):
            name = f"{speaker}_{k}.wav"
            sf.write(tmp_path / name, speechlike(seconds, seed=10 * s + k), 16000)
            rows.append(f"{name},hello number {k},{speaker}")
    (tmp_path / "m.csv").write_text("\n".join(rows) + "\n")
    return SourceSpec("mine", str(tmp_path / "m.csv"), id_column=None)


def served_ids(spec):
    reader, ids = SourceReader(spec), []
    while (record := reader.next_record()) is not None:
        ids.append(record["id"])
    return ids


def test_check_counts_every_reason_once_with_an_example_and_hours(tmp_path):
    sf.write(tmp_path / "ok.wav", speechlike(2.0), 16000)
    sf.write(tmp_path / "stereo8k.wav", speechlike(1.0, sr=8000, channels=2), 8000)
    sf.write(tmp_path / "long.wav", speechlike(40.0), 16000)
    (tmp_path / "bad.wav").write_bytes(b"not audio at all")
    rows = ["audio,text", "ok.wav,fine", "stereo8k.wav,also fine", "long.wav,too long", "bad.wav,corrupt",
            "gone.wav,missing", "ok.wav,"]  # fmt: skip
    (tmp_path / "m.csv").write_text("\n".join(rows) + "\n")
    check = check_source(SourceSpec("mine", str(tmp_path / "m.csv"), id_column=None), progress=False)
    assert len(check.records) == 6 and len(check.usable) == 2
    assert check.skipped == {"too_long": 1, "decode_error": 1, "missing_file": 1, "no_text": 1}
    assert check.fixed == {"fixed_resampled": 1, "fixed_downmixed": 1}
    assert check.usable_hours == pytest.approx(3.0 / 3600)
    assert "long.wav" in check.examples["too_long"] and "gone.wav" in check.examples["missing_file"]
    check_all = check.error()
    assert check_all is None


def test_a_source_with_nothing_usable_is_an_error_with_the_column_fix(tmp_path):
    sf.write(tmp_path / "a.wav", speechlike(1.0), 16000)
    (tmp_path / "m.csv").write_text("audio,transcript\na.wav,good morning\n")
    check = check_source(SourceSpec("mine", str(tmp_path / "m.csv"), id_column=None), progress=False)
    assert "set text_column=transcript" in str(check.error())


def test_split_by_speaker_reaches_the_share_with_at_least_one_speaker(tmp_path):
    spec = speakers_manifest(tmp_path, ["george", "jackson", "nicolas", "yweweler"], per_speaker=10)
    check = check_source(spec, progress=False)
    plan = plan_holdout(check, share=0.1, min_utterances=5)
    # a 10% share of 4 speakers by hash alone often holds out nobody: here always one speaker
    assert plan.by == "speaker" and len(plan.keys) == 1
    assert (plan.held_utterances, plan.train_utterances) == (10, 30)
    assert plan_holdout(check, share=0.1, min_utterances=5) == plan  # deterministic
    train, held = served_ids(plan.apply(spec, "exclude")), served_ids(plan.apply(spec, "only"))
    assert len(held) == 10 and len(train) == 30 and not set(train) & set(held)
    assert all(plan.keys[0] in i for i in held)
    assert "held-out split by speaker: 1 of 4 speakers" in plan.format()


def test_one_speaker_is_split_by_recording_and_says_so(tmp_path):
    spec = speakers_manifest(tmp_path, ["solo"], per_speaker=10)
    plan = plan_holdout(check_source(spec, progress=False), share=0.2, min_utterances=2)
    assert plan.by == "recording" and plan.held_utterances == 2 and plan.train_utterances == 8
    assert "1 speaker (solo)" in plan.note


def test_a_single_recording_cannot_be_split(tmp_path):
    spec = speakers_manifest(tmp_path, ["solo"], per_speaker=1)
    with pytest.raises(DataError, match="give eval_data="):
        plan_holdout(check_source(spec, progress=False), share=0.1)


def test_bytes_without_path_id_or_speaker_split_by_content(tmp_path):
    rows = [{"audio": {"bytes": audio_bytes(speechlike(1.0, seed=k)), "path": None}, "text": f"clip {k}"}
            for k in range(10)]  # fmt: skip
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "train.parquet")
    spec = SourceSpec("mine", str(tmp_path / "train.parquet"), id_column=None)
    plan = plan_holdout(check_source(spec, progress=False), share=0.2, min_utterances=1)
    assert plan.by == "content" and plan.held_utterances == 2  # not all, not nothing (str(None) was)
    held, train = served_ids(plan.apply(spec, "only")), served_ids(plan.apply(spec, "exclude"))
    assert len(held) == 2 and len(train) == 8


def test_named_speakers_are_checked(tmp_path):
    spec = speakers_manifest(tmp_path, ["alice", "bob"], per_speaker=3)
    check = check_source(spec, progress=False)
    assert given_speakers_plan(check, ["bob"]).held_utterances == 3
    with pytest.raises(DataError, match=r"holdout_speakers \['carol'\] not among .*alice, bob"):
        given_speakers_plan(check, ["carol"])
    with pytest.raises(DataError, match="nothing left to train on"):
        given_speakers_plan(check, ["alice", "bob"])


def test_check_reads_headers_not_samples(tmp_path, monkeypatch):
    spec = speakers_manifest(tmp_path, ["a"], per_speaker=3)
    import granite_train.data.prepare as prepare

    monkeypatch.setattr(prepare, "decode_audio", lambda s: pytest.fail(f"decoded {s}"))
    check = check_source(spec, PrepareConfig(), progress=False)
    assert len(check.usable) == 3 and check.usable_hours == pytest.approx(3.0 / 3600)
