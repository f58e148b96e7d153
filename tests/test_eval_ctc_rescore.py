"""Joint CTC / LLM rescoring: each score against an independent reference, the choice, eval + CLI."""

from __future__ import annotations

import json
import math
import sys

import pytest
import torch
from transformers.generation import GenerationMixin

from granite_train.cli import main
from granite_train.eval.ctc_rescore import (
    RescoreSettings,
    ctc_log_likelihoods,
    llm_log_likelihoods,
    rescore_decode,
)
from granite_train.eval.generate import evaluate_speech_llm
from granite_train.eval.report import read_results_json
from granite_train.eval.settings import EvalSettings
from granite_train.eval.speculative import SpeculativeSettings
from granite_train.text.targets import CTCTargetBuilder

# the tiny speech LLM, its prompts and test set of the speculative-decoding tests
from tests.test_eval_speculative import MAX_NEW, SECONDS, _batch, asr_set, model_dir, speech  # noqa: F401


def _ctc_forward_by_hand(log_probs: torch.Tensor, target: list[int], blank: int = 0) -> float:
    """log P(target) under CTC: the forward algorithm over the blank-extended label sequence."""
    ext = [blank]
    for t in target:
        ext += [t, blank]
    alpha = [-math.inf] * len(ext)
    alpha[0] = float(log_probs[0, blank])
    if len(ext) > 1:
        alpha[1] = float(log_probs[0, ext[1]])
    for frame in range(1, log_probs.shape[0]):
        new = [-math.inf] * len(ext)
        for s, label in enumerate(ext):
            paths = [alpha[s]]
            if s >= 1:
                paths.append(alpha[s - 1])
            if s >= 2 and label != blank and label != ext[s - 2]:
                paths.append(alpha[s - 2])
            m = max(paths)
            if m > -math.inf:
                new[s] = m + math.log(sum(math.exp(p - m) for p in paths)) + float(log_probs[frame, label])
        alpha = new
    ends = [a for a in alpha[-2:] if a > -math.inf] if len(ext) > 1 else alpha
    if not ends:
        return -math.inf
    m = max(ends)
    return m + math.log(sum(math.exp(a - m) for a in ends))


def test_ctc_likelihood_of_two_frames_by_hand():
    # frames over {blank, a, b}: "a" is aligned as (a a), (a _) or (_ a)
    probs = torch.tensor([[[0.2, 0.5, 0.3], [0.4, 0.1, 0.5]]])
    got = ctc_log_likelihoods(probs.log(), torch.tensor([2]), [[1]])
    expected = 0.5 * 0.1 + 0.5 * 0.4 + 0.2 * 0.1
    assert got.item() == pytest.approx(math.log(expected), abs=1e-6)


def test_ctc_likelihood_matches_the_forward_algorithm_and_refuses_impossible_targets():
    g = torch.Generator().manual_seed(3)
    log_probs = torch.randn(3, 9, 6, generator=g).log_softmax(-1)
    lengths = torch.tensor([9, 6, 2])
    targets = [[1, 2, 2, 3], [], [4, 4]]  # the last needs 3 frames (a blank between repeats), has 2
    got = ctc_log_likelihoods(log_probs, lengths, targets)
    for i, target in enumerate(targets[:2]):
        assert got[i].item() == pytest.approx(
            _ctc_forward_by_hand(log_probs[i, : lengths[i]], target), abs=1e-4
        )
    assert got[2].item() == -math.inf


def _llm_reference(speech, prompt: list[int], continuation: list[int], feats, feat_length) -> float:  # noqa: F811
    """One utterance alone, no padding: the transformers model's own forward and logits scaling."""
    ids = torch.tensor([prompt + continuation])
    embeds = speech.embed_inputs(ids, feats[None], feat_length[None])
    logits = speech.hf(inputs_embeds=embeds, attention_mask=torch.ones_like(ids)).logits[0]
    logp = logits.float().log_softmax(-1)
    return sum(float(logp[len(prompt) - 1 + k, tok]) for k, tok in enumerate(continuation))


def test_llm_likelihood_of_padded_rows_equals_each_row_alone(speech):  # noqa: F811
    ids, mask, feats, lengths = _batch(speech)
    prompts = [row[m.bool()].tolist() for row, m in zip(ids, mask)]
    eos = speech.tokenizer.eos_token_id
    continuations = [[5, 9, eos], [eos], [7, 7, 7, 7, eos], [11, eos]]  # different lengths: padded
    with torch.no_grad():
        hidden = speech.encode(feats, lengths)
        audio, counts = speech.audio_embeds(feats, lengths, hidden)
        got = llm_log_likelihoods(speech, prompts, continuations, audio, counts)
        for i, c in enumerate(continuations):
            assert got[i].item() == pytest.approx(
                _llm_reference(speech, prompts[i], c, feats[i, : lengths[i]], lengths[i]), abs=1e-4
            )


def _beam_texts(speech, batch, k: int) -> list[list[str]]:  # noqa: F811
    """Each utterance's k beams from transformers' beam search, one utterance at a time."""
    ids, mask, feats, lengths = batch
    eos = speech.tokenizer.eos_token_id
    texts = []
    for i in range(len(ids)):
        row = ids[i][mask[i].bool()][None]
        embeds = speech.embed_inputs(row, feats[i : i + 1, : lengths[i]], lengths[i : i + 1])
        out = GenerationMixin.generate(
            speech.hf,
            inputs_embeds=embeds,
            attention_mask=torch.ones_like(row),
            max_new_tokens=MAX_NEW,
            num_beams=k,
            num_return_sequences=k,
            early_stopping=True,
            do_sample=False,
            pad_token_id=speech.tokenizer.pad_token_id,
            eos_token_id=eos,
        )
        beams = [r[: r.index(eos)] if eos in r else r for r in out.tolist()]
        texts.append([speech.tokenizer.decode(b, skip_special_tokens=True).strip() for b in beams])
    return texts


