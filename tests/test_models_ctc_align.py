"""Word timings from a CTC head by forced alignment, and cutting long recordings at pauses."""

from __future__ import annotations

import math
import random
from types import SimpleNamespace

import pytest
import torch

from granite_train.audio.features import LogMelFeatures
from granite_train.models.ctc_align import (
    AlignmentError,
    AlignWindows,
    Transcript,
    WordSpan,
    align_windows,
    align_words,
    force_align,
    plan_segments,
    quietest_cuts,
    quietest_point,
    windowed_log_probs,
)
from granite_train.text.targets import CTCTargetBuilder
from granite_train.text.vocab import CharVocab

TONE_LETTERS = "abcdefghijklmnop"


def _mel_centre(index: int) -> float:
    """Centre frequency (Hz) of log-mel bin ``index`` (80 HTK-mel bins over 0-8 kHz)."""
    top = 2595 * math.log10(1 + 8000 / 700)
    return 700 * (10 ** (top * (index + 1) / 81 / 2595) - 1)


class ToneCTC(torch.nn.Module):
    """A stand-in CTC head that hears tone speech: in each frame more than 40 dB above the quietest,
    the letter of the mel bin holding the peak (letter k: bin 20 + 3k), blank elsewhere. Per frame,
    so it hears a window as it hears the whole recording."""

    def __init__(self):
        super().__init__()
        vocab = CharVocab()
        self.ids = torch.tensor([vocab.char_to_id(ch) for ch in TONE_LETTERS])

    def ctc_vocab(self, oov_policy: str = "drop") -> CharVocab:
        return CharVocab(oov_policy)

    def forward(self, feats, lengths):
        mels = feats[..., :80]  # (B, T, 160) -> the first of each pair of stacked frames
        level, where = mels.max(-1)
        loud = level - mels.amin(dim=(1, 2)).unsqueeze(-1) > 1.0
        letter = torch.div(where - 19, 3, rounding_mode="floor").clamp(0, len(TONE_LETTERS) - 1)
        logits = torch.zeros(*feats.shape[:2], 348)
        logits[..., 0] = torch.where(loud, 0.0, 10.0)
        logits.scatter_(-1, self.ids[letter].unsqueeze(-1), torch.where(loud, 10.0, 0.0).unsqueeze(-1))
        return SimpleNamespace(logits=logits, lengths=lengths)


