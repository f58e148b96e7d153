"""The long-form segmenter: every segment within the limit, no word lost or repeated, drops counted
per reason, resumable, and its output is a dataset the pipeline reads."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import soundfile as sf
import torch

from data_prep.segment import SegmentConfig, parse_config
from data_prep.segment import main as segment_main
from tests.test_models_ctc_align import ToneCTC, tone_speech, tone_words


@pytest.fixture(scope="module")
def encoder_dir(tmp_path_factory):
    from granite_train.models.encoder import CTCEncoder, encoder_config
    from granite_train.models.export import export_hf_encoder

    torch.manual_seed(0)
    encoder = CTCEncoder(encoder_config("tiny", num_layers=2, hidden_dim=32, num_heads=2, dim_head=16)).eval()
    return export_hf_encoder(encoder, tmp_path_factory.mktemp("enc") / "encoder_hf")


def _long(tmp_path):
    g = np.random.default_rng(0)
    (tmp_path / "a").mkdir()
    rows = []
    for k, seconds in enumerate((40.0, 25.0)):
        sf.write(
            tmp_path / "a" / f"r{k}.wav",
            (0.05 * g.standard_normal(int(seconds * 16000))).astype(np.float32),
            16000,
        )
        words = " ".join(f"word{i}" for i in range(60 if k == 0 else 30))
        rows.append({"audio_filepath": f"a/r{k}.wav", "text": words, "duration": seconds})
    rows.append({"audio_filepath": "a/missing.wav", "text": "lost", "duration": 1.0})
    rows.append({"audio_filepath": "a/r1.wav", "text": "\u4e2d\u6587", "duration": 25.0})
    (tmp_path / "long.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return tmp_path / "long.jsonl", rows


def _segments(out):
    rows = []
    for f in sorted((out / "data").glob("*.parquet")):
        rows += pq.read_table(f).to_pylist()
    return rows


def test_segments_cover_every_word_within_the_limit_and_drops_are_counted(tmp_path, encoder_dir):
    manifest, rows = _long(tmp_path)
    out = tmp_path / "seg"

    def args(folder, min_score=0.0):
        return ["--model", str(encoder_dir), "--data", str(manifest), "--out", str(folder), "--lowercase",
                "--max-seconds", "15", "--min-score", str(min_score), "--quiet", "--shard-size", "2"]  # fmt: skip

    assert segment_main(args(out)) == 0
    segments = _segments(out)
    for recording, source in (("long/a/r0.wav", rows[0]), ("long/a/r1.wav", rows[1])):
        mine = sorted((s for s in segments if s["recording"] == recording), key=lambda s: s["start"])
        assert len(mine) >= 2 and all(s["end"] - s["start"] <= 15.0 for s in mine)
        assert " ".join(s["text"] for s in mine) == source["text"]  # every word once, in order
        assert all(b["start"] == pytest.approx(a["end"]) for a, b in zip(mine, mine[1:]))  # contiguous
    rejects = [json.loads(line) for line in (out / "rejects.jsonl").read_text().splitlines()]
    assert sorted(r["reason"] for r in rejects) == ["empty_text", "undecodable"]
    # resumable: a rerun finds every shard finished and writes nothing
    before = {p: p.stat().st_mtime_ns for p in (out / "data").glob("*.parquet")}
    assert segment_main(args(out)) == 0
    assert {p: p.stat().st_mtime_ns for p in (out / "data").glob("*.parquet")} == before
    # a score threshold nothing reaches drops every segment, counted
    strict = tmp_path / "strict"
    assert segment_main(args(strict, min_score=1.01)) == 0
    reasons = [json.loads(line)["reason"] for line in (strict / "rejects.jsonl").read_text().splitlines()]
    assert reasons.count("low_score") == len(segments) and not _segments(strict)


def test_the_pipeline_reads_the_segments(tmp_path, encoder_dir):
    from granite_train.data.pipeline import PipelineConfig, SpeechDataPipeline, build_dataloader
    from granite_train.data.sources import SourceSpec

    manifest, _ = _long(tmp_path)
    out = tmp_path / "seg"
    segment_main(["--model", str(encoder_dir), "--data", str(manifest), "--out", str(out), "--lowercase",
                  "--max-seconds", "15", "--min-score", "0.0", "--quiet"])  # fmt: skip
    cfg = PipelineConfig(
        sources=[SourceSpec("seg", str(out), language="en")], shuffle_buffer=0, max_frames=4000
    )
    batches = list(build_dataloader(SpeechDataPipeline(cfg, rank=0, world_size=1)))
    assert sum(len(b) for b in batches) == len(_segments(out))


def test_long_recordings_are_cut_in_windows_and_another_recordings_transcript_is_dropped(
    tmp_path, monkeypatch
):
    from granite_train.models import export

    monkeypatch.setattr(export, "load_encoder", lambda path: ToneCTC())  # a head that hears tone speech
    (tmp_path / "a").mkdir()
    words = {"ra": tone_words(70, seed=5), "rb": tone_words(70, seed=6)}
    truth = {}
    for name in words:
        wave, truth[name] = tone_speech(words[name], seed=5 if name == "ra" else 6)  # ~80 s each
        sf.write(tmp_path / "a" / f"{name}.wav", wave.numpy(), 16000)
    rows = [{"audio_filepath": "a/ra.wav", "text": " ".join(words["ra"])},
            {"audio_filepath": "a/rb.wav", "text": " ".join(words["ra"])}]  # fmt: skip
    (tmp_path / "long.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "seg"
    # windows of 20 s (5 s overlap) above 10 s: both recordings are aligned in windows
    assert segment_main(["--model", "tone", "--data", str(tmp_path / "long.jsonl"), "--out", str(out),
                         "--max-seconds", "15", "--window-seconds", "20", "--overlap-seconds", "5",
                         "--whole-seconds", "10", "--quiet"]) == 0  # fmt: skip
    mine = sorted(_segments(out), key=lambda s: s["start"])
    assert {s["recording"] for s in mine} == {"long/a/ra.wav"}
    assert " ".join(s["text"] for s in mine) == " ".join(words["ra"])  # every word once, in order
    assert all(s["end"] - s["start"] <= 15.0 and s["score"] > 0.9 for s in mine)
    pauses = [(a[1], b[0]) for a, b in zip(truth["ra"], truth["ra"][1:])]
    assert all(any(lo <= s["end"] <= hi for lo, hi in pauses) for s in mine[:-1])  # every cut in a pause
    rejects = [json.loads(line) for line in (out / "rejects.jsonl").read_text().splitlines()]
    assert [(r["id"], r["reason"]) for r in rejects] == [("long/a/rb.wav", "mismatch")]


def test_the_settings_are_one_typed_config(capsys):
    required = ["--model", "m", "--data", "d", "--out", "o"]
    config = parse_config([*required, "--min-score", "0", "--overlap-seconds", "0", "--no-quiet-cuts"])
    assert config == SegmentConfig("m", "d", "o", min_score=0.0, overlap_seconds=0.0, quiet_cuts=False)
    assert config.min_score == 0.0  # an explicit zero stays zero
    assert parse_config(required) == SegmentConfig("m", "d", "o")  # one default each, in the dataclass
    for wrong, named in ((["--min-seconds", "30"], "min_seconds must be >= 0 and < max_seconds (30.0), got 30.0"),
                         (["--window-seconds", "-5"], "window_seconds must be > 0, got -5.0"),
                         (["--overlap-seconds", "60"], "overlap_seconds must be >= 0 and < window_seconds"),
                         (["--min-heard", "2"], "min_heard must be in [0, 1], got 2.0")):  # fmt: skip
        with pytest.raises(SystemExit):
            parse_config([*required, *wrong])
        assert named in capsys.readouterr().err
    with pytest.raises(ValueError, match="max_seconds must be > 0, got -1"):
        SegmentConfig("m", "d", "o", max_seconds=-1)
