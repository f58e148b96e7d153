"""The issue-19 transfer rows are one change apart, and the real-speech mix trains on three FSDD
speakers while the fourth (yweweler) stays a test set."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from granite_train.data.sources import SourceReader, SourceSpec
from granite_train.recipes import load_recipe

ROWS = ["ctc_tiny_en", "ctc_tiny_engines", "ctc_tiny_engines_degrade", "ctc_tiny_mix"]


def _flat(node, prefix: str = "") -> dict:
    if isinstance(node, dict):
        return {k: v for key, value in node.items() for k, v in _flat(value, f"{prefix}{key}.").items()}
    return {prefix.rstrip("."): node}


def _changed(a: str, b: str) -> set[str]:
    x, y = _flat(load_recipe(a)), _flat(load_recipe(b))
    return {k for k in x.keys() | y.keys() if x.get(k) != y.get(k) and k not in ("name", "output_dir")}


def test_each_row_changes_one_thing_from_the_row_before():
    assert _changed("ctc_tiny_en", "ctc_tiny_engines") == {"data.train.sources", "data.val.sources"}
    degrade = _changed("ctc_tiny_engines", "ctc_tiny_engines_degrade")
    assert degrade and all(k.startswith(("data.augment.degrade", "data.augment.noise")) for k in degrade)
    mix = _changed("ctc_tiny_engines_degrade", "ctc_tiny_mix")
    assert mix == {"data.train.sources", "data.train.alpha", "data.train.prepare.min_duration"}
    # steps, model, optimiser and batch size are those of the tiny recipe in every row
    for name in ROWS:
        cfg = load_recipe(name)
        assert (cfg["trainer"]["max_steps"], cfg["data"]["train"]["max_frames"]) == (2400, 2000)


def test_mix_trains_on_three_fsdd_speakers_and_holds_out_yweweler(fsdd_dir):
    sources = load_recipe("ctc_tiny_mix")["data"]["train"]["sources"]
    fsdd = next(s for s in sources if s["name"] == "fsdd")
    assert Path(fsdd["path"]).resolve() == fsdd_dir.resolve()
    generated = next(s for s in sources if s["name"] != "fsdd")
    assert generated["path"].endswith("tts_en_engines") and fsdd["weight"] > 0

    def speakers(spec: dict) -> Counter:
        reader, seen = SourceReader(SourceSpec(**spec)), Counter()
        while (record := reader.next_record()) is not None:
            seen[record["speaker"]] += 1
        return seen

    assert speakers(fsdd) == Counter(george=500, jackson=500, nicolas=500)
    assert speakers({**fsdd, "holdout": "only"}) == Counter(yweweler=500)
