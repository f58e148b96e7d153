"""Self-conditioned CTC loss: 0.8 x final-layer CTC + 0.2 x mid-layer CTC (shared/RECIPE.md, Encoder)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["CTCLossOutput", "SelfConditionedCTCLoss", "ctc_required_frames"]


@dataclass
class CTCLossOutput:
    """Result of :class:`SelfConditionedCTCLoss`."""

    loss: torch.Tensor
    """Scalar to backpropagate: final_weight * final_loss + mid_weight * mid_loss."""
    final_loss: torch.Tensor
    """Mean per-utterance CTC negative log-likelihood of the final logits (kept utterances)."""
    mid_loss: torch.Tensor | None
    """The same for the mid-layer logits; None when no mid logits were given."""
    num_dropped: int
    """Utterances left out because their targets need more frames than they have."""
    num_utts: int
    """Utterances in the batch (kept + dropped)."""
    all_dropped: bool
    """True when every utterance was dropped: ``loss`` is then a zero still connected to the logits."""


def ctc_required_frames(targets: torch.Tensor, target_lengths: torch.Tensor) -> torch.Tensor:
    """(B, S) padded targets, (B,) lengths -> (B,) minimum frames a CTC alignment needs.

    That is the target length plus one blank between each pair of equal adjacent labels.
    """
    if targets.shape[1] < 2:
        return target_lengths.clone()
    pos = torch.arange(1, targets.shape[1], device=targets.device)
    repeats = (targets[:, 1:] == targets[:, :-1]) & (pos[None, :] < target_lengths[:, None])
    return target_lengths + repeats.sum(dim=1)


def _pad_targets(targets: torch.Tensor, target_lengths: torch.Tensor) -> torch.Tensor:
    """Concatenated 1-D targets -> (B, S_max) padded with 0."""
    rows = torch.split(targets, target_lengths.tolist())
    return nn.utils.rnn.pad_sequence(list(rows), batch_first=True, padding_value=0)


class SelfConditionedCTCLoss(nn.Module):
    """CTC on final and mid-layer logits, in fp32, dropping utterances CTC cannot align.

    Each head's loss is torch's ``ctc_loss`` summed over an utterance (``reduction="none"``), then
    averaged over the kept utterances. An utterance is dropped (and counted) when
    ``len(target) + adjacent repeats > frames``; if all are, the loss is ``0 * logits.sum()`` so that
    every rank still runs backward through the same graph (DDP), and ``all_dropped`` is set.

    Args:
        final_weight: weight of the final-layer loss.
        mid_weight: weight of the mid-layer (self-conditioning) loss.
        blank: blank label index.
    """

    def __init__(self, final_weight: float = 0.8, mid_weight: float = 0.2, blank: int = 0):
        super().__init__()
        self.final_weight = final_weight
        self.mid_weight = mid_weight
        self.blank = blank

    def _head_loss(self, logits, logit_lengths, targets, target_lengths) -> torch.Tensor:
        with torch.autocast(device_type=logits.device.type, enabled=False):
            log_probs = F.log_softmax(logits.float(), dim=-1).transpose(0, 1)  # (B, T, V) -> (T, B, V)
            per_utt = F.ctc_loss(
                log_probs,
                targets,
                logit_lengths,
                target_lengths,
                blank=self.blank,
                reduction="none",
                zero_infinity=False,
            )
        return per_utt.mean()

    def forward(
        self,
        logits: torch.Tensor,
        logit_lengths: torch.Tensor,
        targets: torch.Tensor,
        target_lengths: torch.Tensor,
        mid_logits: torch.Tensor | None = None,
    ) -> CTCLossOutput:
        """logits, mid_logits (B, T, V); logit_lengths (B,); targets (B, S) padded or (sum S,) concatenated;
        target_lengths (B,)."""
        num_utts = logits.shape[0]
        target_lengths = target_lengths.to(torch.long)
        if targets.dim() == 1:
            targets = _pad_targets(targets, target_lengths.cpu())
        targets = targets.to(torch.long)
        logit_lengths = logit_lengths.to(torch.long)

        need = ctc_required_frames(targets, target_lengths.to(targets.device))
        keep = (need.to(logit_lengths.device) <= logit_lengths).cpu()  # one small sync
        num_kept = int(keep.sum())
        num_dropped = num_utts - num_kept

        if num_kept == 0:
            zero = logits.float().sum() * 0.0
            mid_zero = None
            if mid_logits is not None:
                mid_zero = mid_logits.float().sum() * 0.0
                zero = zero + mid_zero
            return CTCLossOutput(zero, zero.detach(), mid_zero, num_dropped, num_utts, all_dropped=True)

        if num_dropped:
            idx = keep.nonzero().squeeze(1).to(logits.device)
            logits = logits.index_select(0, idx)
            mid_logits = mid_logits.index_select(0, idx) if mid_logits is not None else None
            logit_lengths = logit_lengths.index_select(0, idx.to(logit_lengths.device))
            targets = targets.index_select(0, idx.to(targets.device))
            target_lengths = target_lengths.index_select(0, idx.to(target_lengths.device))

        final_loss = self._head_loss(logits, logit_lengths, targets, target_lengths)
        if mid_logits is None:
            mid_loss = None
            loss = self.final_weight * final_loss
        else:
            mid_loss = self._head_loss(mid_logits, logit_lengths, targets, target_lengths)
            loss = self.final_weight * final_loss + self.mid_weight * mid_loss
        return CTCLossOutput(loss, final_loss, mid_loss, num_dropped, num_utts, all_dropped=False)
