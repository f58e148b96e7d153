"""Weighted mixtures of sources with temperature (alpha) balancing.

Source ``i`` is drawn with probability ``p_i ∝ weight_i * size_i ** alpha``: ``alpha = 1`` samples
in proportion to corpus size, ``alpha = 0`` uniformly, and the published recipe's ``alpha = 0.6``
up-samples small corpora without letting them dominate.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np

from granite_train.data.sources import SourceReader


def mixture_probabilities(weights: Sequence[float], sizes: Sequence[float], alpha: float) -> np.ndarray:
    """Sampling probabilities ``∝ weight * size ** alpha``, normalised to sum to 1."""
    w = np.asarray(weights, dtype=np.float64)
    s = np.asarray(sizes, dtype=np.float64)
    if w.shape != s.shape or w.ndim != 1 or len(w) == 0:
        raise ValueError("weights and sizes must be equal-length, non-empty 1-D sequences")
    if (w < 0).any() or (s <= 0).any() or alpha < 0:
        raise ValueError("need weights >= 0, sizes > 0 and alpha >= 0")
    p = w * s**alpha
    if p.sum() <= 0:
        raise ValueError("all mixture weights are zero")
    return p / p.sum()


class MixtureSampler:
    """Draws raw records from several :class:`SourceReader` s with fixed probabilities.

    In finite mode a source that reaches the end of its pass leaves the mixture (probabilities are
    renormalised over the rest) and the mixture ends when every source has; in infinite mode a
    source starts its next pass instead. ``drawn`` counts records taken per source, so a user can
    check the mixture they asked for is what the model got.
    """

    def __init__(self, readers: Sequence[SourceReader], probabilities: np.ndarray, infinite: bool = False):
        if len(readers) != len(probabilities):
            raise ValueError("one probability per reader")
        self.readers = list(readers)
        self.probabilities = np.asarray(probabilities, dtype=np.float64)
        self.infinite = infinite
        self.active = [bool(p > 0) for p in self.probabilities]
        self.drawn: Counter[str] = Counter()

    def next_record(self, rng: np.random.Generator) -> dict[str, Any] | None:
        """The next record of the mixture, or ``None`` once every source is exhausted (finite mode)."""
        while any(self.active):
            p = np.where(self.active, self.probabilities, 0.0)
            i = int(rng.choice(len(p), p=p / p.sum()))
            reader = self.readers[i]
            record = reader.next_record()
            if record is None and self.infinite and reader.passes > 0:
                record = reader.next_record()  # start the next pass
            if record is None:
                # Finite mode, or a source with nothing in it for this reader.
                self.active[i] = False
                continue
            self.drawn[reader.spec.name] += 1
            return record
        return None

    def state_dict(self) -> dict[str, Any]:
        return {
            "readers": [r.state_dict() for r in self.readers],
            "active": list(self.active),
            "drawn": dict(self.drawn),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for reader, reader_state in zip(self.readers, state["readers"], strict=True):
            reader.load_state_dict(reader_state)
        self.active = list(state["active"])
        self.drawn = Counter(state["drawn"])
