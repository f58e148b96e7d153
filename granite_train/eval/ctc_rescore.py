"""Joint CTC / LLM rescoring of a GraniteSpeech model's n-best (ESPnet's joint CTC-attention scoring).

A speech LLM can write a fluent sentence that is not what was said: a hallucination has a high
score under the LLM and a very low one under the encoder's CTC head, which has to align every
character to the audio. A CTC transcript with misspelt words is the opposite. Per utterance::

    candidates = the LLM's beam-search n-best  (+ the greedy CTC transcript, ``include_draft``)
    score(y)   = ctc_weight * log P_ctc(y | audio) + (1 - ctc_weight) * log P_llm(y | prompt, audio)
    output     = argmax over the candidates

* ``log P_ctc`` is the CTC log-likelihood of the candidate's characters (``torch.nn.functional
  .ctc_loss``, summed over all alignments) after the text normalisation the head was trained on
  (lowercase, punctuation as spaces: :class:`~granite_train.text.targets.CTCTargetBuilder`). A
  candidate that cannot be aligned (more characters than frames) scores ``-inf``.
* ``log P_llm`` is the teacher-forced log-probability of the candidate's tokens and EOS after the
  prompt, with the logits divided by the LLM's ``logits_scaling`` as generation does. Every
  candidate, the CTC one included, is scored by the same forward: the beam scores of generation
  are length-normalised and would not compare with a draft's.
* ``ctc_weight`` 0 picks the LLM's own best candidate, 1 the one the audio supports best. Each
  candidate's two scores are returned, so the whole curve over ``ctc_weight`` can be read from one
  pass (``benchmarks/ctc_rescore_curve.py``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from transformers.generation import GenerationMixin

from granite_train.data.prompts import pad_id, pad_token_rows
from granite_train.eval.speculative import _draft_ids, _logits_scaling, ctc_draft
from granite_train.text.targets import CTCTargetBuilder
from granite_train.text.vocab import BLANK_ID, CharVocab

__all__ = [
    "RescoreOutput",
    "RescoreSettings",
    "ctc_log_likelihoods",
    "llm_log_likelihoods",
    "pick_candidate",
    "rescore_decode",
]

_LOGIT_CHUNK = 512  # LM-head rows per chunk: 512 x a 49k vocabulary is ~100 MB of fp32 logits


@dataclass
class RescoreSettings:
    """Joint CTC / LLM rescoring of the n-best (see the module doc).

    Attributes:
        ctc_weight: weight of the CTC log-likelihood, in [0, 1]; the LLM's is ``1 - ctc_weight``.
            0.3 is the weight ESPnet's joint CTC-attention recipes decode with; it was fixed
            before any measurement here.
        candidates: beams of LLM beam search kept as candidates (its ``num_return_sequences``).
        include_draft: the greedy CTC transcript is a candidate too.
        lowercase / strip_punctuation: how a candidate is written for the CTC head (as its
            targets were in training: ``data.prepare`` / ``finetune ctc_lowercase``).
    """

    ctc_weight: float = 0.3
    candidates: int = 4
    include_draft: bool = True
    lowercase: bool = True
    strip_punctuation: bool = True

    def __post_init__(self) -> None:
        if not 0.0 <= self.ctc_weight <= 1.0:
            raise ValueError(f"rescore.ctc_weight must be in [0, 1], got {self.ctc_weight}")
        if self.candidates < 1:
            raise ValueError(f"rescore.candidates must be >= 1, got {self.candidates}")

    @property
    def label(self) -> str:
        draft = " + CTC draft" if self.include_draft else ""
        return f"ctc_rescore(w={self.ctc_weight:g}, {self.candidates} beams{draft})"


@dataclass
class RescoreOutput:
    """One batch's transcripts, and every candidate with its two scores."""

    texts: list[str]
    drafts: list[str]  # the greedy CTC transcripts
    chosen: list[str]  # per utterance: "beam <k>" or "ctc"
    candidates: list[list[dict[str, Any]]] = field(default_factory=list)  # text, source, ctc, llm


