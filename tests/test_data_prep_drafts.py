"""``python -m data_prep.drafts``: a corpus copied row for row with the encoder's draft attached."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest

from data_prep.drafts import main
from tests.corpus import audio_bytes, speechlike, write_parquet


def _corpus(root):
    rows = [
        {
            "id": f"u{i}",
            "audio": {"bytes": audio_bytes(speechlike(0.5, seed=i)), "path": None},
            "text": f"t {i}",
        }
        for i in range(5)
    ]
    write_parquet(root / "data" / "train-00000.parquet", rows[:3])
    write_parquet(root / "data" / "train-00001.parquet", rows[3:])
    (root / "README.md").write_text("card\n")
    return rows


def test_drafts_attached_by_id_and_missing_ones_counted(tmp_path, capsys):
    rows = _corpus(tmp_path / "c")
    hyps = tmp_path / "h.jsonl"
    # eval writes ids as "<dataset>/<id>"; u4 was skipped by the evaluation; one id matches no row
    lines = [{"id": f"corpus_train/u{i}", "hypothesis": f"draft {i}"} for i in range(4)]
    lines.append({"id": "corpus_train/zz", "hypothesis": "orphan"})
    hyps.write_text("".join(json.dumps(r) + "\n" for r in lines))
    out = tmp_path / "out"
    assert (
        main(
            [
                "--source",
                str(tmp_path / "c"),
                "--split",
                "train",
                "--hypotheses",
                str(hyps),
                "--out",
                str(out),
            ]
        )
        == 0
    )
    assert "5 rows, 1 without a draft (e.g. u4), 1 hypotheses matched no row" in capsys.readouterr().out
    written = pq.read_table(sorted((out / "data").glob("train-*.parquet"))).to_pylist()
    assert [r["id"] for r in written] == [r["id"] for r in rows]  # nothing dropped, order kept
    assert [r["draft"] for r in written] == ["draft 0", "draft 1", "draft 2", "draft 3", None]
    assert [r["audio"]["bytes"] for r in written] == [r["audio"]["bytes"] for r in rows]
    report = json.loads((out / "drafts-train.json").read_text())
    assert report["without_draft"] == 1 and report["without_draft_ids"] == ["u4"]
    assert (out / "README.md").read_text() == "card\n"


@pytest.mark.parametrize(
    "hyp_text, needle",
    [
        ("", "no hypotheses"),
        ("not json\n", "not an eval hypotheses row"),
        (None, "no train-"),
    ],
)
def test_drafts_refuse_bad_inputs(tmp_path, capsys, hyp_text, needle):
    if hyp_text is not None:
        _corpus(tmp_path / "c")
    hyps = tmp_path / "h.jsonl"
    hyps.write_text(hyp_text or "")
    assert (
        main(["--source", str(tmp_path / "c"), "--hypotheses", str(hyps), "--out", str(tmp_path / "o")]) == 2
    )
    assert needle in capsys.readouterr().err
