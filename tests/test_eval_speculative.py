"""CTC-draft speculative decoding: acceptance, exact fallback, padding-free gating, eval + CLI."""

from __future__ import annotations

import math
import sys

import pytest
import torch

from granite_train.audio.features import LogMelFeatures
from granite_train.cli import main
from granite_train.data.prompts import PromptBuilder, PromptConfig
from granite_train.eval.ctc_decode import greedy_ctc_decode
from granite_train.eval.generate import evaluate_speech_llm
from granite_train.eval.report import read_results_json
from granite_train.eval.speculative import SpeculativeSettings, ctc_draft, speculative_decode
from granite_train.models import CTCEncoder, encoder_config
from granite_train.models.speech_llm import assemble_speech_llm
from granite_train.models.tiny_llm import build_tiny_llm
from granite_train.speech_format import audio_token_count
from granite_train.text.vocab import CharVocab
from tests.corpus import audio_bytes, speechlike, write_parquet

WORDS = "zero one two three four five six seven eight nine the speech into a written format".split()
SECONDS = (0.9, 1.6, 1.2, 2.3)  # different lengths: a padded batch
MAX_NEW = 8


@pytest.fixture(scope="module")
def speech(tmp_path_factory):
    root = tmp_path_factory.mktemp("spec")
    g = torch.Generator().manual_seed(0)
    texts = [" ".join(WORDS[i] for i in torch.randint(len(WORDS), (6,), generator=g)) for _ in range(40)]
    # 5x the default weight scale: a default random LLM repeats one token whatever the audio
    llm = build_tiny_llm(root / "llm", texts, preset="micro", vocab_size=300, initializer_range=0.1)
    torch.manual_seed(0)
    encoder = CTCEncoder(encoder_config("tiny", num_layers=2, hidden_dim=64, num_heads=4, dim_head=16)).eval()
    model = assemble_speech_llm(
        encoder, llm, projector={"hidden_size": 64, "num_attention_heads": 4, "intermediate_size": 128}
    )
    return model.eval()


ALL = tuple(range(len(SECONDS)))


def _batch(speech, which=ALL):
    """Left-padded ASR prompts and log-mel features of the utterances ``which`` (speech-like noise)."""
    prompts = PromptBuilder(speech.tokenizer, PromptConfig(vary_instructions=False))
    waves = [torch.from_numpy(speechlike(SECONDS[k], seed=k)) for k in which]
    lengths = torch.tensor([len(w) for w in waves])
    padded = torch.zeros(len(waves), int(lengths.max()))
    for i, w in enumerate(waves):
        padded[i, : len(w)] = w
    feats, feat_lengths = LogMelFeatures()(padded, lengths)
    rows = [prompts.prompt_ids(prompts.instruction({}), audio_token_count(len(w))) for w in waves]
    width = max(map(len, rows))
    pad = speech.tokenizer.pad_token_id
    ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
    return ids, mask, feats, feat_lengths


def _greedy_ids(speech, batch) -> list[list[int]]:
    out = speech.generate(*batch, max_new_tokens=MAX_NEW)
    eos, ids = speech.tokenizer.eos_token_id, []
    for row in out.tolist():
        ids.append(row[: row.index(eos)] if eos in row else row)
    return ids


def _texts(speech, ids) -> list[str]:
    return [speech.tokenizer.decode(r, skip_special_tokens=True).strip() for r in ids]


def _decode(speech, batch, **settings):
    return speculative_decode(speech, *batch, SpeculativeSettings(**settings), max_new_tokens=MAX_NEW)


def test_entropy_by_hand():
    vocab = 348
    uniform = torch.zeros(1, 3, vocab)
    peaked = torch.full((1, 3, vocab), -1e4)
    peaked[..., 5] = 0.0  # one symbol, certain: entropy 0, draft "\x05" merged to one char
    _, h_uniform = ctc_draft(uniform, torch.tensor([3]))
    drafts, h_peaked = ctc_draft(peaked, torch.tensor([3]))
    assert h_uniform.item() == pytest.approx(math.log(vocab), rel=1e-5)
    assert h_peaked.item() == pytest.approx(0.0, abs=1e-6) and drafts == [chr(5)]


def test_entropy_ignores_padding():
    torch.manual_seed(0)
    logits = torch.randn(2, 6, 348)
    logits[0, :3] = -1e4
    logits[0, :3, 0] = 0.0  # utterance 0: three certain blank frames, then padding of random logits
    _, batched = ctc_draft(logits, torch.tensor([3, 6]))
    _, alone = ctc_draft(logits[:1, :3], torch.tensor([3]))
    assert batched[0].item() == pytest.approx(alone[0].item(), abs=1e-6) == pytest.approx(0.0, abs=1e-6)
    # what the public notebook computes (max over the padded length) would have failed the gate
    _, padded = ctc_draft(logits[:1], torch.tensor([6]))
    assert padded.item() > 1.0


def test_greedy_draft_is_accepted_and_gives_the_same_text(speech):
    batch = _batch(speech)
    greedy = _greedy_ids(speech, batch)
    assert len(set(map(tuple, greedy))) > 1  # the outputs depend on the audio
    accepted = speculative_decode(
        speech,
        *batch,
        SpeculativeSettings(ctc_threshold=0.0, confidence_threshold=0.0),
        max_new_tokens=MAX_NEW,
        draft_token_ids=greedy,
    )
    assert accepted.paths == ["verified"] * len(SECONDS)
    assert accepted.texts == _texts(speech, greedy)
    # no token can reach p >= 1.5: the draft is rejected, yet it is greedy's own output, so the
    # verification alone finishes every utterance: no autoregressive step, the same text
    rejected = speculative_decode(
        speech,
        *batch,
        SpeculativeSettings(ctc_threshold=0.0, confidence_threshold=1.5),
        max_new_tokens=MAX_NEW,
        draft_token_ids=greedy,
    )
    assert rejected.paths == ["fallback"] * len(SECONDS)
    assert rejected.generated_tokens == [0] * len(SECONDS)
    assert rejected.texts == _texts(speech, greedy)