def ctc_log_likelihoods(
    log_probs: torch.Tensor, lengths: torch.Tensor, targets: list[list[int]]
) -> torch.Tensor:
    """``log P(target | frames)`` under CTC for each target (``-inf`` where it cannot align).

    ``log_probs`` (N, T, V) log-softmaxed CTC outputs, one row per target; ``lengths`` (N,) valid frames.
    """
    if not targets:
        return torch.zeros(0)
    flat = torch.tensor([i for t in targets for i in t], dtype=torch.long)
    target_lengths = torch.tensor([len(t) for t in targets], dtype=torch.long)
    nll = F.ctc_loss(
        log_probs.float().transpose(0, 1).cpu(),  # (T, N, V)
        flat,
        lengths.cpu().long(),
        target_lengths,
        blank=BLANK_ID,
        reduction="none",
        zero_infinity=False,
    )
    return -nll


@torch.no_grad()
def llm_log_likelihoods(
    speech, prompts: list[list[int]], continuations: list[list[int]], audio, counts
) -> torch.Tensor:
    """``log P(continuation | prompt, audio)`` per row: one forward over right-padded rows.

    ``audio`` / ``counts``: the projected audio of each row (rows of the same utterance repeat it).
    The continuation should end with EOS, so that a candidate that stops early pays for stopping.
    """
    device = audio.device
    rows = [p + c for p, c in zip(prompts, continuations)]
    ids, mask = (t.to(device) for t in pad_token_rows(rows, pad_id(speech.tokenizer)))
    embeds = speech._merge_audio(ids, audio, counts)
    hidden = speech.language_model(
        inputs_embeds=embeds, attention_mask=mask, use_cache=False
    ).last_hidden_state
    # position t predicts token t + 1: a continuation's tokens are predicted from len(prompt) - 1 on
    row_index, positions, tokens = [], [], []
    for i, (p, c) in enumerate(zip(prompts, continuations)):
        row_index += [i] * len(c)
        positions += range(len(p) - 1, len(p) - 1 + len(c))
        tokens += c
    picked = hidden[torch.tensor(row_index, device=device), torch.tensor(positions, device=device)]
    token_ids = torch.tensor(tokens, dtype=torch.long, device=device)
    scaling = _logits_scaling(speech)
    per_token = torch.empty(len(tokens), dtype=torch.float32)
    for start in range(0, len(tokens), _LOGIT_CHUNK):
        chunk = slice(start, start + _LOGIT_CHUNK)
        logp = F.log_softmax(speech.hf.lm_head(picked[chunk]).float() / scaling, dim=-1)
        per_token[chunk] = logp.gather(1, token_ids[chunk, None]).squeeze(1).cpu()
    sums = torch.zeros(len(rows), dtype=torch.float32)
    sums.index_add_(0, torch.tensor(row_index, dtype=torch.long), per_token)
    return sums


def _until_eos(ids: list[int], eos: int, pad: int) -> list[int]:
    out = []
    for i in ids:
        if i == eos:
            break
        out.append(i)
    while out and out[-1] == pad:  # a finished beam is padded (pad may equal eos)
        out.pop()
    return out