@pytest.mark.parametrize("weight", [0.0, 0.3, 1.0])
def test_the_choice_maximises_the_joint_score_over_the_beams_and_the_draft(speech, weight):  # noqa: F811
    batch = _batch(speech)
    with torch.no_grad():
        out = rescore_decode(
            speech, *batch, RescoreSettings(ctc_weight=weight, candidates=3), max_new_tokens=MAX_NEW
        )
        reference_beams = _beam_texts(speech, batch, 3)
    _, _, feats, lengths = batch
    builder = CTCTargetBuilder(speech.encoder.ctc_vocab(), lowercase=True, strip_punctuation=True)
    with torch.no_grad():
        enc = speech.encoder(feats, lengths)
    log_probs = enc.logits.float().log_softmax(-1)
    for i, cands in enumerate(out.candidates):
        texts = [c["text"] for c in cands]
        # every distinct beam of transformers' beam search, then the greedy CTC transcript
        assert [c["text"] for c in cands if c["source"].startswith("beam")] == list(
            dict.fromkeys(reference_beams[i])
        )
        assert out.drafts[i] in texts
        for c in cands:  # the CTC score against the forward algorithm on the utterance's own frames
            by_hand = _ctc_forward_by_hand(log_probs[i, : enc.lengths[i]], builder(c["text"]))
            assert c["ctc"] == pytest.approx(by_hand, abs=1e-3) or c["ctc"] == by_hand == -math.inf
        joint = [(1 - weight) * c["llm"] + (weight * c["ctc"] if weight else 0.0) for c in cands]
        assert out.texts[i] == texts[max(range(len(cands)), key=lambda k: (joint[k], cands[k]["llm"]))]
        assert out.chosen[i] == cands[texts.index(out.texts[i])]["source"]


def test_weight_one_prefers_what_the_audio_supports(speech):  # noqa: F811
    """w = 1 outputs the candidate of highest CTC likelihood: never a lower one than the draft's."""
    batch = _batch(speech)
    with torch.no_grad():
        out = rescore_decode(
            speech, *batch, RescoreSettings(ctc_weight=1.0, candidates=2), max_new_tokens=MAX_NEW
        )
    for i, cands in enumerate(out.candidates):
        draft = next(c for c in cands if c["text"] == out.drafts[i])
        chosen = next(c for c in cands if c["text"] == out.texts[i])
        assert chosen["ctc"] >= draft["ctc"]


def test_settings_are_checked():
    with pytest.raises(ValueError, match="ctc_weight"):
        RescoreSettings(ctc_weight=1.5)
    with pytest.raises(ValueError, match="candidates"):
        RescoreSettings(candidates=0)
    with pytest.raises(ValueError, match="speculative and rescore"):
        EvalSettings(speculative=SpeculativeSettings(), rescore=RescoreSettings())


def test_evaluation_writes_every_candidate_and_counts_the_winners(speech, asr_set, tmp_path):  # noqa: F811
    spec = {"name": "mini", "path": str(asr_set), "split": "test", "language": "en"}
    (result,) = evaluate_speech_llm(
        speech,
        [spec],
        max_new_tokens=MAX_NEW,
        progress=False,
        hypotheses_path=tmp_path / "h.jsonl",
        rescore=RescoreSettings(ctc_weight=1.0, candidates=2),
    )
    rows = [json.loads(line) for line in (tmp_path / "h.jsonl").read_text().splitlines()]
    assert len(rows) == len(SECONDS)
    for row in rows:
        best = max(row["candidates"], key=lambda c: (c["ctc"], c["llm"]))
        assert row["hypothesis"] == best["text"]
        assert row["path"] == ("rescored_ctc" if row["chosen"] == "ctc" else "rescored_beam")
    assert sum(result.details["paths"].values()) == len(SECONDS)
    assert result.details["decoding"] == "ctc_rescore(w=1, 2 beams + CTC draft)"


def test_cli_rescore(model_dir, asr_set, tmp_path, monkeypatch, capsys):  # noqa: F811
    monkeypatch.setattr(sys, "argv", list(sys.argv))
    out = tmp_path / "eval"
    main(
        [
            "eval",
            f"model_path={model_dir}",
            f"datasets=[{{name: mini, path: '{asr_set}', split: test, language: en}}]",
            "decoding=rescore",
            "rescore.ctc_weight=0.5",
            "rescore.candidates=2",
            "device=cpu",
            f"max_new_tokens={MAX_NEW}",
            f"output_dir={out}",
            f"hydra.run.dir={tmp_path / 'hydra'}",
        ]
    )
    (result,) = read_results_json(out / "results.json")
    assert result.details["rescore"]["ctc_weight"] == 0.5
    assert result.details["speculative"] is None
    assert sum(result.details["paths"].values()) == len(SECONDS)
    assert "ctc_rescore(w=0.5, 2 beams + CTC draft)" in (out / "results.md").read_text()
    with pytest.raises(SystemExit):
        main(
            [
                "eval",
                f"model_path={model_dir}",
                "decoding=rescore",
                "rescore.ctc_weight=2",
                f"hydra.run.dir={tmp_path / 'h2'}",
            ]
        )
    assert "ctc_weight must be in [0, 1], got 2" in capsys.readouterr().err
