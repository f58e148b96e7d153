"""Sources as users bring them: CSV / TSV / NeMo JSONL manifests, and a held-out split made from a
source itself (by speaker when known, else by recording), disjoint and stable."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf

from granite_train.data.sources import SourceReader, SourceSpec, guess_kind


def _wavs(folder, n: int) -> list[str]:
    (folder / "clips").mkdir(parents=True)
    names = []
    for i in range(n):
        name = f"clips/u{i:02d}.wav"
        sf.write(folder / name, np.full(1600, 0.01 * (i + 1), dtype=np.float32), 16000)
        names.append(name)
    return names


def _read_all(spec: SourceSpec) -> list[dict]:
    reader, out = SourceReader(spec), []
    while (record := reader.next_record()) is not None:
        out.append(record)
    return out


@pytest.mark.parametrize("suffix, sep", [(".csv", ","), (".tsv", "\t")])
def test_csv_and_tsv_manifests_with_relative_paths_speakers_and_splits(tmp_path, suffix, sep):
    names = _wavs(tmp_path, 6)
    rows = [sep.join(("audio", "text", "speaker", "split"))]
    rows += [
        sep.join((n, f"word {i}", f"spk{i % 3}", "test" if i == 5 else "train")) for i, n in enumerate(names)
    ]
    manifest = tmp_path / f"manifest{suffix}"
    manifest.write_text("\n".join(rows) + "\n")
    assert guess_kind(str(manifest)) == "csv"
    train = _read_all(SourceSpec("mine", str(manifest), id_column=None))
    assert [r["text"] for r in train] == [f"word {i}" for i in range(5)]  # the split column is honoured
    assert train[0]["audio"]["path"] == str(tmp_path / names[0]) and train[0]["speaker"] == "spk0"
    test = _read_all(SourceSpec("mine", str(manifest), split="test", id_column=None))
    assert [r["text"] for r in test] == ["word 5"]


def test_nemo_jsonl_manifest_keys(tmp_path):
    names = _wavs(tmp_path, 2)
    manifest = tmp_path / "train_manifest.jsonl"
    manifest.write_text(
        "".join(
            json.dumps({"audio_filepath": n, "text": f"t{i}", "duration": 0.1}) + "\n"
            for i, n in enumerate(names)
        )
    )
    records = _read_all(SourceSpec("nemo", str(manifest), id_column=None))
    assert [(r["audio"]["path"], r["text"]) for r in records] == [
        (str(tmp_path / n), f"t{i}") for i, n in enumerate(names)
    ]


def _speaker_manifest(tmp_path, speakers: int = 12, per: int = 3):
    names = _wavs(tmp_path, speakers * per)
    rows = ["file_name,text,speaker"] + [f"{n},w{i},s{i // per}" for i, n in enumerate(names)]
    manifest = tmp_path / "m.csv"
    manifest.write_text("\n".join(rows) + "\n")
    return manifest


def test_holdout_by_speaker_is_disjoint_complete_and_stable(tmp_path):
    manifest = _speaker_manifest(tmp_path)
    spec = dict(name="m", path=str(manifest), id_column=None, holdout_share=0.3)
    train = _read_all(SourceSpec(**spec, holdout="exclude"))
    test = _read_all(SourceSpec(**spec, holdout="only"))
    everything = _read_all(SourceSpec(**spec))
    assert sorted(r["text"] for r in train + test) == sorted(r["text"] for r in everything)
    train_speakers, test_speakers = {r["speaker"] for r in train}, {r["speaker"] for r in test}
    assert train_speakers and test_speakers and not train_speakers & test_speakers  # whole speakers
    assert [r["text"] for r in _read_all(SourceSpec(**spec, holdout="only"))] == [r["text"] for r in test]


def test_named_holdout_speakers_and_recording_hash_without_speakers(tmp_path):
    manifest = _speaker_manifest(tmp_path, speakers=4, per=2)
    test = _read_all(SourceSpec("m", str(manifest), id_column=None, holdout="only", holdout_speakers=["s2"]))
    assert [r["text"] for r in test] == ["w4", "w5"]
    no_speakers = _read_all(
        SourceSpec("m", str(manifest), id_column=None, speaker_column=None, holdout="only", holdout_share=0.5)
    )
    assert 0 < len(no_speakers) < 8  # by recording: some, not all
    with pytest.raises(ValueError, match="holdout must be"):
        SourceSpec("m", str(manifest), holdout="test")
