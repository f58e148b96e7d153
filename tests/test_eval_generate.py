"""Generation-based evaluation of a speech LLM: WER, BLEU, keyword tables, padding invariance, CLI."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from datasets import Features, List, Value

from granite_train.cli import main
from granite_train.eval.generate import (
    SpeechLLMLoadError,
    bleu_tokenizer,
    evaluate_speech_llm,
    is_speech_llm_folder,
    load_speech_llm_checked,
)
from granite_train.eval.metrics import error_rates
from granite_train.eval.report import read_results_json
from granite_train.models import CTCEncoder, encoder_config
from granite_train.models.speech_llm import assemble_speech_llm
from granite_train.models.tiny_llm import build_tiny_llm
from tests.corpus import FEATURES, audio_bytes, speechlike, write_parquet

WORDS = "zero one two three four five six seven eight nine the speech into a written format".split()
# close durations: one duration bucket, so the utterances share batches (with padding)
ROWS = [
    ("u0", 1.0, "one two"),
    ("u1", 1.06, "three four five"),
    ("u2", 1.12, "six"),
    ("u3", 1.18, "seven eight"),
]
MAX_NEW = 6


def _texts() -> list[str]:
    g = torch.Generator().manual_seed(0)
    return [" ".join(WORDS[i] for i in torch.randint(len(WORDS), (6,), generator=g)) for _ in range(40)]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("gen")
    # 5x the default weight scale: a default random LLM repeats one token whatever the audio
    llm = build_tiny_llm(root / "llm", _texts(), preset="micro", vocab_size=300, initializer_range=0.1)
    torch.manual_seed(0)
    encoder = CTCEncoder(encoder_config("tiny", num_layers=2, hidden_dim=64, num_heads=4, dim_head=16)).eval()
    speech = assemble_speech_llm(
        encoder, llm, projector={"hidden_size": 64, "num_attention_heads": 4, "intermediate_size": 128}
    )
    out = root / "speech_llm_hf"
    speech.hf.save_pretrained(out)
    speech.tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def speech(model_dir):
    return load_speech_llm_checked(model_dir).eval()


def _write_set(root: Path, name: str, rows, **extra_columns) -> Path:
    records = []
    for k, (i, sec, text) in enumerate(rows):
        rec = {"id": i, "audio": {"bytes": audio_bytes(speechlike(sec, seed=k)), "path": None}, "text": text}
        rec.update({col: values[k] for col, values in extra_columns.items()})
        records.append(rec)
    if not extra_columns:
        write_parquet(root / name / "test-00000.parquet", records)
        return root / name
    kinds = {"keywords": List(Value("string")), "bias_words": List(Value("string"))}
    features = Features({**FEATURES, **{c: kinds.get(c, Value("string")) for c in extra_columns}})
    (root / name).mkdir(parents=True, exist_ok=True)
    pq.write_table(
        pa.Table.from_pylist(records, schema=features.arrow_schema), root / name / "test-00000.parquet"
    )
    return root / name


@pytest.fixture(scope="module")
def asr_set(tmp_path_factory) -> Path:
    return _write_set(tmp_path_factory.mktemp("sets"), "asr", ROWS)


def _spec(path: Path, name: str = "mini", **kw) -> dict:
    return {"name": name, "path": str(path), "split": "test", "language": "en", **kw}


def _eval(speech, datasets, **kw):
    return evaluate_speech_llm(speech, datasets, max_new_tokens=MAX_NEW, progress=False, **kw)


def _hyps(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_wer_matches_hypotheses_and_batching_is_invariant(speech, asr_set, tmp_path):
    (batched,) = _eval(speech, [_spec(asr_set)], hypotheses_path=tmp_path / "b.jsonl")
    assert batched.details["batches"] < len(ROWS)  # really batched
    rows = _hyps(tmp_path / "b.jsonl")
    assert [r["id"] for r in rows] == [f"mini/{i}" for i, *_ in ROWS]
    again = error_rates([r["reference"] for r in rows], [r["hypothesis"] for r in rows], "whisper_english")
    assert batched.wer == again["wer"] and batched.cer == again["cer"]
    assert batched.normalizer == "whisper_english" and batched.num_utts == len(ROWS) and batched.rtfx > 0
    assert batched.details["records"] == len(ROWS) and not batched.details["skipped"]
    assert all(r["hypothesis"] for r in rows)

    (single,) = _eval(speech, [_spec(asr_set)], batch_size=1, hypotheses_path=tmp_path / "s.jsonl")
    assert single.details["batches"] == len(ROWS)
    assert [r["hypothesis"] for r in _hyps(tmp_path / "s.jsonl")] == [r["hypothesis"] for r in rows]

    (beam1,) = _eval(speech, [_spec(asr_set)], num_beams=1, hypotheses_path=tmp_path / "g.jsonl")
    assert [r["hypothesis"] for r in _hyps(tmp_path / "g.jsonl")] == [r["hypothesis"] for r in rows]
    (beam2,) = _eval(speech, [_spec(asr_set)], num_beams=2)
    assert beam2.details["decoding"] == "beam_search(2)" and beam2.num_utts == len(ROWS)


def test_bleu_of_own_hypotheses_is_100(speech, asr_set, tmp_path):
    _eval(speech, [_spec(asr_set)], hypotheses_path=tmp_path / "h.jsonl")
    hyps = [r["hypothesis"] for r in _hyps(tmp_path / "h.jsonl")]
    # the AST prompt differs from the ASR one: decode once with it, then use those as references
    refs = [(i, sec, "placeholder") for i, sec, _ in ROWS]
    ast = _write_set(tmp_path, "ast", refs, task=["ast"] * len(ROWS))
    spec = _spec(ast, "ast_de", task="ast", target_language="de")
    _eval(speech, [spec], hypotheses_path=tmp_path / "a.jsonl")
    rows = _hyps(tmp_path / "a.jsonl")
    assert all("German" in r["instruction"] and r["task"] == "ast" for r in rows)
    translations = [r["hypothesis"] or "x" for r in rows]
    ast2 = _write_set(tmp_path, "ast2", [(i, sec, t) for (i, sec, _), t in zip(ROWS, translations)])
    (result,) = _eval(
        speech,
        [_spec(ast2, "ast_de", task="ast", target_language="de")],
        hypotheses_path=tmp_path / "b.jsonl",
    )
    scored = _hyps(tmp_path / "b.jsonl")
    import sacrebleu

    expected = sacrebleu.corpus_bleu([r["hypothesis"] for r in scored], [[r["reference"] for r in scored]])
    assert result.details["bleu"] == pytest.approx(expected.score)
    # identical texts score 100 once every sentence has 4-grams (BLEU is 0 without them)
    if all(len(r["hypothesis"].split()) >= 4 for r in rows):
        assert result.details["bleu"] == pytest.approx(100.0)
    assert result.wer is None and result.details["task"] == "ast" and result.details["bleu_tokenize"] == "13a"
    assert "tok:13a" in result.details["bleu_signature"]
    assert hyps  # the ASR pass ran too
    assert bleu_tokenizer("ja") == bleu_tokenizer("zh-CN") == "char" and bleu_tokenizer("de") == "13a"


def test_keyword_table_with_and_without(speech, tmp_path):
    # words, not digits: the Whisper normalizer turns "one two" into "12"
    rows = [
        (i, sec, t)
        for (i, sec, _), t in zip(ROWS, ["the speech", "written format into", "a", "speech written"])
    ]
    keywords = [["speech", "nine"], ["format"], [], ["written", "zero"]]
    kw = _write_set(
        tmp_path,
        "kw",
        rows,
        keywords=keywords,
        bias_words=[["speech"], ["format"], [], ["written"]],
        prompt_suffix=["Keywords: " + ", ".join(k) if k else "" for k in keywords],
    )
    results = _eval(
        speech, [_spec(kw, "kw", keywords_in_prompt="both")], hypotheses_path=tmp_path / "k.jsonl"
    )
    assert [r.name for r in results] == ["kw/without_keywords", "kw/with_keywords"]
    assert [r.details["keywords_in_prompt"] for r in results] == [False, True]
    rows = _hyps(tmp_path / "k.jsonl")
    with_kw = [r for r in rows if r["keywords_in_prompt"]]
    assert "Keywords: speech, nine" in with_kw[0]["instruction"]
    assert all("Keywords" not in r["instruction"] for r in rows if not r["keywords_in_prompt"])
    assert with_kw[0]["bias_words"] == ["speech"]
    for r in results:
        assert r.details["biasing"]["bias_ref_words"] == 3 and r.details["biasing"]["wer"] == pytest.approx(
            r.wer
        )
    from granite_train.eval.generate import generation_markdown

    md = generation_markdown(results)
    assert "### Keyword biasing: kw" in md and "| without keywords |" in md and "| with keywords |" in md
    assert "delta (with keywords - without keywords" in md


def _cli(monkeypatch, *args: str) -> None:
    monkeypatch.setattr(sys, "argv", list(sys.argv))
    main(list(args))


def test_cli_writes_results(model_dir, asr_set, tmp_path, monkeypatch, capsys):
    assert is_speech_llm_folder(model_dir) and not is_speech_llm_folder(tmp_path)
    out = tmp_path / "eval"
    datasets = f"[{{name: mini, path: '{asr_set}', split: test, language: en}}]"
    _cli(
        monkeypatch,
        "eval",
        f"model_path={model_dir}",
        f"datasets={datasets}",
        "device=cpu",
        f"max_new_tokens={MAX_NEW}",
        f"output_dir={out}",
        f"hydra.run.dir={tmp_path / 'hydra'}",
    )
    printed = capsys.readouterr().out
    assert (
        "| dataset | task | utts | WER % | CER % | BLEU | ins / ref word | > 2x ref length % | RTFx |"
        in printed
    )
    (result,) = read_results_json(out / "results.json")
    assert result.num_utts == len(ROWS) and result.details["decoding"] == "greedy"
    assert "| mini | asr | 4 |" in (out / "results.md").read_text()
    assert len((out / "hypotheses.jsonl").read_text().splitlines()) == len(ROWS)


def test_missing_or_corrupt_model_folder(model_dir, tmp_path):
    with pytest.raises(SpeechLLMLoadError, match="does not exist"):
        load_speech_llm_checked(tmp_path / "nope")
    bad_json = tmp_path / "bad_json"
    bad_json.mkdir()
    (bad_json / "config.json").write_text("{not json")
    with pytest.raises(SpeechLLMLoadError, match="not a readable JSON"):
        load_speech_llm_checked(bad_json)
    no_weights = tmp_path / "no_weights"
    no_weights.mkdir()
    (no_weights / "config.json").write_text((model_dir / "config.json").read_text())
    with pytest.raises(SpeechLLMLoadError, match="cannot load the speech LLM"):
        load_speech_llm_checked(no_weights)


def test_prompt_draft_from_the_ctc_head_equals_the_same_draft_from_a_column(speech, asr_set, tmp_path):
    """``prompt_draft=ctc`` rebuilds each prompt with the model's own greedy CTC transcript. Its
    drafts must be what the greedy-CTC evaluation of the same encoder writes, and its generations
    what a dataset whose ``draft`` column holds those transcripts gives through the collator."""
    from granite_train.eval.run import evaluate_ctc

    evaluate_ctc(speech.encoder, [_spec(asr_set)], progress=False, hypotheses_path=tmp_path / "ctc.jsonl")
    ctc = {r["id"]: r["hypothesis"] for r in _hyps(tmp_path / "ctc.jsonl")}
    assert len(ctc) == len(ROWS) and any(ctc.values())  # a random encoder still emits characters

    _eval(speech, [_spec(asr_set)], prompt_draft="ctc", hypotheses_path=tmp_path / "c.jsonl")
    from_head = _hyps(tmp_path / "c.jsonl")
    assert {r["id"]: r["prompt_draft"] for r in from_head} == {k: " ".join(v.split()) for k, v in ctc.items()}
    assert all(r["instruction"].endswith(f"Draft: {r['prompt_draft']}".rstrip()) for r in from_head)

    column = _write_set(tmp_path, "drafted", ROWS, draft=[ctc[f"mini/{i}"] for i, *_ in ROWS])
    _eval(speech, [_spec(column)], hypotheses_path=tmp_path / "d.jsonl")
    from_column = _hyps(tmp_path / "d.jsonl")
    assert [r["instruction"] for r in from_column] == [r["instruction"] for r in from_head]
    assert [r["hypothesis"] for r in from_column] == [r["hypothesis"] for r in from_head]

    # none: the column is ignored, the prompt is the plain ASR one
    _eval(speech, [_spec(column)], prompt_draft="none", hypotheses_path=tmp_path / "n.jsonl")
    plain = _hyps(tmp_path / "n.jsonl")
    assert all("Draft:" not in r["instruction"] and "prompt_draft" not in r for r in plain)
    with pytest.raises(ValueError, match="prompt_draft must be one of"):
        _eval(speech, [_spec(column)], prompt_draft="encoder")
