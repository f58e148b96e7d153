"""Word timings of a transcript in its audio, from an encoder's own character CTC head.

:func:`align_words` forces the transcript's character targets through the CTC head's
log-probabilities (``torchaudio.functional.forced_align``: the Viterbi path of CTC) and returns each
word's start, end and confidence (mean posterior of its characters on that path). A recording up to
:attr:`AlignWindows.whole_seconds` long is aligned whole, in one pass. A longer one is aligned in
windows, in memory bounded by the window and time linear in its length: the encoder runs over
fixed windows (each with context on both sides, discarded), and each alignment window gets a stretch
of the transcript larger than what it holds (the text it does not hold goes to frames appended past
its end), keeps the words that end before its last ``overlap_seconds``, and the next window starts
at the last kept word's end with the next word (:func:`align_windows`).

:func:`plan_segments` cuts a long recording into training utterances at the longest pauses between
aligned words, and :func:`quietest_cuts` moves each cut to the middle of the longest quiet stretch
between its two words' centres (CTC spikes place word edges loosely; the pause itself is quiet). The
segmenter of long recordings (``python -m data_prep.segment``) is built on these.
"""

from __future__ import annotations

import bisect
import dataclasses
import math
from dataclasses import dataclass

import torch
import torchaudio.functional as AF

from granite_train.audio.features import LogMelFeatures
from granite_train.text.targets import CTCTargetBuilder
from granite_train.text.vocab import BLANK_ID

FRAME_SECONDS = 1.0 / LogMelFeatures.FRAME_RATE
SAMPLES_PER_FRAME = LogMelFeatures.SAMPLE_RATE // LogMelFeatures.FRAME_RATE
SILENCE_ENERGY = 10 ** (-45 / 10)  # mean square of a -45 dBFS signal: silence whatever the speech level
CONFIDENT_SHARE = 0.2  # a word is confidently aligned at this share of what a heard character scores
UNSEEN_SHARE = 0.5
"""A character costs this share of what a heard one scores in the frames appended past an alignment
window's end (the text it does not hold): one the head hears in the window costs less there; one it
would be forced onto (silence, another word) costs more."""
HEARD_RATIO = 0.01
"""A character is heard where the head gives it at least this share of its likeliest symbol's
posterior on one of its frames: true on the forced path wherever the audio says the text, for a
weak head too; false where text is forced onto audio that does not say it."""
SPAN_SLACK = 1.5  # a window gets this many times the transcript the recording's mean rate puts in it
SPAN_EXTRA = 16  # ... plus this many characters (short windows, slow starts)


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
    heard: bool | None = None
    """every character of the word heard (:data:`HEARD_RATIO`); None: no character to align"""


@dataclass(frozen=True)
class AlignWindows:
    """How a long recording is aligned piece by piece (bounded memory, time linear in its length).

    Attributes:
        window_seconds: audio force-aligned at once, and the encoder's window (> 0).
        overlap_seconds: the end of each alignment window whose words the next window aligns again,
            from the last word kept (>= 0, < ``window_seconds``): a word is kept only where the
            audio after it has been seen too.
        whole_seconds: recordings up to this long are aligned whole, in one pass (>= 0): the exact
            global alignment, with memory growing as length x transcript length.
        context_seconds: audio the encoder hears on each side of its window and discards, rounded up
            to whole attention blocks (>= 0): the window's edge frames see their neighbours.
    """

    window_seconds: float = 60.0
    overlap_seconds: float = 15.0
    whole_seconds: float = 120.0
    context_seconds: float = 8.0

    def __post_init__(self) -> None:
        if not self.window_seconds > 0:
            raise ValueError(f"window_seconds must be > 0, got {self.window_seconds}")
        if not 0 <= self.overlap_seconds < self.window_seconds:
            raise ValueError(
                f"overlap_seconds must be >= 0 and < window_seconds ({self.window_seconds}), "
                f"got {self.overlap_seconds}"
            )
        if not self.whole_seconds >= 0:
            raise ValueError(f"whole_seconds must be >= 0, got {self.whole_seconds}")
        if not self.context_seconds >= 0:
            raise ValueError(f"context_seconds must be >= 0, got {self.context_seconds}")


