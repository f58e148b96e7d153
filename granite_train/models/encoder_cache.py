"""Frozen-encoder outputs kept in memory across epochs (stage 2, ``model.encoder_cache_gb``).

In the published stage 2 the encoder is frozen and in eval mode, so an utterance's encoder output
is the same every epoch. On a small fine-tuning set that is read for several epochs, the encoder
forward is a large share of the step (about a third of a 2-core CPU step of the tiny recipe); this
cache computes it once per utterance (alone, unpadded: the value is the same whichever batch the
utterance first came in, which keeps a resumed run bit-identical) and serves it afterwards.

It is only valid when the features of an utterance id never change: no SpecAugment or additive
noise (seeded per batch, so they differ between epochs) and a frozen encoder. The training entry
point checks both (:func:`check_encoder_cache_allowed`). Speed perturbation is seeded by the
utterance id and stays cacheable. Each entry keeps the utterance's length and feature sum, and a
mismatch (two different recordings under one id) is an error rather than silently wrong audio.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

log = logging.getLogger(__name__)

Encode = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class EncoderOutputCache:
    """Per-utterance encoder outputs ``(frames, width)``, keyed by example id, up to ``max_bytes``.

    When full it stops adding (counted as ``encoder_cache/full``); entries are never evicted, so
    an epoch-based stream keeps hitting the same utterances instead of thrashing.
    """

    def __init__(self, max_bytes: int):
        if max_bytes <= 0:
            raise ValueError(f"encoder cache size must be > 0 bytes, not {max_bytes}")
        self.max_bytes = int(max_bytes)
        self.bytes = 0
        self.counts: Counter[str] = Counter()
        self._entries: dict[str, tuple[torch.Tensor, int, float]] = {}
        self._warned_full = False

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: str) -> bool:
        return key in self._entries

    def __call__(
        self, ids: Sequence[str], features: torch.Tensor, lengths: torch.Tensor, encode: Encode
    ) -> torch.Tensor:
        """Encoder output of the batch ``(B, T, width)``, padding zeroed, ``T = features.shape[1]``.

        ``encode(features, lengths)`` runs only on the utterances not cached yet.
        """
        if len(ids) != features.shape[0]:
            raise ValueError(f"{len(ids)} ids for a batch of {features.shape[0]} utterances")
        # one fingerprint per utterance (its real frames' sum), read back in one host sync
        valid = (
            torch.arange(features.shape[1], device=features.device)[None, :]
            < lengths.to(features.device)[:, None]
        )
        sums = (features.double() * valid.unsqueeze(-1)).sum(dim=(1, 2)).tolist()
        lengths = lengths.to("cpu")
        frames = lengths.tolist()
        missing = []
        for i, key in enumerate(ids):
            entry = self._entries.get(key)
            if entry is None:
                missing.append(i)
                continue
            _, length, total = entry
            if length != frames[i] or abs(total - sums[i]) > 1e-3 * max(1.0, abs(total)):
                raise ValueError(
                    f"encoder cache: example id {key!r} came back with different features "
                    f"({frames[i]} frames, sum {sums[i]:.4g}; cached {length} frames, sum {total:.4g}). "
                    "Ids must be unique per recording, and the features of an id must not change "
                    "between epochs (no SpecAugment / noise); or set model.encoder_cache_gb=0"
                )
        self.counts["hits"] += len(ids) - len(missing)
        self.counts["misses"] += len(missing)
        fresh: dict[int, torch.Tensor] = {}
        for i in missing:
            # each utterance alone, unpadded: its cached output then does not depend on the batch it
            # first came in (the last bits of a batched matmul do), so a resumed run, whose cache
            # starts empty, computes exactly the values the uninterrupted run cached
            with torch.no_grad():
                hidden = encode(features[i : i + 1, : frames[i]], lengths[i : i + 1].to(features.device))
            fresh[i] = hidden[0, : frames[i]].detach().clone()
            self._store(ids[i], fresh[i], frames[i], sums[i])
        parts = [fresh[i] if i in fresh else self._entries[key][0] for i, key in enumerate(ids)]
        out = parts[0].new_zeros(len(ids), features.shape[1], parts[0].shape[-1])
        for i, part in enumerate(parts):
            out[i, : part.shape[0]] = part
        return out

    def _store(self, key: str, value: torch.Tensor, length: int, total: float) -> None:
        if key in self._entries:  # the same id twice in one batch
            return
        size = value.numel() * value.element_size()
        if self.bytes + size > self.max_bytes:
            self.counts["full"] += 1
            if not self._warned_full:
                self._warned_full = True
                log.warning(
                    "encoder cache full (%.2f GiB, %d utterances): further utterances are encoded every "
                    "time; raise model.encoder_cache_gb to cache them all",
                    self.bytes / 2**30,
                    len(self._entries),
                )
            return
        self._entries[key] = (value, length, total)
        self.bytes += size


def check_encoder_cache_allowed(model: Mapping[str, Any], data: Mapping[str, Any]) -> None:
    """Raise if ``model.encoder_cache_gb`` > 0 would serve stale encoder outputs."""
    if float(model.get("encoder_cache_gb") or 0) <= 0:
        return
    if (model.get("train") or {}).get("encoder") or (model.get("train") or {}).get("encoder_layers"):
        raise ValueError("model.encoder_cache_gb needs a frozen encoder (model.train.encoder=false)")
    augment = data.get("augment") or {}
    active = [name for name in ("spec_augment", "noise", "degrade") if augment.get(name)]
    if active:
        raise ValueError(
            f"model.encoder_cache_gb: data.augment.{active[0]} changes an utterance's features every "
            "epoch, so its encoder output cannot be cached; set it to null or model.encoder_cache_gb=0"
        )


__all__ = ["EncoderOutputCache", "check_encoder_cache_allowed"]
