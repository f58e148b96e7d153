"""Stage-1 training on customer data: a source with nothing usable stops the run (with the check
before the model is built, and without it from the pipeline), and what was skipped is printed once
at the end per source and reason."""

from __future__ import annotations

import pytest
import soundfile as sf

from granite_train.data.errors import DataError
from granite_train.recipes import load_recipe
from granite_train.training.run import skipped_summary, train
from tests.corpus import speechlike
from tests.test_data_customer_inputs import deadline
from tests.test_training_ctc_module import TINY


def manifest(tmp_path, header: str, rows: list[str]):
    for k in range(4):
        sf.write(tmp_path / f"c{k}.wav", speechlike(1.0, seed=k), 16000)
    (tmp_path / "m.csv").write_text("\n".join([header, *rows]) + "\n")
    return tmp_path / "m.csv"


def recipe(path, out, *extra):
    return load_recipe(
        "ctc_tiny_en",
        [*TINY, f"output_dir={out}", f"data.train.sources=[{{name: mine, path: '{path}', id_column: null}}]",
         "data.val=null", "trainer.val_every_n_steps=null", "trainer.export_hf=false", *extra],
    )  # fmt: skip


@pytest.mark.parametrize("check", [True, False])
def test_a_transcript_column_under_another_name_stops_training(tmp_path, check):
    path = manifest(tmp_path, "audio,transcript", [f"c{k}.wav,hello there" for k in range(4)])
    with deadline(120), pytest.raises(DataError, match="set text_column=transcript"):
        train(recipe(path, tmp_path / "out", "trainer.max_steps=2", f"data.check={str(check).lower()}"))
    if check:  # stopped before a model was built
        assert not (tmp_path / "out" / "checkpoints").exists()


def test_skips_are_printed_once_per_record_at_the_end(tmp_path, capsys):
    path = manifest(tmp_path, "audio,text", ["c0.wav,one two", "c1.wav,three", "lost.wav,four", "c2.wav,"])
    result = train(recipe(path, tmp_path / "out", "trainer.max_steps=6", "data.check=true"))
    out = capsys.readouterr().out
    assert "| mine | 4 | 2 |" in out  # the check's table, before training
    # six steps are several passes over two usable rows: each bad row still counted once
    assert result.counters["skipped_in/mine/missing_file"] == 1
    assert result.counters["skipped_in/mine/no_text"] == 1
    assert "[summary] records skipped or repaired" in out and "missing_file: 1" in out


def test_skipped_summary_names_source_reason_and_fix():
    lines = skipped_summary({"skipped_in/calls/too_long": 3, "skipped_in/calls/no_text": 1, "utterances": 9})
    assert lines[1] == "  source 'calls': 4 record(s)"
    assert lines[2].startswith("    - too_long: 3 -- ") and "data_prep.segment" in lines[2]
    assert skipped_summary({"utterances": 3}) == []
