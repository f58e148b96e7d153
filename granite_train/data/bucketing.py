"""Duration bucketing: batches of similar-length utterances under a padded-frames budget.

A batch costs ``batch_size * longest_utterance`` frames of compute whatever its content, so
utterances are grouped by duration into buckets whose bounds grow geometrically (constant
relative width, hence bounded relative padding) or follow the data's quantiles, and a bucket is
emitted as a batch as soon as one more utterance would break the ``max_frames`` budget.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator, Sequence
from typing import Generic, Protocol, TypeVar


class HasFrames(Protocol):
    @property
    def num_frames(self) -> int: ...


T = TypeVar("T", bound=HasFrames)


def geometric_bounds(min_frames: int, max_frames: int, ratio: float) -> list[int]:
    """Upper bucket bounds ``min_frames * ratio**k`` up to ``max_frames`` (inclusive)."""
    if ratio <= 1.0 or min_frames < 1 or max_frames < min_frames:
        raise ValueError("need ratio > 1 and 1 <= min_frames <= max_frames")
    bounds, b = [], float(min_frames)
    while b < max_frames:
        b *= ratio
        if not bounds or int(b) > bounds[-1]:
            bounds.append(min(int(b), max_frames))
    if not bounds or bounds[-1] < max_frames:
        bounds.append(max_frames)
    return bounds


def quantile_bounds(frames: Sequence[int], num_buckets: int) -> list[int]:
    """Upper bucket bounds at the data's duration quantiles (equal-count buckets)."""
    if not frames:
        raise ValueError("need at least one duration to estimate bucket bounds")
    ordered = sorted(frames)
    qs = [ordered[min(len(ordered) - 1, (len(ordered) * (k + 1)) // num_buckets)] for k in range(num_buckets)]
    return sorted(set(qs))


class DurationBucketer(Generic[T]):
    """Groups items by ``num_frames`` into buckets and emits batches under a frame budget.

    Args:
        bounds: Sorted upper bounds (frames) of the buckets; longer items go to the last bucket.
        max_frames: Budget of padded frames per batch (``len(batch) * max(num_frames)``).
        max_batch_size: Optional cap on utterances per batch.
    """

    def __init__(self, bounds: Sequence[int], max_frames: int, max_batch_size: int | None = None):
        if not bounds or list(bounds) != sorted(bounds):
            raise ValueError("bucket bounds must be a non-empty sorted sequence")
        if max_frames < 1:
            raise ValueError("max_frames must be positive")
        self.bounds = list(bounds)
        self.max_frames = max_frames
        self.max_batch_size = max_batch_size
        self.buckets: list[list[T]] = [[] for _ in self.bounds]
        self._longest = [0] * len(self.bounds)  # longest item per bucket, kept to make add() O(1)

    def bucket_index(self, frames: int) -> int:
        return min(bisect.bisect_left(self.bounds, frames), len(self.bounds) - 1)

    def add(self, item: T) -> list[T] | None:
        """Add ``item``; returns a full batch when its bucket could not take it under the budget."""
        k = self.bucket_index(item.num_frames)
        bucket, frames = self.buckets[k], item.num_frames
        out = None
        if bucket:
            over_budget = (len(bucket) + 1) * max(frames, self._longest[k]) > self.max_frames
            over_size = self.max_batch_size is not None and len(bucket) >= self.max_batch_size
            if over_budget or over_size:
                out = bucket.copy()
                bucket.clear()
                self._longest[k] = 0
        bucket.append(item)
        self._longest[k] = max(self._longest[k], frames)
        return out

    def set_buckets(self, buckets: list[list[T]]) -> None:
        """Restore bucket contents (resume)."""
        if len(buckets) != len(self.bounds):
            raise ValueError(f"expected {len(self.bounds)} buckets, got {len(buckets)}")
        self.buckets = buckets
        self._longest = [max((x.num_frames for x in b), default=0) for b in buckets]

    def flush(self) -> Iterator[list[T]]:
        """Emit every non-empty bucket (end of stream), shortest bucket first."""
        for k, bucket in enumerate(self.buckets):
            if bucket:
                out = bucket.copy()
                bucket.clear()
                self._longest[k] = 0
                yield out

    def __len__(self) -> int:
        return sum(len(b) for b in self.buckets)
