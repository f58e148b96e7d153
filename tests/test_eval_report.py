import json

import pytest

from granite_train.eval.metrics import error_rates
from granite_train.eval.report import (
    EvalResult,
    read_results_json,
    results_to_markdown,
    write_results_json,
)


def make_results() -> list[EvalResult]:
    metrics = error_rates(["the cat sat on the mat"], ["the cat sit on mat"])
    ls = EvalResult.from_metrics("librispeech_clean", metrics, audio_seconds=300.0, wall_seconds=1.5)
    ja = EvalResult(
        name="reazon_ja",
        num_utts=4,
        wer=None,
        cer=0.125,
        normalizer="none",
        normalizer_version=None,
        audio_seconds=20.0,
        wall_seconds=0.0,
    )
    return [ls, ja]


def test_from_metrics_and_rtfx():
    ls, ja = make_results()
    assert ls.num_utts == 1
    assert ls.wer == pytest.approx(2 / 6)
    assert ls.normalizer == "whisper_english" and ls.normalizer_version
    assert ls.rtfx == pytest.approx(200.0)
    assert ls.details["substitutions"] == 1 and "wer" not in ls.details
    assert ja.rtfx is None  # no wall time measured


def test_json_round_trip(tmp_path):
    results = make_results()
    path = write_results_json(results, tmp_path / "sub" / "eval.json")
    payload = json.loads(path.read_text())
    assert payload["results"][0]["rtfx"] == pytest.approx(200.0)
    assert payload["results"][1]["wer"] is None
    assert read_results_json(path) == results


def test_markdown_table():
    results = make_results()
    md = results_to_markdown(results)
    lines = md.strip().splitlines()
    assert lines[0] == "| dataset | utts | WER % | CER % | RTFx | normalizer |"
    assert len(lines) == 4
    version = results[0].normalizer_version
    assert lines[2] == f"| librispeech_clean | 1 | 33.33 | 22.73 | 200.0 | whisper_english ({version}) |"
    assert lines[3] == "| reazon_ja | 4 | n/a | 12.50 | n/a | none |"


def test_markdown_average_row():
    md = results_to_markdown(make_results(), average=True)
    last = md.strip().splitlines()[-1]
    cells = [c.strip() for c in last.strip("|").split("|")]
    assert cells[0] == "**average**"
    assert cells[1] == "5"
    assert cells[2] == "33.33"  # only the dataset with a WER
    assert cells[3] == f"{100 * (5 / 22 + 0.125) / 2:.2f}"
    assert cells[4] == f"{320 / 1.5:.1f}"


def test_markdown_round_trips_through_json(tmp_path):
    results = make_results()
    path = write_results_json(results, tmp_path / "eval.json")
    assert results_to_markdown(read_results_json(path)) == results_to_markdown(results)