@dataclass
class Transcript:
    """A transcript as CTC targets, grouped by word.

    Attributes:
        words: the transcript's words (split on whitespace), as written.
        tokens: the target ids of the words that have any, joined by the space symbol.
        owner: the word index of each token (-1: a space between words).
        starts: where each aligned word's group of tokens begins in ``tokens`` (its leading space
            included), then ``len(tokens)``: alignment windows start and end on these.
    """

    words: list[str]
    tokens: list[int]
    owner: list[int]
    starts: list[int]

    @classmethod
    def build(cls, text: str, targets: CTCTargetBuilder, language: str | None = None) -> Transcript:
        """Each word (split on whitespace) encoded on its own by ``targets``; a word with no character
        in the vocabulary keeps its place in ``words`` but has no tokens."""
        words = text.split()
        space = targets.vocab.char_to_id(" ")
        tokens: list[int] = []
        owner: list[int] = []
        starts: list[int] = []
        for i, word in enumerate(words):
            ids = targets.vocab.encode(targets.target_text(word, language))
            if not ids:
                continue
            starts.append(len(tokens))
            if tokens:
                tokens.append(space)
                owner.append(-1)
            tokens += ids
            owner += [i] * len(ids)
        return cls(words, tokens, owner, [*starts, len(tokens)])

    def columns(self) -> tuple[torch.Tensor, list[int]]:
        """The head's outputs the alignment reads (blank first, then each symbol of the transcript)
        and the tokens as indices into them: a long recording's log-probs keep only these."""
        symbols = sorted(set(self.tokens) - {BLANK_ID})
        index = {s: k + 1 for k, s in enumerate(symbols)}
        return torch.tensor([BLANK_ID, *symbols]), [index[t] for t in self.tokens]


def needed_frames(tokens: list[int]) -> int:
    """The fewest frames CTC needs for ``tokens``: one each, plus a blank between two equal ones."""
    return len(tokens) + sum(a == b for a, b in zip(tokens, tokens[1:]))


@torch.no_grad()
def align_words(
    encoder: torch.nn.Module,
    waveform: torch.Tensor,
    text: str,
    targets: CTCTargetBuilder,
    language: str | None = None,
    device: str | torch.device = "cpu",
    windows: AlignWindows | None = None,
) -> list[WordSpan]:
    """The words of ``text`` with their times in ``waveform`` (1-D, 16 kHz).

    Each transcript word (split on whitespace) is encoded on its own by ``targets``; a word with no
    character in the CTC vocabulary keeps its place in the text but takes no frames (its span is
    its neighbours' boundary, its score NaN). A recording longer than ``windows.whole_seconds`` is
    aligned window by window (:func:`align_windows`). Raises :class:`AlignmentError` when nothing
    can be aligned (``empty_text``), the audio has fewer frames than CTC needs
    (``audio_too_short``), or, windowed, the transcript left for the last window does not fit it
    (``mismatch``: the text is not what the audio says).
    """
    windows = windows or AlignWindows()
    script = Transcript.build(text, targets, language)
    if not script.tokens:
        raise AlignmentError("empty_text", f"no character of {text!r} is in the CTC vocabulary")
    columns, tokens = script.columns()
    encoder = encoder.to(device).eval()
    wave = waveform.reshape(-1).float()
    whole = wave.shape[0] <= windows.whole_seconds * LogMelFeatures.SAMPLE_RATE
    if whole:
        log_probs, top = _whole_log_probs(encoder, wave, columns, device)
    else:
        log_probs, top = windowed_log_probs(encoder, wave, columns, windows, device)
    frames, needed = log_probs.shape[0], needed_frames(tokens)
    if needed > frames:
        raise AlignmentError(
            "audio_too_short", f"{frames} frames cannot hold {len(tokens)} characters (CTC needs {needed})"
        )
    if whole:
        spans = force_align(log_probs, tokens)
    else:
        to_frames = LogMelFeatures.FRAME_RATE
        spans = align_windows(
            log_probs,
            tokens,
            script.starts,
            round(windows.window_seconds * to_frames),
            round(windows.overlap_seconds * to_frames),
        )
    return _word_spans(script, spans, heard_tokens(log_probs, top, spans, tokens))


