"""benchmarks/ctc_rescore_curve.py: each weight re-picks the candidates as decoding would, scored
against jiwer; the top-beam, CTC-alone and oracle rows; a file without candidates is refused."""

import json

import jiwer
import pytest

from tests.test_benchmarks_speculative import _load

# per utterance: the LLM's top beam is fluent and wrong, the CTC transcript is misspelt but aligned
ROWS = [
    {
        "reference": "the cat sat on the mat",
        "hypothesis": "",
        "ctc_draft": "the cat sat on the mad",
        "candidates": [
            {"text": "a dog ran in the park", "source": "beam 0", "ctc": -40.0, "llm": -3.0},
            {"text": "the cat sat on the mat", "source": "beam 1", "ctc": -6.0, "llm": -9.0},
            {"text": "the cat sat on the mad", "source": "ctc", "ctc": -5.0, "llm": -20.0},
        ],
    },
    {
        "reference": "one two three",
        "hypothesis": "",
        "ctc_draft": "won two three",
        "candidates": [
            {"text": "one two three", "source": "beam 0", "ctc": -4.0, "llm": -2.0},
            {"text": "won two three", "source": "ctc", "ctc": float("-inf"), "llm": -12.0},
        ],
    },
]


@pytest.fixture(scope="module")
def bench():
    return _load("ctc_rescore_curve")


def _wer(refs, hyps):
    return jiwer.wer(refs, hyps)


def test_each_weight_picks_as_decoding_and_scores_as_jiwer(bench, tmp_path):
    path = tmp_path / "hypotheses.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    assert (
        bench.main(
            [
                "--hypotheses",
                str(path),
                "--weights",
                "0",
                "0.5",
                "1",
                "--normalizer",
                "none",
                "--out",
                str(tmp_path / "c"),
            ]
        )
        == 0
    )
    table = {r["setting"]: r for r in json.loads((tmp_path / "c" / "curve.json").read_text())["rows"]}
    refs = [r["reference"] for r in ROWS]
    # by hand: w=0 -> the LLM's best (beam 0 twice); w=0.5 -> (-21.5, -7.5, -12.5) picks beam 1, then
    # beam 0 (the CTC transcript cannot align); w=1 -> the CTC transcript (-5), then beam 0
    expected = {
        "w = 0": ["a dog ran in the park", "one two three"],
        "w = 0.5": ["the cat sat on the mat", "one two three"],
        "w = 1": ["the cat sat on the mad", "one two three"],
        "LLM top beam (beam search alone)": ["a dog ran in the park", "one two three"],
        "CTC transcript alone": ["the cat sat on the mad", "won two three"],
        "oracle (fewest word errors of the candidates)": ["the cat sat on the mat", "one two three"],
    }
    for setting, hyps in expected.items():
        assert table[setting]["wer"] == pytest.approx(_wer(refs, hyps)), setting
    assert table["w = 1"]["ctc_chosen"] == 0.5
    assert (tmp_path / "c" / "curve.png").stat().st_size > 0
    assert "| w = 0.5 |" in (tmp_path / "c" / "curve.md").read_text()


def test_hypotheses_without_candidates_are_refused(bench, tmp_path):
    path = tmp_path / "plain.jsonl"
    path.write_text(json.dumps({"reference": "a", "hypothesis": "a"}) + "\n")
    with pytest.raises(SystemExit, match="decoding=rescore"):
        bench.main(["--hypotheses", str(path), "--out", str(tmp_path / "c")])
