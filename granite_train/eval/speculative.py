"""CTC-draft speculative decoding of a GraniteSpeech model (RECIPE.md "Speculative decoding").

The encoder already runs to feed the projector, and its character CTC head gives a transcript for
free. Per utterance of a batch, one of three paths::

    encoder -> CTC logits -> greedy draft + max per-frame entropy (over the utterance's own frames)
      entropy < ctc_threshold             -> emit the draft as is                    (path "ctc")
      else retokenise the draft, one batched LLM forward over [prompt | audio | draft]
        every draft token p >= confidence -> emit the draft                          (path "verified")
        else autoregressive decoding, resumed after the longest prefix of the draft
             that greedy decoding would have produced                               (path "fallback")

* The verification forward computes the LM head at the draft positions only (plus the one after
  the draft), with logits divided by the LLM's ``logits_scaling`` as the published code does.
* Fallback resumes instead of restarting (the public notebook restarts from scratch): a draft token
  that is the verifier's argmax is exactly what greedy decoding emits at that step, so the prefix
  of agreeing tokens plus the verifier's own next token is greedy output already computed. If that
  next token is EOS the utterance is finished without a single autoregressive step. With beam
  search (``num_beams > 1``) the resumed prefix is the greedy one, not necessarily the beam's.
* Paths are per utterance inside one batch: each one's entropy ignores padding, the verification
  rows are right-padded with their own positions, and the fallback batch holds only the utterances
  that need it. A batch therefore gives each utterance the path and text it gets alone.
* Two deliberate differences from the leaderboard script, both options: an empty draft under the
  entropy gate is emitted as empty (``emit_empty_draft``: a confident "nothing was said" is the
  cheapest remedy for hallucination on silence; the script sends it to full decoding), and the
  draft is tokenised with a leading space (``draft_leading_space``: how this framework tokenises
  targets, :meth:`~granite_train.data.prompts.PromptBuilder.target_ids`; the script, for the
  released 4.0-1b, tokenises without one).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from transformers.generation import GenerationMixin

from granite_train.data.prompts import pad_id, pad_token_rows
from granite_train.eval.ctc_decode import greedy_ctc_decode
from granite_train.models.encoder import lengths_to_mask
from granite_train.text.vocab import CharVocab

__all__ = ["PATHS", "SpeculativeOutput", "SpeculativeSettings", "ctc_draft", "speculative_decode"]

PATHS = ("ctc", "verified", "fallback")


@dataclass
class SpeculativeSettings:
    """Thresholds of CTC-draft speculative decoding (the leaderboard's 0.7 / 0.2 by default).

    Attributes:
        ctc_threshold: emit the CTC draft unverified when its maximum per-frame entropy (nats, over
            the utterance's own frames) is under this. 0 turns the gate off.
        confidence_threshold: accept a verified draft when every draft token has at least this
            probability under the LLM (logits / ``logits_scaling``). Above 1 nothing is accepted.
        resume: fallback decoding continues after the longest greedy-agreeing prefix of the draft
            (False: from scratch, as the public notebook).
        draft_leading_space: tokenise the draft as ``" " + draft`` (how granite-train tokenises
            targets) instead of ``draft`` (the leaderboard script on the released 4.0-1b).
        emit_empty_draft: an empty draft under the entropy gate is emitted as an empty transcript
            (False: an empty draft always goes to full decoding, as the leaderboard script).
    """

    ctc_threshold: float = 0.7
    confidence_threshold: float = 0.2
    resume: bool = True
    draft_leading_space: bool = True
    emit_empty_draft: bool = True

    def __post_init__(self) -> None:
        if self.ctc_threshold < 0 or self.confidence_threshold < 0:
            raise ValueError(
                f"ctc_threshold and confidence_threshold must be >= 0, got {self.ctc_threshold} "
                f"and {self.confidence_threshold}"
            )

    @property
    def label(self) -> str:
        return f"speculative(ctc<{self.ctc_threshold:g}, p>={self.confidence_threshold:g})"


@dataclass
class SpeculativeOutput:
    """One batch's transcripts and how each was reached."""

    texts: list[str]
    paths: list[str]  # per utterance: ctc | verified | fallback
    entropies: list[float]  # max per-frame CTC entropy (nats) over the utterance's frames
    drafts: list[str]  # the greedy CTC transcripts
    resumed_tokens: list[int]  # fallback: tokens reused from verification (0 otherwise)
    generated_tokens: list[int]  # fallback: tokens decoded autoregressively (0 otherwise)
    details: dict[str, Any] = field(default_factory=dict)

    def path_counts(self) -> Counter[str]:
        return Counter(self.paths)


def ctc_draft(
    logits: torch.Tensor, lengths: torch.Tensor, vocab: CharVocab | None = None
) -> tuple[list[str], torch.Tensor]:
    """Greedy CTC transcripts and the max per-frame entropy (nats) of each utterance's own frames.

    ``logits`` (B, T, V), ``lengths`` (B,). Padded frames cannot raise an utterance's entropy (the
    public notebook takes the max over the padded length, so a batch changes the gate's decision).
    """
    log_probs = F.log_softmax(logits.float(), dim=-1)  # (B, T, V)
    entropy = -(log_probs.exp() * log_probs).sum(-1)  # (B, T)
    valid = lengths_to_mask(lengths.to(entropy.device), entropy.shape[1])
    max_entropy = entropy.masked_fill(~valid, float("-inf")).amax(dim=1)  # (B,)
    vocab = vocab if vocab is not None else CharVocab()  # the head's table: see CTCEncoder.ctc_vocab
    return greedy_ctc_decode(logits, lengths, vocab), max_entropy.cpu()


def _logits_scaling(speech) -> float:
    return float(getattr(speech.config.text_config, "logits_scaling", 1.0) or 1.0)


def _draft_ids(tokenizer, draft: str, leading_space: bool, limit: int) -> list[int]:
    text = draft.strip()
    if not text:
        return []
    return tokenizer((" " if leading_space else "") + text, add_special_tokens=False).input_ids[:limit]


@torch.no_grad()
def _verify(
    speech, prompts: list[list[int]], drafts: list[list[int]], audio, counts
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per row: (probability of each draft token, the verifier's argmax at each draft position and
    the one after it). One forward over right-padded [prompt | draft] rows."""
    device = audio.device
    rows = [p + d for p, d in zip(prompts, drafts)]
    ids, mask = (t.to(device) for t in pad_token_rows(rows, pad_id(speech.tokenizer)))
    embeds = speech._merge_audio(ids, audio, counts)
    hidden = speech.language_model(
        inputs_embeds=embeds, attention_mask=mask, use_cache=False
    ).last_hidden_state
    # position t predicts token t+1: the draft's tokens are predicted from len(prompt)-1 onwards
    row_index, positions = [], []
    for i, (p, d) in enumerate(zip(prompts, drafts)):
        row_index += [i] * (len(d) + 1)
        positions += range(len(p) - 1, len(p) + len(d))
    picked = hidden[torch.tensor(row_index, device=device), torch.tensor(positions, device=device)]
    probs = F.softmax(speech.hf.lm_head(picked).float() / _logits_scaling(speech), dim=-1)  # (N, V)
    out, start = [], 0
    for d in drafts:
        chunk = probs[start : start + len(d) + 1]
        draft = torch.tensor(d, dtype=torch.long, device=device)
        out.append((chunk[:-1].gather(1, draft[:, None]).squeeze(1).cpu(), chunk.argmax(-1).cpu()))
        start += len(d) + 1
    return out


def _resume_prefix(draft: list[int], argmax: torch.Tensor) -> list[int]:
    """The draft's longest prefix that greedy decoding produces, plus the verifier's next token."""
    agree = 0
    while agree < len(draft) and int(argmax[agree]) == draft[agree]:
        agree += 1
    return draft[:agree] + [int(argmax[agree])]


@torch.no_grad()
def _fallback(
    speech, prompts, prefixes, audio, counts, max_new_tokens: int, generate_kwargs
) -> list[list[int]]:
    """Autoregressive decoding of each row after its prompt and resumed prefix (left-padded batch)."""
    tokenizer = speech.tokenizer
    pad = pad_id(tokenizer)
    rows = [p + r for p, r in zip(prompts, prefixes)]
    ids, mask = (t.to(audio.device) for t in pad_token_rows(rows, pad, left=True))
    embeds = speech._merge_audio(ids, audio, counts)
    budget = max_new_tokens - min(len(r) for r in prefixes)
    kwargs = dict(do_sample=False, num_beams=1, pad_token_id=pad, eos_token_id=tokenizer.eos_token_id)
    kwargs.update(generate_kwargs)
    new = GenerationMixin.generate(
        speech.hf, inputs_embeds=embeds, attention_mask=mask, max_new_tokens=budget, **kwargs
    ).cpu()
    out = []
    for prefix, row in zip(prefixes, new.tolist()):
        out.append(row[: max_new_tokens - len(prefix)])
    return out


def _until_eos(ids: list[int], eos: int) -> list[int]:
    return ids[: ids.index(eos)] if eos in ids else ids


@torch.no_grad()
def speculative_decode(
    speech,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    features: torch.Tensor,
    feature_lengths: torch.Tensor,
    settings: SpeculativeSettings | None = None,
    *,
    max_new_tokens: int = 200,
    num_beams: int = 1,
    draft_token_ids: list[list[int]] | None = None,
) -> SpeculativeOutput:
    """Transcribe a batch with CTC-draft speculative decoding (see the module doc).

    Args:
        speech: a :class:`~granite_train.models.speech_llm.SpeechLLM` (ours, or a released
            GraniteSpeech folder loaded with :func:`~granite_train.models.speech_llm.load_speech_llm`).
        prompt_ids / prompt_mask: (B, P) left-padded chat prompts with the audio placeholders, as
            :class:`~granite_train.data.prompts.SpeechLLMCollator` makes them (an ASR instruction).
        features / feature_lengths: (B, F, 160) log-mel features and (B,) valid frames.
        settings: thresholds and options (:class:`SpeculativeSettings`).
        max_new_tokens: as in autoregressive decoding: no transcript is longer.
        num_beams: beam search in the fallback (1 = greedy).
        draft_token_ids: replace the retokenised CTC drafts by these LLM token ids (tests, or a
            draft from elsewhere); the entropy gate still reads the CTC head.
    """
    settings = settings or SpeculativeSettings()
    tokenizer, eos = speech.tokenizer, speech.tokenizer.eos_token_id
    device = features.device
    feature_lengths = feature_lengths.to(device)
    hidden, encoder_out = speech._encode(features, feature_lengths)
    drafts, entropies = ctc_draft(encoder_out.logits, encoder_out.lengths, speech.encoder.ctc_vocab())
    batch = len(drafts)
    prompts = [row[m.bool()].tolist() for row, m in zip(prompt_ids.cpu(), prompt_mask.cpu())]

    texts: list[str | None] = [None] * batch
    paths = ["fallback"] * batch
    resumed, generated = [0] * batch, [0] * batch
    for i, (draft, entropy) in enumerate(zip(drafts, entropies.tolist())):
        if entropy < settings.ctc_threshold and (draft.strip() or settings.emit_empty_draft):
            texts[i], paths[i] = draft.strip(), "ctc"

    todo = [i for i in range(batch) if texts[i] is None]
    draft_ids = {
        i: (
            list(draft_token_ids[i])[:max_new_tokens]
            if draft_token_ids is not None
            else _draft_ids(tokenizer, drafts[i], settings.draft_leading_space, max_new_tokens)
        )
        for i in todo
    }
    prefixes: dict[int, list[int]] = {}
    audio = counts = None
    if todo:
        index = torch.tensor(todo, device=device)
        # the projector runs for the utterances the gate did not settle only (windows are per
        # utterance, so a subset is exact); rows of `audio` follow `todo`
        audio, counts = speech.audio_embeds(features[index], feature_lengths[index], hidden[index])
        position = {i: k for k, i in enumerate(todo)}
        verdicts = _verify(speech, [prompts[i] for i in todo], [draft_ids[i] for i in todo], audio, counts)
        for i, (probs, argmax) in zip(todo, verdicts):
            ids = draft_ids[i]
            if ids and bool((probs >= settings.confidence_threshold).all()):
                texts[i] = tokenizer.decode(ids, skip_special_tokens=True).strip()
                paths[i] = "verified"
                continue
            prefix = _resume_prefix(ids, argmax) if settings.resume else []
            prefix = prefix[:max_new_tokens]
            if prefix and (prefix[-1] == eos or len(prefix) >= max_new_tokens):
                # greedy decoding's whole output is known: nothing left to generate
                texts[i] = tokenizer.decode(_until_eos(prefix, eos), skip_special_tokens=True).strip()
                resumed[i] = len(prefix)
                continue
            prefixes[i] = prefix

    if prefixes:
        rows = sorted(prefixes)
        index = torch.tensor([position[i] for i in rows], device=device)
        kwargs = {"num_beams": num_beams, "early_stopping": num_beams > 1} if num_beams > 1 else {}
        new = _fallback(
            speech,
            [prompts[i] for i in rows],
            [prefixes[i] for i in rows],
            audio[index],
            counts[index],
            max_new_tokens,
            kwargs,
        )
        for i, tokens in zip(rows, new):
            tokens = _until_eos(tokens, eos)
            texts[i] = tokenizer.decode(prefixes[i] + tokens, skip_special_tokens=True).strip()
            resumed[i], generated[i] = len(prefixes[i]), len(tokens)
    return SpeculativeOutput(
        texts=[t or "" for t in texts],
        paths=paths,
        entropies=entropies.tolist(),
        drafts=drafts,
        resumed_tokens=resumed,
        generated_tokens=generated,
    )
