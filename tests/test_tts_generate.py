"""Corpus generator: layout, determinism, resume, failure accounting, datasets compatibility."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import soundfile as sf
import yaml

from data_prep.tts.backends import VoiceSpec
from data_prep.tts.generate import generate_corpus, main, run_cli, split_of

needs_espeak = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng not installed")

EN = [
    "The train leaves at nine.",
    "Where is the library?",
    "She bought three red apples.",
    "It rained all day yesterday.",
    "Please close the window.",
    "My brother plays the guitar.",
]
FR = ["Il fait beau aujourd'hui.", "Où est la gare ?", "Nous mangeons à midi."]


class SineBackend:
    """Deterministic, fast stand-in for a TTS engine: a tone whose length follows the text."""

    name = "sine"
    languages = ("en", "fr", "de")
    calls: list[str] = []  # class-level: counts synthesize() calls across instances (in-process runs)

    def describe(self) -> dict:
        return {"name": self.name}

    def sample_voice(self, language: str, rng: np.random.Generator) -> VoiceSpec:
        return VoiceSpec(
            self.name, f"tone{int(rng.integers(100))}", rate=1.0, pitch=int(rng.integers(100, 400))
        )

    def synthesize(self, text: str, language: str, voice: VoiceSpec) -> tuple[np.ndarray, int]:
        SineBackend.calls.append(text)
        sr = 22050
        t = np.arange(int(0.05 * len(text) * sr)) / sr
        return (0.5 * np.sin(2 * np.pi * voice.pitch * t)).astype(np.float32), sr


class FlakyBackend(SineBackend):
    """Fails on purpose: FAIL -> exception, EMPTY -> no samples, SILENT -> zeros."""

    def synthesize(self, text: str, language: str, voice: VoiceSpec) -> tuple[np.ndarray, int]:
        if "FAIL" in text:
            raise RuntimeError("synthesizer exploded")
        if "EMPTY" in text:
            return np.zeros(0, dtype=np.float32), 22050
        if "SILENT" in text:
            return np.zeros(22050, dtype=np.float32), 22050
        return super().synthesize(text, language, voice)


def _shards(out: Path) -> dict[str, str]:
    return {
        p.name: hashlib.sha1(p.read_bytes()).hexdigest() for p in sorted((out / "data").glob("*.parquet"))
    }


def _rows(out: Path) -> list[dict]:
    rows = []
    for p in sorted((out / "data").glob("*.parquet")):
        rows += pq.read_table(p).to_pylist()
    return rows


def test_layout_columns_and_audio(tmp_path: Path) -> None:
    summary = generate_corpus(
        {"en": EN, "fr": FR}, tmp_path, backend=SineBackend(), shard_size=4, num_workers=1, progress=False
    )
    assert sorted(_shards(tmp_path)) == ["train-00000.parquet", "train-00001.parquet", "train-00002.parquet"]
    rows = _rows(tmp_path)
    assert len(rows) == summary.total_examples == 9
    assert set(rows[0]) == {"id", "audio", "text", "language", "voice", "duration"}
    assert [r["language"] for r in rows[:4]] == ["en", "fr", "en", "fr"]  # languages interleaved
    assert len({r["id"] for r in rows}) == 9 and all(r["id"].startswith(r["language"] + "-") for r in rows)
    for r in rows:
        audio, sr = sf.read(io.BytesIO(r["audio"]["bytes"]), dtype="float32")
        assert sr == 16000 and audio.ndim == 1
        assert r["duration"] == pytest.approx(len(audio) / 16000, abs=1e-4)
        assert r["duration"] == pytest.approx(0.05 * len(r["text"]), rel=0.01)
        assert r["audio"]["path"] == r["id"] + ".flac"
    assert summary.audio_seconds == pytest.approx(sum(r["duration"] for r in rows), rel=1e-5)
    assert summary.shards_written == 3 and summary.shards_skipped == 0


def test_datasets_streaming_reads_audio_feature(tmp_path: Path) -> None:
    from datasets import Audio, load_dataset

    generate_corpus(
        {"en": EN}, tmp_path, backend=SineBackend(), test_fraction=0.5, num_workers=1, progress=False
    )
    files = sorted(str(p) for p in (tmp_path / "data").glob("train-*.parquet"))
    ds = load_dataset("parquet", data_files=files, split="train", streaming=True)
    assert isinstance(ds.features["audio"], Audio) and ds.features["audio"].sampling_rate == 16000
    ex = next(iter(ds.cast_column("audio", Audio(decode=False))))
    audio, sr = sf.read(io.BytesIO(ex["audio"]["bytes"]))
    assert sr == 16000 and len(audio) > 0 and ex["text"] in EN
    # The folder itself is a dataset: the card's `configs` map the splits to the shards.
    by_dir = load_dataset(str(tmp_path), streaming=True)
    assert set(by_dir) == {"train", "test"}
    assert isinstance(by_dir["test"].features["audio"], Audio)
    n = sum(1 for _ in by_dir["train"].cast_column("audio", Audio(decode=False)))
    n += sum(1 for _ in by_dir["test"].cast_column("audio", Audio(decode=False)))
    assert n == len(EN)


def test_dataset_card_counts(tmp_path: Path) -> None:
    summary = generate_corpus(
        {"en": EN, "fr": FR},
        tmp_path,
        backend=SineBackend(),
        test_fraction=0.3,
        seed=5,
        num_workers=1,
        progress=False,
        command="granite-tts --example",
    )
    text = (tmp_path / "README.md").read_text(encoding="utf-8")
    header = yaml.safe_load(text.split("---\n")[1])
    splits = {s["name"]: s["num_examples"] for s in header["dataset_info"]["splits"]}
    assert splits == summary.num_examples and sum(splits.values()) == len(EN) + len(FR)
    assert header["language"] == ["en", "fr"]
    assert {f["name"] for f in header["dataset_info"]["features"]} >= {"audio", "text", "duration"}
    assert {"name": "audio", "dtype": {"audio": {"sampling_rate": 16000}}} in header["dataset_info"][
        "features"
    ]
    assert header["configs"][0]["data_files"][0] == {"split": "train", "path": "data/train-*"}
    assert "license" in header
    body = text.split("---\n", 2)[2]
    assert "granite-tts --example" in body and "Seed: 5" in body
    for split, per_lang in summary.num_examples_per_language.items():
        for lang, n in per_lang.items():
            assert f"| {split} | {lang} | {n} |" in body


def test_deterministic_for_a_seed(tmp_path: Path) -> None:
    kwargs = dict(backend=SineBackend(), shard_size=3, num_workers=1, progress=False)
    generate_corpus({"en": EN, "fr": FR}, tmp_path / "a", seed=1, **kwargs)
    generate_corpus({"en": EN, "fr": FR}, tmp_path / "b", seed=1, **kwargs)
    generate_corpus({"en": EN, "fr": FR}, tmp_path / "c", seed=2, **kwargs)
    a, b, c = (_shards(tmp_path / x) for x in "abc")
    assert a == b
    assert a.keys() == c.keys() and all(a[k] != c[k] for k in a)
    assert (tmp_path / "a" / "README.md").read_bytes() == (tmp_path / "b" / "README.md").read_bytes()


@needs_espeak
def test_espeak_byte_identical_across_runs_and_worker_counts(tmp_path: Path) -> None:
    texts = {"en": EN[:3], "fr": FR[:2]}
    generate_corpus(texts, tmp_path / "one", shard_size=2, seed=3, num_workers=1, progress=False)
    generate_corpus(texts, tmp_path / "two", shard_size=2, seed=3, num_workers=2, progress=False)
    one, two = _shards(tmp_path / "one"), _shards(tmp_path / "two")
    assert len(one) == 3 and one == two


def test_resume_regenerates_only_missing_shard(tmp_path: Path) -> None:
    backend = SineBackend()
    kwargs = dict(backend=backend, shard_size=2, num_workers=1, progress=False)
    SineBackend.calls.clear()
    first = generate_corpus({"en": EN}, tmp_path, **kwargs)
    assert len(SineBackend.calls) == len(EN) and first.shards_written == 3
    before = _shards(tmp_path)

    SineBackend.calls.clear()
    again = generate_corpus({"en": EN}, tmp_path, **kwargs)
    assert SineBackend.calls == [] and again.shards_skipped == 3 and again.shards_written == 0
    assert again.total_examples == first.total_examples and again.generated_audio_seconds == 0

    (tmp_path / "data" / "train-00001.parquet").unlink()
    SineBackend.calls.clear()
    resumed = generate_corpus({"en": EN}, tmp_path, **kwargs)
    assert SineBackend.calls == EN[2:4]
    assert resumed.shards_written == 1 and resumed.shards_skipped == 2
    assert _shards(tmp_path) == before
    assert resumed.total_examples == first.total_examples
    assert resumed.audio_seconds == pytest.approx(first.audio_seconds)


def test_changed_inputs_redo_only_affected_shards_and_drop_stale_ones(tmp_path: Path) -> None:
    kwargs = dict(backend=SineBackend(), shard_size=2, num_workers=1, progress=False)
    generate_corpus({"en": EN}, tmp_path, **kwargs)
    changed = EN[:2] + ["A completely different third sentence."] + EN[3:4]
    SineBackend.calls.clear()
    summary = generate_corpus({"en": changed}, tmp_path, **kwargs)
    assert SineBackend.calls == changed[2:4]  # shard 0 unchanged, shard 1 redone
    assert sorted(_shards(tmp_path)) == ["train-00000.parquet", "train-00001.parquet"]  # shard 2 removed
    assert summary.total_examples == 4 and {r["text"] for r in _rows(tmp_path)} == set(changed)


def test_failures_are_counted_and_listed(tmp_path: Path) -> None:
    texts = [
        "A good sentence.",
        "This one will FAIL.",
        "EMPTY output here.",
        "SILENT output here.",
        "Fine again.",
    ]
    texts += ["A good sentence.", "x" * 40]  # a duplicate and an over-long line
    summary = generate_corpus(
        {"en": texts}, tmp_path, backend=FlakyBackend(), num_workers=1, progress=False, max_chars=30
    )
    assert summary.total_examples == 2
    assert summary.failures == {"backend_error:RuntimeError": 1, "empty_audio": 1, "silent_audio": 1}
    assert summary.filtered == {"duplicate": 1, "too_long": 1}
    failed = [json.loads(line) for line in (tmp_path / "failures.jsonl").read_text().splitlines()]
    assert sorted(f["reason"] for f in failed) == [
        "backend_error:RuntimeError",
        "empty_audio",
        "silent_audio",
    ]
    assert any("synthesizer exploded" in f["detail"] for f in failed)
    card = (tmp_path / "README.md").read_text()
    assert "- empty_audio: 1" in card and "- duplicate: 1" in card
    # Resumed runs still report the failures of shards they skip.
    again = generate_corpus(
        {"en": texts}, tmp_path, backend=FlakyBackend(), num_workers=1, progress=False, max_chars=30
    )
    assert again.shards_skipped == 1 and again.failures == summary.failures


def test_train_test_split_is_disjoint_and_by_text(tmp_path: Path) -> None:
    sentences = [f"Sentence number {i} about something." for i in range(60)]
    summary = generate_corpus(
        {"en": sentences, "fr": sentences[:20]},
        tmp_path,
        backend=SineBackend(),
        test_fraction=0.25,
        shard_size=16,
        num_workers=1,
        progress=False,
    )
    train = {r["text"] for r in _split_rows(tmp_path, "train")}
    test = {r["text"] for r in _split_rows(tmp_path, "test")}
    assert train and test and not train & test
    assert 5 <= summary.num_examples["test"] <= 30
    assert all(split_of(t, 0.25) == "test" for t in test)
    assert split_of(sentences[0], 0.0) == "train"


def _split_rows(out: Path, split: str) -> list[dict]:
    rows = []
    for p in sorted((out / "data").glob(f"{split}-*.parquet")):
        rows += pq.read_table(p).to_pylist()
    return rows


def test_text_files_and_max_sentences(tmp_path: Path) -> None:
    (tmp_path / "texts").mkdir()
    (tmp_path / "texts" / "en.txt").write_text("\n".join(EN) + "\n\n", encoding="utf-8")
    summary = generate_corpus(
        {"en": tmp_path / "texts" / "en.txt"},
        tmp_path / "out",
        backend=SineBackend(),
        max_sentences_per_language=4,
        num_workers=1,
        progress=False,
    )
    assert summary.total_examples == 4 and [r["text"] for r in _rows(tmp_path / "out")] == EN[:4]
    assert str(tmp_path / "texts" / "en.txt") in (tmp_path / "out" / "README.md").read_text()


def test_unsupported_language_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="cannot speak"):
        generate_corpus({"xx": ["hello"]}, tmp_path, backend=SineBackend(), progress=False)


def test_cli_help(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for option in (
        "--texts",
        "--dataset",
        "--num-workers",
        "--test-fraction",
        "--max-sentences-per-language",
    ):
        assert option in out


@needs_espeak
def test_cli_end_to_end_with_espeak(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "en.txt").write_text("Hello there.\nHow are you today?\n", encoding="utf-8")
    (tmp_path / "ja.txt").write_text("こんにちは。\n", encoding="utf-8")
    argv = [
        "--texts",
        f"en={tmp_path / 'en.txt'}",
        f"ja={tmp_path / 'ja.txt'}",
        "--out",
        str(tmp_path / "out"),
        "--backend",
        "espeak",
    ]
    summary = run_cli([*argv, "--num-workers", "1"])
    assert summary.num_examples == {"train": 3} and not summary.failures
    assert "x real time" in capsys.readouterr().out
    card = (tmp_path / "out" / "README.md").read_text(encoding="utf-8")
    assert "license: other" in card and "granite-tts --texts" in card
    assert main([*argv, "--quiet"]) == 0  # rerun: everything skipped


def test_cli_json_dataset_source(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """--dataset with a local builder streams the texts through `datasets`."""
    from data_prep.tts import generate

    data = tmp_path / "texts.jsonl"
    data.write_text("".join(json.dumps({"sentence": s}) + "\n" for s in EN), encoding="utf-8")
    monkeypatch.setattr(generate, "get_backend", lambda name, **kw: SineBackend())
    summary = run_cli(
        ["--dataset", "json", "--data-files", str(data), "--column", "sentence", "--language", "en"]
        + [
            "--max-sentences-per-language",
            "3",
            "--out",
            str(tmp_path / "out"),
            "--quiet",
            "--num-workers",
            "1",
            "--backend",
            "espeak",
        ]
    )
    assert summary.total_examples == 3
    assert "json, split train, column 'sentence'" in (tmp_path / "out" / "README.md").read_text()