def _whole_log_probs(
    encoder: torch.nn.Module, wave: torch.Tensor, columns: torch.Tensor, device: str | torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """The whole recording's :func:`_posteriors`, from one encoder pass."""
    feats, lengths = LogMelFeatures()(wave.reshape(1, -1), torch.tensor([wave.shape[0]]))
    out = encoder(feats.to(device), lengths.to(device))
    return _posteriors(out.logits[0, : int(out.lengths[0])], columns)


def _posteriors(logits: torch.Tensor, columns: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(T, V) logits -> the (T, K) log-posteriors of ``columns`` (what alignment reads: a long
    recording's full (T, V) is never kept) and the (T,) largest log-posterior of each frame."""
    log_probs = logits.float().log_softmax(-1)
    return log_probs[:, columns.to(log_probs.device)].cpu(), log_probs.max(-1).values.cpu()


@torch.no_grad()
def windowed_log_probs(
    encoder: torch.nn.Module,
    wave: torch.Tensor,
    columns: torch.Tensor,
    windows: AlignWindows,
    device: str | torch.device = "cpu",
) -> tuple[torch.Tensor, torch.Tensor]:
    """A recording's :func:`_posteriors`, from encoder passes over fixed windows.

    Windows and their context start on whole attention blocks (the encoder's ``context_size``), so
    every block sees what it sees in one pass over the recording, and the conv layers at a
    window's edge see ``context_seconds`` of real neighbours. Features are computed per window (the
    log-mel floor sits 80 dB under the window's loudest frame, as for a training utterance).
    """
    config = getattr(encoder, "config", None)
    block = int(getattr(config, "context_size", 1))
    total = int(LogMelFeatures.num_frames(wave.shape[0]))
    step = max(block, _whole_blocks(windows.window_seconds, block))
    context = _whole_blocks(windows.context_seconds, block)
    features = LogMelFeatures()
    log_probs, top = torch.empty(total, columns.numel()), torch.empty(total)
    for start in range(0, total, step):
        end = min(total, start + step)
        low, high = max(0, start - context), min(total, end + context)
        piece = wave[low * SAMPLES_PER_FRAME : high * SAMPLES_PER_FRAME if high < total else None]
        feats, lengths = features(piece.reshape(1, -1), torch.tensor([piece.shape[0]]))
        result = encoder(feats.to(device), lengths.to(device))
        if int(result.lengths[0]) != high - low:
            raise ValueError(
                f"the encoder returned {int(result.lengths[0])} frames for {high - low} input frames"
            )
        log_probs[start:end], top[start:end] = _posteriors(result.logits[0, start - low : end - low], columns)
    return log_probs, top


def _whole_blocks(seconds: float, block: int) -> int:
    """``seconds`` in frames, rounded up to whole ``block``s."""
    return math.ceil(seconds * LogMelFeatures.FRAME_RATE / block) * block


def force_align(log_probs: torch.Tensor, tokens: list[int]) -> list[AF.TokenSpan]:
    """The CTC Viterbi path of ``tokens`` through ``log_probs`` (T, K; blank at column 0), one span per
    token (frames, end exclusive; score: the token's mean posterior on the path)."""
    path, scores = AF.forced_align(log_probs.unsqueeze(0), torch.tensor([tokens]), blank=0)
    return AF.merge_tokens(path[0], scores[0].exp())


def align_windows(
    log_probs: torch.Tensor, tokens: list[int], starts: list[int], window: int, overlap: int
) -> list[AF.TokenSpan]:
    """:func:`force_align` of a long recording in windows of ``window`` frames: one span per token.

    Tokens come in groups, one per word with its leading space (``starts``: where each group
    begins, then ``len(tokens)``). Each window, from ``frame`` on, is aligned to the groups from the
    next unaligned one on: :data:`SPAN_SLACK` times what the rest's mean rate puts in it, with
    frames appended for the text it does not hold (:func:`_with_tail`). It keeps its groups up to
    the last *confident* one (:func:`_kept_groups`) that ends before its last ``overlap`` frames, and
    the next window starts at the last kept group's end. A window with nothing to keep (a long
    pause, or text the audio does not say) moves on by ``window - overlap`` frames. The last window
    (``window`` frames or fewer left) takes the rest of the transcript, forced as in one pass.

    Raises:
        AlignmentError: ``mismatch``: the transcript left does not fit the frames left.
    """
    total, groups = log_probs.shape[0], len(starts) - 1
    heard = hearing_level(log_probs, len(tokens))
    confident, unseen = CONFIDENT_SHARE * heard, math.log(UNSEEN_SHARE * heard)
    spans: list[AF.TokenSpan] = []
    frame, group = 0, 0
    while group < groups:
        if total - frame <= window:
            spans += _shifted(_force_rest(log_probs[frame:], tokens[starts[group] :], frame), frame)
            break
        last = _span_end(starts, group, (len(tokens) - starts[group]) / (total - frame), window)
        span = tokens[starts[group] : starts[last]]
        found = force_align(_with_tail(log_probs[frame : frame + window], span, unseen), span)
        offsets = [s - starts[group] for s in starts[group : last + 1]]
        scores = _group_scores(found, offsets, leading_space=group > 0)
        kept = _kept_groups(found, offsets, scores, confident, window - overlap, window, last == groups)
        if kept == 0:
            frame += window - overlap
            continue
        spans += _shifted(found[: offsets[kept]], frame)
        frame, group = frame + found[offsets[kept] - 1].end, group + kept
    return spans


def hearing_level(log_probs: torch.Tensor, count: int) -> float:
    """What a heard character scores in this recording: the mean posterior of the ``count`` frames
    where the head is surest of a transcript symbol (``log_probs`` (T, K), blank at column 0).

    A weak head hears little anywhere, a strong one is near 1 on its characters: a word's score is
    judged against this, not against a fixed number.
    """
    best = log_probs[:, 1:].max(-1).values  # (T, K - 1) -> (T,)
    return float(best.topk(max(1, min(count, best.numel()))).values.exp().mean())


def _group_scores(spans: list[AF.TokenSpan], offsets: list[int], leading_space: bool) -> list[float]:
    """Each group's word score: the mean score of its tokens, its leading space left out (as in
    :func:`_word_spans`); groups after the first always lead with one, the first when ``leading_space``."""
    scores = []
    for k, (begin, end) in enumerate(zip(offsets, offsets[1:])):
        own = spans[begin + (1 if k > 0 or leading_space else 0) : end]
        scores.append(sum(float(s.score) for s in own) / len(own))
    return scores


def _force_rest(log_probs: torch.Tensor, tokens: list[int], frame: int) -> list[AF.TokenSpan]:
    """The last window: the rest of the transcript forced through the frames left."""
    needed = needed_frames(tokens)
    if needed > log_probs.shape[0]:
        raise AlignmentError(
            "mismatch",
            f"{len(tokens)} characters of the transcript are left for the last {log_probs.shape[0]} frames "
            f"(from {frame * FRAME_SECONDS:.1f} s; CTC needs {needed}): the audio does not say this text",
        )
    return force_align(log_probs, tokens)


def _span_end(starts: list[int], group: int, tokens_per_frame: float, window: int) -> int:
    """The group after a window's span: :data:`SPAN_SLACK` times the tokens ``tokens_per_frame`` puts
    in ``window`` frames (+ :data:`SPAN_EXTRA`, at most ``window``), at least two groups where there are."""
    groups = len(starts) - 1
    budget = min(window, math.ceil(SPAN_SLACK * tokens_per_frame * window) + SPAN_EXTRA)
    end = bisect.bisect_left(starts, starts[group] + budget, lo=group)
    return min(groups, max(group + 2, end))


def _with_tail(log_probs: torch.Tensor, tokens: list[int], unseen: float) -> torch.Tensor:
    """``log_probs`` (T, K) with frames for all of ``tokens`` appended: blank free, any other
    symbol ``unseen`` (text past the window costs a fixed price per character)."""
    tail = torch.full((needed_frames(tokens), log_probs.shape[1]), unseen)
    tail[:, 0] = 0.0
    return torch.cat([log_probs, tail])


def _kept_groups(
    spans: list[AF.TokenSpan],
    offsets: list[int],
    scores: list[float],
    confident: float,
    limit: int,
    real: int,
    ends_text: bool,
) -> int:
    """How many of a window's groups (token ``offsets``, then the span's end) to keep.

    Those up to the last group scoring ``confident`` or more that ends by frame ``limit`` (a weak
    word between two confident ones is held in place by them; text forced onto audio that does not
    say it scores low and is left to a later window). The span's last group only if ``ends_text``:
    a span that ran out inside the window may have put it on a later look-alike. With none ending by
    ``limit`` (a long pause), the first group if it is confident and ends by ``real``.
    """
    candidates = len(offsets) - 1 if ends_text else len(offsets) - 2
    kept = 0
    for k in range(candidates):
        if spans[offsets[k + 1] - 1].end > limit:
            break
        if scores[k] >= confident:
            kept = k + 1
    if kept == 0 and candidates > 0 and scores[0] >= confident and spans[offsets[1] - 1].end <= real:
        kept = 1
    return kept


def _shifted(spans: list[AF.TokenSpan], frame: int) -> list[AF.TokenSpan]:
    return [dataclasses.replace(s, start=s.start + frame, end=s.end + frame) for s in spans]


def heard_tokens(
    log_probs: torch.Tensor, top: torch.Tensor, spans: list[AF.TokenSpan], tokens: list[int]
) -> list[bool]:
    """Whether each token is heard on its frames: its log-posterior (``log_probs`` (T, K)) within
    ``log(HEARD_RATIO)`` of the frame's largest (``top`` (T,)) on at least one of them."""
    given = torch.tensor(tokens)[_frame_owner(spans, log_probs.shape[0])]  # (T,): each frame's token
    gap = log_probs.gather(1, given.unsqueeze(1)).squeeze(1) - top  # (T,)
    floor = math.log(HEARD_RATIO)
    return [bool(gap[s.start : s.end].max() >= floor) for s in spans]


def _frame_owner(spans: list[AF.TokenSpan], frames: int) -> torch.Tensor:
    """(frames,) the index of the token whose span holds each frame (0 outside every span)."""
    owner = torch.zeros(frames, dtype=torch.long)
    for k, s in enumerate(spans):
        owner[s.start : s.end] = k
    return owner


def _word_spans(script: Transcript, spans: list[AF.TokenSpan], heard: list[bool]) -> list[WordSpan]:
    """Each word's span: from its first token's start to its last token's end, scored by the mean of
    its tokens' scores, heard when all of them are; a word without tokens sits at the previous
    word's end, scored NaN."""
    first: dict[int, int] = {}
    last: dict[int, int] = {}
    probs: dict[int, list[float]] = {}
    all_heard: dict[int, bool] = {}
    for span, word, ok in zip(spans, script.owner, heard):
        if word < 0:
            continue
        first.setdefault(word, span.start)
        last[word] = span.end
        probs.setdefault(word, []).append(float(span.score))
        all_heard[word] = all_heard.get(word, True) and ok
    out: list[WordSpan] = []
    edge = 0.0
    for i, word in enumerate(script.words):
        if i in first:
            score = sum(probs[i]) / len(probs[i])
            out.append(WordSpan(word, first[i] * FRAME_SECONDS, last[i] * FRAME_SECONDS, score, all_heard[i]))
            edge = last[i] * FRAME_SECONDS
        else:
            out.append(WordSpan(word, edge, edge, math.nan))
    return out


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
    "AlignWindows",
    "AlignmentError",
    "Segment",
    "Transcript",
    "WordSpan",
    "align_windows",
    "align_words",
    "force_align",
    "heard_tokens",
    "hearing_level",
    "needed_frames",
    "plan_segments",
    "quietest_cuts",
    "quietest_point",
    "windowed_log_probs",
]
