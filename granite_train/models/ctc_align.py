"""Word timings of a transcript in its audio, from an encoder's own character CTC head.

:func:`align_words` runs the CTC encoder over the whole recording, forces the transcript's
character targets through its log-probabilities (``torchaudio.functional.forced_align``: the
Viterbi path of CTC) and returns each word's start, end and confidence (mean posterior of its
characters on that path). :func:`plan_segments` cuts a long recording into training utterances at
the longest pauses between aligned words, and :func:`quietest_cuts` moves each cut to the middle of
the longest quiet stretch between its two words' centres (CTC spikes place word edges loosely; the
pause itself is quiet). The segmenter of long recordings
(``python -m data_prep.segment``) is built on these two.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torchaudio.functional as AF

from granite_train.audio.features import LogMelFeatures
from granite_train.text.targets import CTCTargetBuilder
from granite_train.text.vocab import BLANK_ID

FRAME_SECONDS = 1.0 / LogMelFeatures.FRAME_RATE
SILENCE_ENERGY = 10 ** (-45 / 10)  # mean square of a -45 dBFS signal: silence whatever the speech level


class AlignmentError(ValueError):
    """A transcript that cannot be aligned to its audio; ``reason`` is a short counting key."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


@dataclass
class WordSpan:
    """One aligned word: ``text`` as the transcript writes it, times in seconds, ``score`` in (0, 1]."""

    text: str
    start: float
    end: float
    score: float


@torch.no_grad()
def align_words(
    encoder: torch.nn.Module,
    waveform: torch.Tensor,
    text: str,
    targets: CTCTargetBuilder,
    language: str | None = None,
    device: str | torch.device = "cpu",
) -> list[WordSpan]:
    """The words of ``text`` with their times in ``waveform`` (1-D, 16 kHz).

    Each transcript word (split on whitespace) is encoded on its own by ``targets``; a word with no
    character in the CTC vocabulary keeps its place in the text but takes no frames (its span is
    its neighbours' boundary, its score NaN). Raises :class:`AlignmentError` when nothing can be
    aligned (``empty_text``) or the audio has fewer frames than CTC needs (``audio_too_short``).
    """
    words = text.split()
    word_ids = [targets.vocab.encode(targets.target_text(w, language)) for w in words]
    space = targets.vocab.char_to_id(" ")
    flat: list[int] = []
    owner: list[int] = []  # word index of each target token (-1: the space between words)
    for i, ids in enumerate(word_ids):
        if not ids:
            continue
        if flat:
            flat.append(space)
            owner.append(-1)
        flat += ids
        owner += [i] * len(ids)
    if not flat:
        raise AlignmentError("empty_text", f"no character of {text!r} is in the CTC vocabulary")
    wave = waveform.reshape(1, -1).float()
    feats, lengths = LogMelFeatures()(wave, torch.tensor([wave.shape[1]]))
    encoder = encoder.to(device).eval()
    out = encoder(feats.to(device), lengths.to(device))
    frames = int(out.lengths[0])
    log_probs = out.logits[:, :frames].float().log_softmax(-1).cpu()
    needed = len(flat) + sum(a == b for a, b in zip(flat, flat[1:]))
    if needed > frames:
        raise AlignmentError(
            "audio_too_short", f"{frames} frames cannot hold {len(flat)} characters (CTC needs {needed})"
        )
    path, scores = AF.forced_align(log_probs, torch.tensor([flat]), blank=BLANK_ID)
    spans = AF.merge_tokens(path[0], scores[0].exp())
    first: dict[int, int] = {}
    last: dict[int, int] = {}
    probs: dict[int, list[float]] = {}
    for span, word in zip(spans, owner):
        if word < 0:
            continue
        first.setdefault(word, span.start)
        last[word] = span.end
        probs.setdefault(word, []).append(float(span.score))
    out_words: list[WordSpan] = []
    edge = 0.0
    for i, word in enumerate(words):
        if i in first:
            out_words.append(
                WordSpan(
                    word, first[i] * FRAME_SECONDS, last[i] * FRAME_SECONDS, sum(probs[i]) / len(probs[i])
                )
            )
            edge = last[i] * FRAME_SECONDS
        else:
            out_words.append(WordSpan(word, edge, edge, math.nan))
    return out_words


@dataclass
class Segment:
    """A planned training utterance: words ``[first, last]`` of a recording, cut at ``start`` / ``end``."""

    first: int
    last: int
    start: float
    end: float
    text: str
    score: float  # mean word score (scored words only)