def tone_speech(words: list[str], seed: int = 0) -> tuple[torch.Tensor, list[tuple[float, float]]]:
    """16 kHz audio of ``words`` for :class:`ToneCTC` (80 ms a letter, 40 ms between letters,
    0.3-1.0 s pauses) and each word's (start, end) in seconds."""
    rng, rate = random.Random(seed), 16000
    pieces, spans, t = [], [], 0
    for word in words:
        pause = torch.zeros(int(rng.uniform(0.3, 1.0) * rate))
        pieces.append(pause)
        start = t = t + len(pause)
        for ch in word:
            tone = 0.3 * torch.sin(
                2 * math.pi * _mel_centre(20 + 3 * TONE_LETTERS.index(ch)) * torch.arange(1280) / rate
            )
            pieces += [tone, torch.zeros(640)]
            t += 1920
        spans.append((start / rate, t / rate))
    pieces.append(torch.zeros(rate // 2))
    return torch.cat(pieces), spans


def tone_words(count: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return ["".join(rng.choice(TONE_LETTERS) for _ in range(rng.randint(2, 6))) for _ in range(count)]


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


def _synthetic(
    words: list[str], seed: int, heard: float, pause_after: int, pause: int
) -> tuple[torch.Tensor, list[tuple[int, int]]]:
    """(T, 348) CTC log-posteriors of ``words`` and each word's (first frame, end frame): each
    letter 1-3 frames, blank elsewhere, a space between words half the time, a ``pause``-frame
    silence after word ``pause_after``; ``heard``: how far a letter's logit rises over blank's on
    its frames (8: a sure head, 3: a weak one)."""
    rng, vocab = random.Random(seed), CharVocab()
    plan, truth, t = [], [], 10
    for i, word in enumerate(words):
        t += pause if i == pause_after else 0
        start = t
        for ch in word:
            length = rng.randint(1, 3)
            plan.append((t, t + length, vocab.char_to_id(ch)))
            t += length + rng.randint(0, 3)
        truth.append((start, plan[-1][1]))
        gap = rng.randint(3, 40)
        if rng.random() < 0.5:
            plan.append((t + gap // 2, t + gap // 2 + 1, vocab.char_to_id(" ")))
        t += gap
    logits = torch.randn(t + 20, 348, generator=torch.Generator().manual_seed(seed))
    logits[:, 0] += 8.0
    for start, end, token in plan:
        logits[start:end, 0] -= heard - 1
        logits[start:end, token] += heard
    return logits.log_softmax(-1), truth


def _word_frames(script: Transcript, spans) -> list[tuple[int, int]]:
    """Each aligned word's (first frame, end frame) from one span per token."""
    frames: dict[int, list[int]] = {}
    for span, word in zip(spans, script.owner):
        if word >= 0:
            frames.setdefault(word, [span.start, span.end])[1] = span.end
    return [tuple(frames[i]) for i in sorted(frames)]


def _off(a: tuple[int, int], b: tuple[int, int]) -> int:
    return max(abs(a[0] - b[0]), abs(a[1] - b[1]))


@pytest.mark.parametrize("seed", [1, 2, 4])
@pytest.mark.parametrize("heard", [8.0, 4.0, 3.0])
def test_windowed_alignment_finds_the_frames_of_the_whole_one(heard, seed):
    # 300 words (~190 s at 50 Hz) and a 40 s pause (longer than a window): windows of 10 s with 3 s
    # of overlap put every word within two frames of where the one-pass alignment puts it
    vocab = CharVocab()
    words = tone_words(300, seed=seed)
    script = Transcript.build(" ".join(words), CTCTargetBuilder(vocab))
    columns, tokens = script.columns()
    log_probs, truth = _synthetic(words, seed=seed, heard=heard, pause_after=120, pause=2000)
    whole = _word_frames(script, force_align(log_probs[:, columns], tokens))
    windowed = _word_frames(script, align_windows(log_probs[:, columns], tokens, script.starts, 500, 150))
    assert len(windowed) == len(whole) == 300
    differ = [i for i in range(300) if _off(whole[i], windowed[i]) > 2]
    if heard >= 4.0:
        assert not differ
    else:  # a weak head leaves a word or two ambiguous (one pass may stretch the word next to the
        # pause over it): windowed is no further from where the words are
        assert len(differ) <= 2
        missed = [sum(_off(found[i], truth[i]) > 2 for i in range(300)) for found in (whole, windowed)]
        assert missed[1] <= missed[0]


def test_a_long_recording_aligns_in_windows_where_it_aligns_whole():
    words = tone_words(100, seed=2)
    wave, truth = tone_speech(words, seed=2)  # ~110 s
    targets = CTCTargetBuilder(CharVocab())
    whole = align_words(ToneCTC(), wave, " ".join(words), targets)
    windowed = align_words(
        ToneCTC(), wave, " ".join(words), targets,
        windows=AlignWindows(window_seconds=20, overlap_seconds=5, whole_seconds=10),
    )  # fmt: skip
    assert [w.text for w in windowed] == words
    for one, many, (start, end) in zip(whole, windowed, truth):
        assert abs(one.start - many.start) <= 0.04 and abs(one.end - many.end) <= 0.04  # two frames
        assert abs(many.start - start) <= 0.06 and abs(many.end - end) <= 0.06
        assert many.heard and many.score > 0.9


@pytest.mark.parametrize("whole_seconds", [1000.0, 10.0])
def test_another_recordings_transcript_is_not_heard(whole_seconds):
    wave, _ = tone_speech(tone_words(60, seed=3), seed=3)
    windows = AlignWindows(window_seconds=20, overlap_seconds=5, whole_seconds=whole_seconds)
    text = " ".join(tone_words(60, seed=4))  # a recording of other words
    try:
        words = align_words(ToneCTC(), wave, text, CTCTargetBuilder(CharVocab()), windows=windows)
    except AlignmentError as err:  # windowed: the text may run out of audio before its end
        assert err.reason == "mismatch"
        return
    assert sum(w.heard for w in words) / len(words) < 0.2  # its own transcript: 1.0 (above)


def test_windows_hear_what_one_pass_hears():
    # a per-frame head gives the same log-posteriors whichever window a frame falls in; the
    # encoder's own blocks are kept whole (context_size 200 frames = 4 s: windows of 8 s)
    from granite_train.models.encoder import CTCEncoder, encoder_config

    torch.manual_seed(0)
    wave = 0.1 * torch.randn(16000 * 30, generator=torch.Generator().manual_seed(0))
    columns = torch.arange(348)
    linear = torch.nn.Linear(160, 348)

    def per_frame(feats, lengths):
        return SimpleNamespace(logits=linear(feats), lengths=lengths)

    conformer = CTCEncoder(encoder_config("tiny", num_layers=2, hidden_dim=32, num_heads=2, dim_head=16))
    feats, lengths = LogMelFeatures()(wave.reshape(1, -1), torch.tensor([wave.shape[0]]))
    windows = AlignWindows(window_seconds=7, overlap_seconds=2, context_seconds=4)
    with torch.no_grad():
        for head in (per_frame, conformer.eval()):
            whole = head(feats, lengths).logits[0].log_softmax(-1)
            log_probs, top = windowed_log_probs(head, wave, columns, windows)
            assert log_probs.shape == whole.shape
            assert torch.allclose(log_probs, whole, atol=1e-4)
            assert torch.allclose(top, whole.max(-1).values, atol=1e-4)


def test_window_settings_are_checked():
    with pytest.raises(ValueError, match="overlap_seconds"):
        AlignWindows(window_seconds=10, overlap_seconds=10)
    with pytest.raises(ValueError, match="window_seconds must be > 0, got -1"):
        AlignWindows(window_seconds=-1)
    assert AlignWindows(overlap_seconds=0, whole_seconds=0).whole_seconds == 0  # zeros are kept
