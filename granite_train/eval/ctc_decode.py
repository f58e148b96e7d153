"""Greedy (best-path) CTC decoding of a padded batch of encoder outputs."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import torch

from granite_train.text.vocab import BLANK_ID


class _Decoder(Protocol):
    def decode(self, ids: Sequence[int]) -> str: ...


def greedy_ctc_decode(
    logits: torch.Tensor,
    lengths: torch.Tensor | Sequence[int] | None,
    vocab: _Decoder,
    blank_id: int = BLANK_ID,
) -> list[str]:
    """Best-path transcripts of a batch: per-frame argmax, merge repeats, drop blanks, decode.

    Works on logits or log-probabilities alike (the argmax is the same). Frames at or past an
    utterance's length are padding and ignored. Argmax, repeat merging and masking run on the
    whole batch at once; only the final id -> text lookup is per utterance. Same result as
    :meth:`granite_train.text.vocab.CharVocab.ctc_greedy_decode` on each row's argmax path.

    Args:
        logits: ``(B, T, V)`` scores.
        lengths: ``(B,)`` valid frames per utterance; ``None`` means all ``T`` frames.
        vocab: anything with ``decode(ids) -> str`` that skips nothing but blanks, e.g.
            :class:`~granite_train.text.vocab.CharVocab`.
        blank_id: the CTC blank's id.
    """
    if logits.dim() != 3:
        raise ValueError(f"logits must be (B, T, V), got shape {tuple(logits.shape)}")
    batch, frames, _ = logits.shape
    if lengths is None:
        lengths = torch.full((batch,), frames, dtype=torch.long)
    lengths = torch.as_tensor(lengths, dtype=torch.long, device="cpu").reshape(-1)
    if lengths.numel() != batch:
        raise ValueError(f"{lengths.numel()} lengths for a batch of {batch}")
    if bool((lengths < 0).any()) or bool((lengths > frames).any()):
        raise ValueError(f"lengths must lie in [0, {frames}], got {lengths.tolist()}")

    ids = logits.detach().argmax(dim=-1).cpu()  # (B, T)
    valid = torch.arange(frames).unsqueeze(0) < lengths.unsqueeze(1)
    new_token = torch.ones_like(valid)
    new_token[:, 1:] = ids[:, 1:] != ids[:, :-1]
    keep = valid & new_token & (ids != blank_id)
    return [vocab.decode(row[mask].tolist()) for row, mask in zip(ids, keep)]