def test_wrong_draft_resumes_after_the_agreeing_prefix(speech):
    batch = _batch(speech)
    greedy = _greedy_ids(speech, batch)
    wrong, cut = [], []
    for ids in greedy:
        k = min(2, len(ids) - 1)
        bad = (ids[k] + 1) % 250 + 3
        wrong.append(ids[:k] + [bad] + ids[k + 1 :])
        cut.append(k)
    out = speculative_decode(
        speech,
        *batch,
        SpeculativeSettings(ctc_threshold=0.0, confidence_threshold=1.5),
        max_new_tokens=MAX_NEW,
        draft_token_ids=wrong,
    )
    assert out.texts == _texts(speech, greedy)
    # the k agreeing tokens + the verifier's own token at k are reused
    assert out.resumed_tokens == [k + 1 for k in cut]


@pytest.mark.parametrize("resume", [True, False])
def test_gate_off_and_impossible_confidence_equal_autoregressive(speech, resume):
    batch = _batch(speech)
    out = _decode(speech, batch, ctc_threshold=0.0, confidence_threshold=2.0, resume=resume)
    assert out.paths == ["fallback"] * len(SECONDS)
    assert out.texts == _texts(speech, _greedy_ids(speech, batch))
    if not resume:
        assert out.resumed_tokens == [0] * len(SECONDS)


def test_open_gate_emits_the_ctc_drafts(speech):
    batch = _batch(speech)
    out = _decode(speech, batch, ctc_threshold=100.0)
    assert out.paths == ["ctc"] * len(SECONDS)
    enc = speech.encoder(batch[2], batch[3])
    assert out.texts == [t.strip() for t in greedy_ctc_decode(enc.logits, enc.lengths, CharVocab())]


def test_a_batch_gives_each_utterance_its_path_alone(speech):
    batch = _batch(speech)
    alone = [_decode(speech, _batch(speech, [k]), ctc_threshold=0.0) for k in range(len(SECONDS))]
    entropies = sorted(a.entropies[0] for a in alone)
    # a threshold between the entropies: some utterances take the gate, the others do not
    threshold = (entropies[1] + entropies[2]) / 2
    together = _decode(speech, batch, ctc_threshold=threshold)
    alone = [_decode(speech, _batch(speech, [k]), ctc_threshold=threshold) for k in range(len(SECONDS))]
    assert together.entropies == pytest.approx([a.entropies[0] for a in alone], abs=1e-5)
    assert together.paths == [a.paths[0] for a in alone]
    assert {"ctc", "fallback"} <= set(together.paths)
    assert together.texts == [a.texts[0] for a in alone]


def test_thresholds_are_checked():
    with pytest.raises(ValueError, match="ctc_threshold"):
        SpeculativeSettings(ctc_threshold=-1.0)


@pytest.fixture(scope="module")
def model_dir(speech, tmp_path_factory):
    out = tmp_path_factory.mktemp("spec_model") / "speech_llm_hf"
    speech.hf.save_pretrained(out)
    speech.tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def asr_set(tmp_path_factory):
    root = tmp_path_factory.mktemp("spec_set")
    rows = [
        {
            "id": f"u{k}",
            "audio": {"bytes": audio_bytes(speechlike(s, seed=k)), "path": None},
            "text": "one two",
            "language": "en",
        }
        for k, s in enumerate(SECONDS)
    ]
    write_parquet(root / "test-00000.parquet", rows)
    return root


def test_evaluation_counts_paths_and_matches_autoregressive(speech, asr_set, tmp_path):
    spec = {"name": "mini", "path": str(asr_set), "split": "test", "language": "en"}
    (plain,) = evaluate_speech_llm(
        speech, [spec], max_new_tokens=MAX_NEW, progress=False, hypotheses_path=tmp_path / "ar.jsonl"
    )
    (spec_result,) = evaluate_speech_llm(
        speech,
        [spec],
        max_new_tokens=MAX_NEW,
        progress=False,
        hypotheses_path=tmp_path / "sd.jsonl",
        speculative=SpeculativeSettings(ctc_threshold=0.0, confidence_threshold=2.0),
    )
    assert plain.details["paths"] == {"autoregressive": len(SECONDS)}
    assert spec_result.details["paths"] == {"fallback": len(SECONDS)}
    assert spec_result.wer == plain.wer
    assert spec_result.details["decoding"].startswith("speculative(ctc<0, p>=2)")


def test_cli_speculative(model_dir, asr_set, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", list(sys.argv))
    out = tmp_path / "eval"
    main(
        [
            "eval",
            f"model_path={model_dir}",
            f"datasets=[{{name: mini, path: '{asr_set}', split: test, language: en}}]",
            "decoding=speculative",
            "speculative.ctc_threshold=100",
            "device=cpu",
            f"max_new_tokens={MAX_NEW}",
            f"output_dir={out}",
            f"hydra.run.dir={tmp_path / 'hydra'}",
        ]
    )
    (result,) = read_results_json(out / "results.json")
    assert result.details["paths"] == {"ctc": len(SECONDS)}
    assert result.details["speculative"]["ctc_threshold"] == 100
    assert "ctc 4" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["eval", f"model_path={model_dir}", "decoding=fast", f"hydra.run.dir={tmp_path / 'h2'}"])
