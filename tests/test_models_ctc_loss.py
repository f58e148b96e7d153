"""SelfConditionedCTCLoss: hand-checkable values, dropping, weighting, fp32."""

import math

import pytest
import torch
import torch.nn.functional as F

from granite_train.models import SelfConditionedCTCLoss
from granite_train.models.ctc_loss import ctc_required_frames


def _peaky(path: list[int], vocab: int = 5, margin: float = 30.0) -> torch.Tensor:
    """(T, V) logits putting all mass on one frame-level path."""
    logits = torch.zeros(len(path), vocab)
    logits[torch.arange(len(path)), torch.tensor(path)] = margin
    return logits


def test_perfect_peaky_prediction_is_near_zero():
    loss_fn = SelfConditionedCTCLoss()
    logits = _peaky([0, 1, 1, 0, 2, 0])[None].requires_grad_()
    out = loss_fn(logits, torch.tensor([6]), torch.tensor([[1, 2]]), torch.tensor([2]), mid_logits=logits)
    assert out.final_loss.item() < 1e-6 and out.loss.item() < 1e-6
    assert (out.num_dropped, out.num_utts, out.all_dropped) == (0, 1, False)


def test_uniform_logits_hand_value():
    # T=2, V=3, target "1": alignments (1,1) (0,1) (1,0) each 1/9 -> loss = -log(3/9) = log 3
    out = SelfConditionedCTCLoss()(
        torch.zeros(1, 2, 3), torch.tensor([2]), torch.tensor([[1]]), torch.tensor([1])
    )
    assert out.final_loss.item() == pytest.approx(math.log(3), abs=1e-6)
    assert out.mid_loss is None
    assert out.loss.item() == pytest.approx(0.8 * math.log(3), abs=1e-6)


def test_weights_combine_and_mean_over_utterances():
    torch.manual_seed(0)
    logits, mid = torch.randn(3, 8, 6), torch.randn(3, 8, 6)
    lengths = torch.tensor([8, 6, 5])
    targets = torch.tensor([[1, 2, 3], [4, 4, 0], [5, 0, 0]])
    tlens = torch.tensor([3, 2, 1])
    out = SelfConditionedCTCLoss(final_weight=0.7, mid_weight=0.3)(logits, lengths, targets, tlens, mid)
    singles = [
        F.ctc_loss(
            x[i, : lengths[i]].log_softmax(-1), targets[i, : tlens[i]], lengths[i : i + 1], tlens[i : i + 1]
        )
        * tlens[i]  # torch's "mean" divides by target length; undo it
        for x in (logits, mid)
        for i in range(3)
    ]
    final, mid_loss = sum(singles[:3]) / 3, sum(singles[3:]) / 3
    assert out.final_loss.item() == pytest.approx(final.item(), rel=1e-5)
    assert out.mid_loss.item() == pytest.approx(mid_loss.item(), rel=1e-5)
    assert out.loss.item() == pytest.approx(0.7 * final.item() + 0.3 * mid_loss.item(), rel=1e-5)


def test_required_frames_counts_repeats():
    targets = torch.tensor([[1, 1, 2, 2], [3, 3, 3, 0], [1, 2, 0, 0]])
    # the padding zeros after target 2 must not count as repeats
    assert ctc_required_frames(targets, torch.tensor([4, 3, 2])).tolist() == [6, 5, 2]


def test_infeasible_utterances_are_dropped():
    torch.manual_seed(1)
    logits = torch.randn(3, 4, 5)
    targets = torch.tensor([[1, 1, 1], [1, 2, 0], [2, 2, 0]])  # needs 5, 2, 3 frames
    tlens = torch.tensor([3, 2, 2])
    lengths = torch.tensor([4, 4, 2])  # utts 0 and 2 cannot be aligned
    loss_fn = SelfConditionedCTCLoss()
    out = loss_fn(logits, lengths, targets, tlens, mid_logits=logits)
    kept = loss_fn(logits[1:2], lengths[1:2], targets[1:2], tlens[1:2], mid_logits=logits[1:2])
    assert (out.num_dropped, out.num_utts, out.all_dropped) == (2, 3, False)
    assert torch.isfinite(out.loss)
    assert out.loss.item() == pytest.approx(kept.loss.item(), rel=1e-6)


def test_all_dropped_gives_connected_zero():
    logits = torch.randn(2, 2, 5, requires_grad=True)
    mid = torch.randn(2, 2, 5, requires_grad=True)
    out = SelfConditionedCTCLoss()(logits, torch.tensor([2, 1]), torch.tensor([[1, 2, 3], [1, 1, 0]]),
                                   torch.tensor([3, 2]), mid_logits=mid)  # fmt: skip
    assert out.all_dropped and out.num_dropped == 2
    assert out.loss.item() == 0.0 and out.loss.grad_fn is not None
    out.loss.backward()
    assert torch.equal(logits.grad, torch.zeros_like(logits)) and torch.equal(mid.grad, torch.zeros_like(mid))


def test_concatenated_targets_match_padded():
    torch.manual_seed(2)
    logits = torch.randn(2, 6, 5)
    loss_fn = SelfConditionedCTCLoss()
    a = loss_fn(logits, torch.tensor([6, 5]), torch.tensor([[1, 2, 3], [4, 0, 0]]), torch.tensor([3, 1]))
    b = loss_fn(logits, torch.tensor([6, 5]), torch.tensor([1, 2, 3, 4]), torch.tensor([3, 1]))
    assert a.loss.item() == pytest.approx(b.loss.item(), rel=1e-6)


def test_bf16_logits_computed_in_fp32():
    torch.manual_seed(3)
    logits = torch.randn(2, 6, 5)
    args = (torch.tensor([6, 4]), torch.tensor([[1, 2], [3, 0]]), torch.tensor([2, 1]))
    loss_fn = SelfConditionedCTCLoss()
    ref = loss_fn(logits.bfloat16().float(), *args)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = loss_fn(logits.bfloat16().requires_grad_(), *args)
    assert out.loss.dtype == torch.float32
    assert out.loss.item() == pytest.approx(ref.loss.item(), rel=1e-6)