@torch.no_grad()
def rescore_decode(
    speech,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    features: torch.Tensor,
    feature_lengths: torch.Tensor,
    settings: RescoreSettings | None = None,
    *,
    max_new_tokens: int = 200,
) -> RescoreOutput:
    """Transcribe a batch: the LLM's n-best and the CTC draft, rescored jointly (see the module doc).

    Args:
        speech: a :class:`~granite_train.models.speech_llm.SpeechLLM`.
        prompt_ids / prompt_mask: (B, P) left-padded chat prompts with the audio placeholders.
        features / feature_lengths: (B, F, 160) log-mel features and (B,) valid frames.
        settings: :class:`RescoreSettings`.
        max_new_tokens: the generation limit of each beam.
    """
    settings = settings or RescoreSettings()
    tokenizer = speech.tokenizer
    eos, pad = tokenizer.eos_token_id, pad_id(tokenizer)
    device = features.device
    feature_lengths = feature_lengths.to(device)
    hidden, encoder_out = speech._encode(features, feature_lengths)
    vocab: CharVocab = speech.encoder.ctc_vocab()
    drafts, _ = ctc_draft(encoder_out.logits, encoder_out.lengths, vocab)
    drafts = [" ".join(d.split()) for d in drafts]
    audio, counts = speech.audio_embeds(features, feature_lengths, hidden)
    batch = len(drafts)

    embeds = speech._merge_audio(prompt_ids.to(device), audio, counts)
    k = settings.candidates
    beams = GenerationMixin.generate(
        speech.hf,
        inputs_embeds=embeds,
        attention_mask=prompt_mask.to(device),
        max_new_tokens=max_new_tokens,
        do_sample=False,
        num_beams=k,
        num_return_sequences=k,
        early_stopping=k > 1,
        pad_token_id=pad,
        eos_token_id=eos,
    ).cpu()

    # the candidates of each utterance, duplicates (same text) once
    cands: list[list[dict[str, Any]]] = [[] for _ in range(batch)]
    for row, ids in enumerate(beams.tolist()):
        i, beam = divmod(row, k)
        tokens = _until_eos(ids, eos, pad)
        text = tokenizer.decode(tokens, skip_special_tokens=True).strip()
        if all(c["text"] != text for c in cands[i]):
            cands[i].append({"text": text, "source": f"beam {beam}", "tokens": tokens})
    if settings.include_draft:
        for i, draft in enumerate(drafts):
            if all(c["text"] != draft for c in cands[i]):
                tokens = _draft_ids(tokenizer, draft, True, max_new_tokens)
                cands[i].append({"text": draft, "source": "ctc", "tokens": tokens})

    flat = [(i, c) for i in range(batch) for c in cands[i]]
    owner = torch.tensor([i for i, _ in flat], dtype=torch.long)
    prompts = [row[m.bool()].tolist() for row, m in zip(prompt_ids.cpu(), prompt_mask.cpu())]
    llm = llm_log_likelihoods(
        speech,
        [prompts[i] for i, _ in flat],
        [c["tokens"] + [eos] for _, c in flat],
        audio[owner.to(device)],
        counts[owner.to(counts.device)],
    )
    builder = CTCTargetBuilder(
        vocab, lowercase=settings.lowercase, strip_punctuation=settings.strip_punctuation
    )
    log_probs = F.log_softmax(encoder_out.logits.float(), dim=-1)
    ctc = ctc_log_likelihoods(
        log_probs[owner.to(log_probs.device)],
        encoder_out.lengths.to(log_probs.device)[owner.to(log_probs.device)],
        [builder(c["text"]) for _, c in flat],
    )

    for (_, c), c_score, l_score in zip(flat, ctc.tolist(), llm.tolist()):
        c["ctc"], c["llm"] = c_score, l_score
        del c["tokens"]
    picks = [pick_candidate(options, settings.ctc_weight) for options in cands]
    return RescoreOutput(
        texts=[p["text"] for p in picks],
        drafts=drafts,
        chosen=[p["source"] for p in picks],
        candidates=cands,
    )


def pick_candidate(candidates: list[dict[str, Any]], ctc_weight: float) -> dict[str, Any]:
    """The candidate (a mapping with ``ctc`` and ``llm`` log-likelihoods) of highest joint score.

    0 * -inf is nan, so a weight of 0 ignores the CTC score; where no candidate aligns (every CTC
    score -inf) the LLM's score decides.
    """

    def joint(c: Mapping[str, Any]) -> tuple[float, float]:
        ctc = ctc_weight * c["ctc"] if ctc_weight > 0 else 0.0
        return (1 - ctc_weight) * c["llm"] + ctc, c["llm"]

    return max(candidates, key=joint)
