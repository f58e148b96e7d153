"""Training-only objectives of stage 2, beside the cross-entropy the model computes itself.

None of this is published, and none of it is exported: a new projector on a small or from-scratch
LLM learns to carry the audio much faster with them on a CPU budget (RESULTS.md, "Stage 2: why the
tiny model did not learn", trials 12-14). The published recipe keeps every weight at 0.

* :class:`AudioCTCHead` + :func:`audio_ctc_loss` (``model.loss.audio_ctc_weight``): each projected
  audio token predicts the LLM token spoken there, blank = the pad token;
* :func:`audio_embed_loss` (``model.loss.audio_embed_weight``): pulls each audio token to the LLM
  input embedding that head reads there, so the projector writes embeddings at their own scale;
* :func:`corrupt_target_inputs` (``model.loss.target_token_noise``): noisy teacher forcing.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from granite_train.speech_format import IGNORE_INDEX

INITIAL_TIED_SCALE = 24.0
"""The tied head's initial logit scale: a cosine of 1 against ~0.1 for other tokens is ~20 nats."""
INITIAL_BLANK_COSINE = 0.4
"""The tied head's blank starts as the logit of a cosine of 0.4 (centred SmolLM2 rows: sd 0.10)."""


class AudioCTCHead(nn.Module):
    """CTC head on the projected audio tokens: a LayerNorm (no affine) and a Linear to the LLM
    vocabulary or, ``tied_to`` given, a scaled cosine against the LLM's own input embeddings.

    The LayerNorm (the cosine, tied) keeps it blind to the audio tokens' scale, which it leaves to
    the LLM. The tied form has no (V, D) matrix of its own (28 M parameters over a 49k vocabulary
    at width 576, ten times the trainable set of a LoRA recipe): an audio token is read as the
    token whose embedding points its way, both centred on the mean embedding
    (:meth:`reading_table`), which is what a frozen pretrained LLM reads. Only a temperature and a
    per-token bias train; the table is a constant here (``tied_to`` returns it; it is not a
    parameter of this head, so it is neither trained nor saved twice). In the tied form the blank
    (``blank``, the pad token) is no token to read: its logit is its bias alone, and
    :func:`audio_embed_loss` pulls blank audio tokens to zero, which a frozen LLM's attention
    reads as nothing (a zero input has zero keys and values), rather than to the pad embedding,
    which for an instruct LLM is its end-of-turn marker. The tied losses read only the tokens
    heard in training targets so far (``heard``, a growing set kept with the checkpoint): English
    transcripts use a few thousand of SmolLM2's 49k tokens, and the head's cost follows that.
    """

    def __init__(
        self,
        width: int,
        vocab_size: int,
        tied_to: Callable[[], torch.Tensor] | None = None,
        blank: int | None = None,
    ):
        super().__init__()
        if tied_to is not None and blank is None:
            raise ValueError("a tied audio-CTC head needs the blank (pad) token id")
        self._table = tied_to
        self.blank = blank
        if tied_to is None:
            self.norm = nn.LayerNorm(width, elementwise_affine=False)
            self.proj = nn.Linear(width, vocab_size)
        else:
            self.norm = self.proj = None
            # cosine logits in [-1, 1] need a sharp temperature for a many-way softmax
            # shape (1,), not a scalar: FSDP2 shards parameters along a dimension
            self.log_scale = nn.Parameter(torch.tensor([math.log(INITIAL_TIED_SCALE)]))
            # the blank has no row: it wins where no token reads with a cosine above
            # INITIAL_BLANK_COSINE (with bias 0, one of thousands of random cosines always beats it,
            # and at an Adam LR of 1e-3 a bias needs ~10^4 steps to climb there)
            bias = torch.zeros(vocab_size)
            bias[blank] = INITIAL_BLANK_COSINE * INITIAL_TIED_SCALE
            self.bias = nn.Parameter(bias)
            heard = torch.zeros(vocab_size, dtype=torch.bool)
            heard[blank] = True
            self.register_buffer("heard", heard)

    @property
    def tied(self) -> bool:
        return self.proj is None

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        key = prefix + "log_scale"
        if key in state_dict and state_dict[key].dim() == 0:  # checkpoints written before (1,)
            state_dict[key] = state_dict[key].reshape(1)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(self, audio: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
        """Logits over the vocabulary, or (tied head) over the token ids ``rows`` only."""
        if self.proj is not None:
            return self.proj(self.norm(audio))
        table, center = self.reading_table()
        bias = self.bias
        if rows is not None:
            table, bias = table[rows], bias[rows]
        direction = F.normalize(audio.float() - center, dim=-1)
        return self.log_scale.exp() * (direction @ table.T) + bias

    def reading_table(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(V, D) the unit rows the tied head reads, the blank's zero, and the (D,) mean embedding
        they are centred on.

        Pretrained embeddings share a large common direction (SmolLM2: mean pairwise cosine 0.44,
        the mean vector 2/3 of a row's norm), which would leave every token's cosine near the
        same value; centred, the rows are nearly orthogonal (mean cosine 0.0001, sd 0.10), and an
        audio token equal to row i reads as token i with cosine 1."""
        source = self._table()
        key = (source.data_ptr(), source._version, source.device, self.bias.shape[0])
        if getattr(self, "_reading_key", None) != key:  # a frozen LLM's table: computed once
            embeddings = source.detach()[: self.bias.shape[0]].float()
            center = embeddings.mean(0)
            table = F.normalize(embeddings - center, dim=-1)
            table[self.blank] = 0.0
            self._reading, self._reading_key = (table, center), key
        return self._reading

    def hear(self, tokens: torch.Tensor) -> torch.Tensor:
        """Adds ``tokens`` to the heard set; returns the set's ids (sorted, blank included)."""
        self.heard[tokens.to(self.heard.device)] = True
        return self.heard.nonzero().squeeze(1)


def _real_audio(audio: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """The (sum(counts), D) real audio tokens of a padded (B, Q, D) batch, in order."""
    keep = torch.arange(audio.shape[1], device=audio.device)[None, :] < counts[:, None].to(audio.device)
    return audio[keep]


def audio_rms(audio: torch.Tensor, counts: torch.Tensor) -> float | None:
    """Root mean square of the real audio tokens (logged against the text embeddings' scale)."""
    real = _real_audio(audio.detach(), counts)
    return float(real.float().pow(2).mean().sqrt()) if real.numel() else None


def audio_ctc_loss(
    audio: torch.Tensor,
    counts: torch.Tensor,
    labels: torch.Tensor,
    head: AudioCTCHead,
    blank: int | None,
) -> tuple[torch.Tensor | None, int]:
    """Mean per-token CTC of ``head`` on the audio tokens (B, Q, D) against each row's targets
    (its labelled tokens but the final EOS); ``blank`` is the tokenizer's pad token.

    Rows whose targets cannot be aligned to their audio tokens (more tokens, counting a blank
    between repeats, than audio tokens) are left out and counted. Returns (loss or None if no
    row is left, dropped).
    """
    if blank is None:
        raise ValueError("the audio-token CTC uses the pad token as its blank; the tokenizer has none")
    targets = [row[row != IGNORE_INDEX][:-1] for row in labels]
    target_lengths = torch.tensor([len(t) for t in targets])
    # a CTC path needs a frame per token plus a blank between equal neighbours
    needed = torch.tensor([len(t) + int((t[1:] == t[:-1]).sum()) for t in targets])
    counts = counts.cpu()
    keep = (needed <= counts) & (target_lengths > 0)
    dropped = int((~keep).sum())
    if not bool(keep.any()):
        return None, dropped
    rows = keep.nonzero().squeeze(1)
    flat = torch.cat([targets[i] for i in rows.tolist()]).to(audio.device)
    if head.tied:  # over the tokens heard so far: targets and blank renumbered into that set
        ids = head.hear(flat)
        position = torch.full_like(head.heard, -1, dtype=torch.long)
        position[ids] = torch.arange(len(ids), device=position.device)
        logits = head(audio[rows.to(audio.device)], rows=ids).float()
        flat, blank = position[flat], int(position[blank])
    else:
        logits = head(audio[rows.to(audio.device)]).float()
    log_probs = logits.log_softmax(-1).transpose(0, 1)  # (Q, B, V)
    loss = F.ctc_loss(
        log_probs,
        flat,
        counts[rows],
        target_lengths[rows],
        blank=blank,
        reduction="sum",
        zero_infinity=True,
    )
    return loss / target_lengths[rows].sum().clamp_min(1).to(loss.device), dropped


def audio_embed_loss(
    audio: torch.Tensor, counts: torch.Tensor, head: AudioCTCHead, embeddings: torch.Tensor
) -> torch.Tensor:
    """Squared distance of each real audio token to the LLM input embedding ``head`` reads there
    (posterior-weighted, so mostly the blank = pad embedding between tokens), relative to the
    embeddings' mean squared norm.

    It makes the projector write what a copy-pretrained LLM reads: token embeddings among pads, at
    the embeddings' scale. Without it the audio tokens grow to ~25x the embeddings' RMS, which
    drowns the attention outputs at those positions in the residual stream and slows the LLM's
    reading (RESULTS.md, trial 12). Gradient reaches the projector only: the posterior and the
    embedding table (``embeddings``, (V, D)) are constants.
    """
    real = _real_audio(audio, counts).float()
    with torch.no_grad():
        table = embeddings.float()
        if head.tied:  # the heard tokens; blank reads as silence: zero, not the pad embedding
            ids = head.heard.nonzero().squeeze(1)
            reads = table[ids].clone()
            reads[ids == head.blank] = 0.0
            target = head(real, rows=ids).float().softmax(-1) @ reads
        else:
            probs = head(real).float().softmax(-1)
            width = min(probs.shape[-1], table.shape[0])
            target = probs[:, :width] @ table[:width]
        scale = table.pow(2).sum(-1).mean().clamp_min(1e-12)
    return (real - target).pow(2).sum(-1).mean() / scale


def corrupt_target_inputs(
    input_ids: torch.Tensor, labels: torch.Tensor, rate: float, replacements: torch.Tensor
) -> torch.Tensor:
    """``input_ids`` with each labelled (target) token replaced, with probability ``rate``, by one
    drawn uniformly from ``replacements``; prompt, audio and padding positions stay.

    The labels keep the true tokens, so the model still learns to predict them, but from a
    teacher-forced prefix it cannot fully trust. A small LLM trained in full otherwise learns the
    training transcripts by heart and predicts from the prefix instead of reading the audio
    (RESULTS.md, trial 14). Draws from the global torch RNG (seeded per step by the training loop,
    so resume stays exact).
    """
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"target token noise must be in [0, 1), got {rate}")
    if rate == 0.0:
        return input_ids
    hit = (labels != IGNORE_INDEX) & (torch.rand(labels.shape, device=labels.device) < rate)
    picks = replacements.to(input_ids.device)[
        torch.randint(len(replacements), labels.shape, device=labels.device)
    ]
    return torch.where(hit, picks, input_ids)


__all__ = ["AudioCTCHead", "audio_ctc_loss", "audio_embed_loss", "audio_rms", "corrupt_target_inputs"]