def plan_segments(
    words: list[WordSpan], duration: float, max_seconds: float = 30.0, min_seconds: float = 1.0
) -> list[Segment]:
    """Cut a recording into segments of at most ``max_seconds`` at the longest pauses.

    From each segment's start, the cut goes in the longest gap between two aligned words whose
    midpoint keeps the segment within ``max_seconds`` (and, when one exists, at least
    ``min_seconds`` long), at the gap's midpoint. A single word longer than ``max_seconds`` still
    becomes a (too long) segment: the caller drops it and counts it.
    """
    segments: list[Segment] = []
    first, start = 0, 0.0
    n = len(words)
    while first < n:
        if duration - start <= max_seconds:
            segments.append(_segment(words, first, n - 1, start, duration))
            break
        gaps = []  # (cut time, index of the last word before it, gap length)
        for i in range(first, n - 1):
            cut = (words[i].end + words[i + 1].start) / 2
            if cut - start > max_seconds:
                break
            gaps.append((cut, i, words[i + 1].start - words[i].end))
        if not gaps:  # one word longer than the limit: cut after it
            end = words[first].end if first + 1 >= n else (words[first].end + words[first + 1].start) / 2
            segments.append(_segment(words, first, first, start, end))
            first, start = first + 1, end
            continue
        long_enough = [g for g in gaps if g[0] - start >= min_seconds] or gaps
        cut, last, _ = max(long_enough, key=lambda g: (g[2], g[0]))
        segments.append(_segment(words, first, last, start, cut))
        first, start = last + 1, cut
    return segments


def quietest_point(
    waveform: torch.Tensor, low: float, high: float, prefer: float | None = None, window: float = 0.05
) -> float:
    """A point (s) in the longest quiet stretch of ``waveform`` (1-D, 16 kHz) between ``low`` and
    ``high`` seconds: the one nearest ``prefer`` at least 0.1 s inside the stretch (its middle when
    ``prefer`` is None or the stretch is short); ``(low + high) / 2`` when the range is shorter than
    one ``window``.

    Quiet: ``window``-long frames within 10 dB of the quietest frame, 30 dB or more below the
    loudest, or under -45 dBFS. Taking the longest such run, not the single quietest frame, keeps the cut in the
    pause rather than in a word's own trailing silence (which can be quieter than a noisy pause).
    """
    rate = 16000
    size = max(1, int(window * rate))
    lo, hi = max(0, int(low * rate)), min(waveform.shape[-1], int(high * rate))
    if hi - lo < size:
        return (low + high) / 2
    hop = max(1, size // 4)
    energy = waveform[lo:hi].double().pow(2).unfold(0, size, hop).mean(-1)
    floor = max(10 * float(energy.min()), 1e-3 * float(energy.max()), SILENCE_ENERGY)
    quiet = (energy <= floor).tolist()
    best_start, best_length, start = 0, 0, None
    for i, flag in enumerate([*quiet, False]):
        if flag and start is None:
            start = i
        elif not flag and start is not None:
            if i - start > best_length:
                best_start, best_length = start, i - start
            start = None
    first = (lo + best_start * hop + size / 2) / rate
    last = (lo + (best_start + best_length - 1) * hop + size / 2) / rate
    margin = min(0.1, (last - first) / 2)
    if prefer is None:
        return (first + last) / 2
    return min(max(prefer, first + margin), last - margin)


def quietest_cuts(
    segments: list[Segment], words: list[WordSpan], waveform: torch.Tensor, max_seconds: float = 30.0
) -> list[Segment]:
    """``segments`` with each cut between two segments moved to the quietest point between the
    centres of the last word before it and the first word after it (the words stay as planned; no
    segment grows past ``max_seconds`` by the move)."""
    out = [Segment(**vars(seg)) for seg in segments]
    for left, right in zip(out, out[1:]):
        before, after = words[left.last], words[right.first]
        low = max((before.start + before.end) / 2, right.end - max_seconds)
        high = min((after.start + after.end) / 2, left.start + max_seconds)
        if high <= low:
            continue
        # nearest the aligned gap's middle: where the alignment is good, that is the pause's middle
        cut = quietest_point(waveform, low, high, prefer=left.end)
        left.end = right.start = cut
    return out


def _segment(words: list[WordSpan], first: int, last: int, start: float, end: float) -> Segment:
    scored = [w.score for w in words[first : last + 1] if not math.isnan(w.score)]
    return Segment(
        first=first,
        last=last,
        start=start,
        end=end,
        text=" ".join(w.text for w in words[first : last + 1]),
        score=sum(scored) / len(scored) if scored else math.nan,
    )


__all__ = [
    "AlignmentError",
    "Segment",
    "WordSpan",
    "align_words",
    "plan_segments",
    "quietest_cuts",
    "quietest_point",
]
