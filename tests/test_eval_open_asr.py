"""The Open ASR leaderboard's protocol: its test-set list, its scoring (Whisper English normaliser,
empty references left out before decoding, kaldialign merge_compounds) and its RTFx timing."""

from __future__ import annotations

import kaldialign
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from whisper_normalizer.english import EnglishTextNormalizer

from granite_train.eval.metrics import error_rates
from granite_train.eval.run import EvalDataset, evaluate_ctc
from granite_train.recipes import CONFIG_DIR
from tests.scoring_pairs import sentence_pairs
from tests.test_eval_run import OracleEncoder, write_test_set

# shaped like the leaderboard's sets: LibriSpeech upper case, AMI fillers, TED-LIUM's ignore marker
ROWS = [
    ("ls_0", 1.0, "THE WHITE PAPER IS DUE", "plain"),
    ("ami_0", 1.2, "um", "plain"),  # normalises to nothing: left out before decoding
    ("ted_0", 1.4, "ignore time segment in scoring", "plain"),  # the TED-LIUM marker: left out
    ("ami_1", 1.6, "Yeah, we can't do that.", "plain"),
    ("gs_0", 1.8, "THE DATA BASE IS READY", "plain"),
    ("vox_0", 2.0, "the committee adopted the report", "plain"),
]


def _hypothesis(text: str) -> str:
    """What the oracle says: compounds joined or split the other way, one real error."""
    return (
        text.replace("WHITE PAPER", "whitepaper")
        .replace("DATA BASE", "database")
        .replace("can't", "can not")
        .replace("adopted", "adapted")
    )


@pytest.fixture(scope="module")
def leaderboard_like(tmp_path_factory):
    return write_test_set(tmp_path_factory.mktemp("oal"), "oal", rows=ROWS, num_shards=1)


def _run(path, **settings):
    spec = {"name": "oal", "path": str(path), "split": "test", "language": "en"}
    (result,) = evaluate_ctc(OracleEncoder(ROWS, corrupt=_hypothesis), [spec], progress=False, **settings)
    return result


def test_open_asr_protocol_on_leaderboard_shaped_parquet(leaderboard_like):
    result = _run(leaderboard_like, protocol="open_asr")
    d = result.details
    assert d["skipped"] == {"empty_normalized_reference": 2}
    assert result.num_utts == 4 and d["records"] == len(ROWS) == result.num_utts + 2
    # by hand: 5 + 6 + 5 + 5 = 21 reference words after normalisation ("can't" -> "can not"), the
    # joined compounds cost nothing, "adopted" -> "adapted" is the one substitution
    assert d["ref_words"] == 21
    assert (d["substitutions"], d["deletions"], d["insertions"]) == (1, 0, 0)
    assert result.wer == pytest.approx(1 / 21)
    assert d["protocol"] == "open_asr" and d["merge_compounds"] is True
    # RTFx over the batches' compute time only: loading and audio decoding are left out
    assert 0 < result.wall_seconds <= d["stream_wall_seconds"]


def test_default_protocol_scores_the_same_pairs_differently(leaderboard_like):
    result = _run(leaderboard_like)
    d = result.details
    assert not d["skipped"] and result.num_utts == len(ROWS)
    # jiwer without merging: each compound is a substitution + an insertion/deletion
    assert d["substitutions"] + d["deletions"] + d["insertions"] == 1 + 2 + 2
    assert d["num_empty_refs"] == 1  # "um" (the TED-LIUM marker is words to Whisper's normaliser)


def test_leaderboard_wer_on_hundreds_of_pairs():
    pairs = sentence_pairs(300, seed=1)
    refs, hyps = [r for r, _ in pairs], [h for _, h in pairs]
    ours = error_rates(refs, hyps, "whisper_english", merge_compounds=True)
    # the leaderboard's computation, spelled out with the libraries it uses
    norm = EnglishTextNormalizer()
    kept = [(norm(r).split(), norm(h).split()) for r, h in pairs]
    kept = [(r, h) for r, h in kept if r]
    ref = kaldialign.batch_error_rate(
        [tuple(r) for r, _ in kept], [tuple(h) for _, h in kept], merge_compounds=True
    )
    assert ours["wer"] == pytest.approx(ref["err_rate"], abs=1e-12)
    assert (ours["insertions"], ours["deletions"], ours["substitutions"]) == (
        ref["ins"],
        ref["del"],
        ref["sub"],
    )
    plain = error_rates(refs, hyps, "whisper_english")
    assert plain["wer"] > ours["wer"] + 0.05  # the pairs do exercise compound merging


def test_compounds_and_contractions_by_hand():
    assert error_rates(["white paper is good"], ["whitepaper is good"], merge_compounds=True)["wer"] == 0.0
    assert error_rates(["whitepaper is good"], ["white paper is good"], merge_compounds=True)["wer"] == 0.0
    assert error_rates(["white paper is good"], ["whitepaper is good"])["wer"] == pytest.approx(2 / 4)
    assert error_rates(["I can't go"], ["i can not go"], merge_compounds=True)["wer"] == 0.0
    assert error_rates(["they're here"], ["there here"], merge_compounds=True)["wer"] == pytest.approx(2 / 3)


def test_leaderboard_sets_config():
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(config_name="eval", overrides=["model_path=m", "eval_sets=open_asr_leaderboard"])
    OmegaConf.resolve(cfg)
    assert cfg.protocol == "open_asr"
    sets = [EvalDataset.from_mapping(OmegaConf.to_container(d)) for d in cfg.datasets]
    assert [d.source.name for d in sets] == [
        "ami",
        "earnings22",
        "gigaspeech",
        "librispeech_test_clean",
        "librispeech_test_other",
        "spgispeech",
        "tedlium",
        "voxpopuli",
    ]
    assert {d.source.path for d in sets} == {"hf-audio/open-asr-leaderboard"}
    assert {d.source.kind for d in sets} == {"hub"}
    with pytest.raises(ValueError, match="protocol"):
        _run("x", protocol="leaderboard")
