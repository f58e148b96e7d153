"""Word timings from a CTC head by forced alignment, and cutting long recordings at pauses."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from granite_train.models.ctc_align import (
    AlignmentError,
    WordSpan,
    align_words,
    plan_segments,
    quietest_cuts,
    quietest_point,
)
from granite_train.text.targets import CTCTargetBuilder
from granite_train.text.vocab import CharVocab


class PlannedCTC(torch.nn.Module):
    """A stand-in CTC head whose posteriors put each character where ``plan`` says (blank elsewhere)."""

    def __init__(self, plan: dict[tuple[int, int], int]):
        super().__init__()
        self.plan = plan

    def forward(self, feats, lengths):
        logits = torch.full((1, feats.shape[1], 348), -10.0)
        logits[0, :, 0] = 5.0  # blank
        for (start, end), token in self.plan.items():
            logits[0, start:end, 0] = -10.0
            logits[0, start:end, token] = 5.0
        return SimpleNamespace(logits=logits, lengths=lengths)


def test_words_get_the_frames_the_head_puts_them_at():
    vocab = CharVocab()
    c = vocab.char_to_id
    # "hi yo": h 10-12, i 12-14, space 20-22, y 40-43, o 43-45 (50 Hz frames)
    plan = {(10, 12): c("h"), (12, 14): c("i"), (20, 22): c(" "), (40, 43): c("y"), (43, 45): c("o")}
    wave = torch.zeros(16000 * 2)
    words = align_words(PlannedCTC(plan), wave, "Hi yo", CTCTargetBuilder(vocab, lowercase=True))
    assert [w.text for w in words] == ["Hi", "yo"]  # the transcript's own words
    assert words[0].start == pytest.approx(10 / 50) and words[0].end == pytest.approx(14 / 50)
    assert words[1].start == pytest.approx(40 / 50) and words[1].end == pytest.approx(45 / 50)
    assert all(0.99 < w.score <= 1.0 for w in words)  # the head is sure of every character
    # a character the head does not expect there costs score
    unsure = align_words(PlannedCTC(plan), wave, "Hi ya", CTCTargetBuilder(vocab, lowercase=True))
    assert unsure[1].score < 0.5 < unsure[0].score


def test_alignment_refuses_what_it_cannot_place():
    vocab = CharVocab()
    targets = CTCTargetBuilder(vocab)
    short = torch.zeros(1600)  # 0.1 s: 5 frames
    with pytest.raises(AlignmentError) as err:
        align_words(PlannedCTC({}), short, "a rather long sentence", targets)
    assert err.value.reason == "audio_too_short"
    with pytest.raises(AlignmentError) as err:
        align_words(PlannedCTC({}), torch.zeros(16000), "\u4e2d\u6587", targets)  # no Latin-1, no katakana
    assert err.value.reason == "empty_text"


def _words(spec: list[tuple[float, float]]) -> list[WordSpan]:
    return [WordSpan(f"w{i}", a, b, 0.9) for i, (a, b) in enumerate(spec)]


def test_segments_cut_at_the_longest_pause_within_the_limit():
    # pauses: 1.0 s after w1, 0.2 s after w3, 2.0 s after w4 (too late for a 10 s segment)
    words = _words([(0.5, 2.0), (2.2, 4.0), (5.0, 6.0), (6.1, 8.0), (8.2, 9.9), (11.9, 13.0)])
    segments = plan_segments(words, duration=14.0, max_seconds=10.0, min_seconds=1.0)
    assert [(s.first, s.last) for s in segments] == [(0, 1), (2, 5)]
    assert segments[0].end == pytest.approx(4.5) and segments[1].start == pytest.approx(4.5)
    assert all(s.end - s.start <= 10.0 for s in segments)
    assert " ".join(s.text for s in segments) == " ".join(w.text for w in words)  # no word lost
    assert segments[0].score == pytest.approx(0.9)


def test_a_word_longer_than_the_limit_becomes_its_own_segment():
    words = _words([(0.0, 12.0), (12.5, 13.0)])
    segments = plan_segments(words, duration=20.0, max_seconds=10.0)
    assert (segments[0].first, segments[0].last) == (0, 0) and segments[0].end - segments[0].start > 10.0
    assert math.isclose(segments[1].start, 12.25)


def test_cuts_move_to_the_quietest_point_between_the_word_centres():
    # loud noise everywhere but a silent pause at 4.6-4.9 s; the aligner put the gap at 4.0-5.0 s
    # (CTC spikes place word edges loosely), so the planned cut (4.5 s) is inside a word
    g = torch.Generator().manual_seed(0)
    wave = 0.3 * torch.randn(9 * 16000, generator=g)
    wave[int(4.6 * 16000) : int(4.9 * 16000)] = 0.0
    words = _words([(1.0, 2.0), (3.0, 4.0), (5.0, 6.5), (7.0, 8.0)])
    planned = plan_segments(words, duration=9.0, max_seconds=5.0, min_seconds=1.0)
    assert [(s.first, s.last) for s in planned] == [(0, 1), (2, 3)] and planned[0].end == pytest.approx(4.5)
    moved = quietest_cuts(planned, words, wave, max_seconds=5.0)
    assert 4.6 < moved[0].end < 4.9 and moved[1].start == moved[0].end
    assert [(s.first, s.last, s.text) for s in moved] == [(s.first, s.last, s.text) for s in planned]
    assert planned[0].end == pytest.approx(4.5)  # the plan itself is not modified
    # no move past the segment limit: with 4.6 s at most, the cut stays before the pause
    capped = quietest_cuts(planned, words, wave, max_seconds=4.6)
    assert capped[0].end <= 4.6


def test_quietest_point_is_the_middle_of_a_silent_run():
    wave = torch.ones(16000)
    wave[4000:8000] = 0.0  # 0.25-0.5 s silent
    assert quietest_point(wave, 0.0, 1.0) == pytest.approx(0.375, abs=0.01)
    assert quietest_point(wave, 0.9, 0.91) == pytest.approx(0.905)  # shorter than the window


def test_the_longest_quiet_run_wins_over_a_quieter_short_one_and_prefer_is_kept_inside():
    g = torch.Generator().manual_seed(1)
    wave = 0.3 * torch.randn(16000, generator=g)  # speech-level noise
    wave[1600:3200] = 0.0  # 0.1-0.2 s: a word's own digital-silence tail, short
    wave[6400:14400] = 10 ** (-50 / 20) * torch.randn(8000, generator=g)  # 0.4-0.9 s: a -50 dBFS pause
    assert 0.6 < quietest_point(wave, 0.0, 1.0) < 0.7  # the middle of the long noisy pause
    assert quietest_point(wave, 0.0, 1.0, prefer=0.75) == pytest.approx(0.75)  # inside: kept
    # outside: moved 0.1 s into the pause (within a frame)
    assert quietest_point(wave, 0.0, 1.0, prefer=0.15) == pytest.approx(0.525, abs=0.02)
