import pytest
import torch

from granite_train.eval.ctc_decode import greedy_ctc_decode
from granite_train.text.vocab import VOCAB_SIZE, CharVocab

VOCAB = CharVocab()
A, B, C = (VOCAB.char_to_id(c) for c in "abc")


def one_hot_logits(paths: list[list[int]], frames: int) -> torch.Tensor:
    """(B, T, V) logits whose argmax is ``paths`` (padded with the frame-0 argmax = 'c')."""
    logits = torch.randn(len(paths), frames, VOCAB_SIZE) * 0.1
    logits[:, :, C] += 5.0  # padding frames decode to 'c' if not masked
    for b, path in enumerate(paths):
        for t, i in enumerate(path):
            logits[b, t, i] += 10.0
    return logits


def test_hand_built_batch_with_padding():
    paths = [
        [A, A, 0, A, B, B, 0],  # "a a _ a b b _" -> "aab"
        [0, B, 0, 0, A],  # -> "ba"
        [0, 0],  # only blanks -> ""
    ]
    logits = one_hot_logits(paths, frames=9)
    lengths = torch.tensor([len(p) for p in paths])
    assert greedy_ctc_decode(logits, lengths, VOCAB) == ["aab", "ba", ""]
    # without lengths the padding frames ('c') leak into the output
    assert greedy_ctc_decode(logits, None, VOCAB) == ["aabc", "bac", "c"]


def test_log_probs_give_the_same_result():
    logits = one_hot_logits([[A, 0, B]], frames=4)
    lengths = [3]
    assert greedy_ctc_decode(logits.log_softmax(-1), lengths, VOCAB) == ["ab"]
    assert greedy_ctc_decode(logits, lengths, VOCAB) == ["ab"]


def test_repeat_across_length_boundary_not_merged_wrongly():
    # the padding repeats the last valid token; it must not add or remove anything
    logits = one_hot_logits([[A, B, B, B, B]], frames=5)
    assert greedy_ctc_decode(logits, [2], VOCAB) == ["ab"]
    assert greedy_ctc_decode(logits, [0], VOCAB) == [""]


def test_matches_charvocab_reference_on_random_batches():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 40, VOCAB_SIZE, generator=g)
    logits[..., 0] += 2.0  # plenty of blanks
    logits[..., 97:100] += 2.5  # and a few repeated letters
    lengths = torch.tensor([40, 33, 1, 0, 17, 25])
    got = greedy_ctc_decode(logits, lengths, VOCAB)
    ids = logits.argmax(-1)
    want = [VOCAB.ctc_greedy_decode(ids[b, : lengths[b]].tolist()) for b in range(6)]
    assert got == want


def test_bad_shapes_and_lengths():
    logits = torch.zeros(2, 4, VOCAB_SIZE)
    with pytest.raises(ValueError):
        greedy_ctc_decode(logits[0], [4], VOCAB)
    with pytest.raises(ValueError):
        greedy_ctc_decode(logits, [4], VOCAB)
    with pytest.raises(ValueError):
        greedy_ctc_decode(logits, [5, 1], VOCAB)
