"""The streaming data pipeline, with exact resume.

Data flow in each (rank, dataloader worker) slot::

    sources (datasets streaming, split by rank x worker)
      -> weighted mixture (alpha balancing)            MixtureSampler
      -> decode, resample 16 kHz, validate, targets     ExamplePreparer (skips counted per reason)
      -> shuffle buffer                                 list + numpy Generator
      -> duration buckets under a frame budget          DurationBucketer
      -> list of examples                               -> Collator (in the loader) -> Batch

Exact resume: ``state_dict()`` captures every piece of state — each stream's position, the RNG,
and the *raw records* held in the shuffle and bucket buffers (small: encoded bytes or paths) — so
a restored pipeline yields exactly the batches an uninterrupted one would have yielded next.
``torchdata``'s ``StatefulDataLoader`` calls it inside each worker and restores each worker's
share, so resume is exact per rank and worker.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from granite_train.audio.features import LogMelFeatures
from granite_train.data.bucketing import DurationBucketer, geometric_bounds, quantile_bounds
from granite_train.data.collate import Collator, ExampleBatch
from granite_train.data.mixture import MixtureSampler, mixture_probabilities
from granite_train.data.prepare import Example, ExamplePreparer, PrepareConfig, split_fixes
from granite_train.data.skips import consecutive_skips_error, no_usable_example_error
from granite_train.data.sources import SourceReader, SourceSpec
from granite_train.text.targets import CTCTargetBuilder

log = logging.getLogger(__name__)

STATE_VERSION = 1
FRAME_RATE = LogMelFeatures.FRAME_RATE  # encoder frames per second (10 ms hop, pairs stacked)


@dataclass
class PipelineConfig:
    """Everything that shapes the stream of batches.

    Attributes:
        sources: Corpora to mix.
        alpha: Balancing exponent: ``p_i ∝ weight_i * size_i**alpha`` (recipe: 0.6).
        seed: Base seed; each epoch and (rank, worker) slot derives its own generator from it.
        infinite: Restart sources when they end (train by steps) instead of ending the epoch.
        shuffle_buffer: Examples held for shuffling; 0 disables shuffling.
        max_frames: Padded 50 Hz encoder frames per batch (``batch_size x longest``).
        max_batch_size: Optional cap on utterances per batch.
        num_buckets: Duration buckets estimated from the data's quantiles at the first buffer fill.
            More buckets, less padding (32: ~5% on 0.5-20 s audio) but more memory: partly filled
            buckets hold up to ``num_buckets * max_frames`` frames of decoded audio per worker.
        bucket_bounds: Explicit upper bucket bounds in seconds (overrides ``num_buckets``).
        bucket_ratio: Geometric bucket growth when bounds cannot be estimated (no shuffle buffer).
        drop_last: Drop the partial batches flushed at the end of a finite epoch.
        oov_policy: Characters outside the CTC vocabulary: ``drop``, ``replace`` or ``reject``.
        lowercase: Lowercase CTC targets (see :class:`CTCTargetBuilder`).
        strip_punctuation: Remove punctuation from CTC targets (the apostrophe stays).
        prepare: Per-example validation limits.
        max_consecutive_skips: Stop with a :class:`~granite_train.data.errors.DataError` naming the
            reasons when this many records in a row were skipped without one example served (a
            source of which a whole pass yields nothing stops at the end of that pass anyway).
    """

    sources: list[SourceSpec]
    alpha: float = 1.0
    seed: int = 0
    infinite: bool = False
    shuffle_buffer: int = 256
    max_frames: int = 20_000
    max_batch_size: int | None = None
    num_buckets: int = 32
    bucket_bounds: list[float] | None = None
    bucket_ratio: float = 1.1
    drop_last: bool = False
    oov_policy: str = "drop"
    lowercase: bool = False
    strip_punctuation: bool = False
    prepare: PrepareConfig = field(default_factory=PrepareConfig)
    max_consecutive_skips: int = 10_000

    def __post_init__(self) -> None:
        if not self.sources:
            raise ValueError("a pipeline needs at least one source")
        if self.max_consecutive_skips < 1:
            raise ValueError(f"max_consecutive_skips must be >= 1, got {self.max_consecutive_skips}")
        names = [s.name for s in self.sources]
        if len(set(names)) != len(names):
            raise ValueError(f"source names must be unique, got {names}")
        if self.shuffle_buffer < 0 or self.max_frames < 1:
            raise ValueError("need shuffle_buffer >= 0 and max_frames >= 1")
        max_len_frames = int(self.prepare.max_duration * FRAME_RATE)
        if self.max_frames < max_len_frames:
            log.warning(
                "max_frames=%d is below the longest allowed utterance (%d frames): such utterances"
                " form batches of one that exceed the budget",
                self.max_frames,
                max_len_frames,
            )


def _distributed_rank_world() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def _counter_delta(now: Counter[str], before: Counter[str]) -> dict[str, int]:
    return {k: v - before.get(k, 0) for k, v in now.items() if v != before.get(k, 0)}


class _SlotState:
    """The live state of one (rank, worker) slot during one epoch."""

    def __init__(self, cfg: PipelineConfig, targets: CTCTargetBuilder, epoch: int, slot: int, num_slots: int):
        self.cfg = cfg
        self.epoch = epoch
        self.slot = slot
        self.num_slots = num_slots
        seq = np.random.SeedSequence([cfg.seed, epoch, slot])
        self.rng = np.random.Generator(np.random.PCG64(seq))
        readers = [SourceReader(s, slot, num_slots, seed=cfg.seed + epoch) for s in cfg.sources]
        probs = mixture_probabilities(
            [s.weight for s in cfg.sources], [s.size for s in cfg.sources], cfg.alpha
        )
        self.mixture = MixtureSampler(readers, probs, infinite=cfg.infinite)
        self.preparer = ExamplePreparer(cfg.prepare, targets, seed=cfg.seed * 1_000_003 + epoch)
        self.buffer: list[Example] = []
        self.bucketer: DurationBucketer[Example] | None = None
        if cfg.bucket_bounds is not None:
            self._make_bucketer([int(round(s * FRAME_RATE)) for s in sorted(cfg.bucket_bounds)])
        elif cfg.shuffle_buffer < max(cfg.num_buckets, 2):
            p = cfg.prepare
            bounds = geometric_bounds(
                max(1, int(p.min_duration * FRAME_RATE)),
                int(p.max_duration * FRAME_RATE) + 1,
                cfg.bucket_ratio,
            )
            self._make_bucketer(bounds)
        self.batches = 0
        self.exhausted = False
        self.flushing: list[list[Example]] | None = None
        self._reported_skips: Counter[str] = Counter()
        self._reported_drawn: Counter[str] = Counter()
        self._reported_by_source: Counter[str] = Counter()
        self.readers = {r.spec.name: r for r in readers}
        # per source, this pass: examples served and records skipped; a pass serving none stops the run
        self.pass_served: Counter[str] = Counter()
        self.pass_passes = {name: 0 for name in self.readers}  # the reader's pass the counts are of
        self.skips_in_row = 0
        # ids skipped in an earlier pass of this slot: not decoded again, not counted again (a
        # cache: a resumed run rebuilds it by skipping each once more)
        self.known_bad: set[str] = set()
        self.counted_unreadable: set[str] = set()  # data files skipped as unreadable, counted once

    def _make_bucketer(self, bounds: list[int]) -> None:
        self.bucketer = DurationBucketer(bounds, self.cfg.max_frames, self.cfg.max_batch_size)

    # -- iteration -------------------------------------------------------------------------------

    def _next_example(self) -> Example | None:
        """The next valid example from the mixture, or ``None`` when the mixture is exhausted.

        Raises :class:`~granite_train.data.errors.DataError` when a full pass over a source served
        nothing, or after ``max_consecutive_skips`` skipped records in a row: training would spin
        forever on such data, and evaluation would report nothing.
        """
        while True:
            record = self.mixture.next_record(self.rng)
            for name, reader in self.readers.items():  # files a reader skipped: in the skip counts
                self.preparer.count_unreadable(name, reader.unreadable, self.counted_unreadable)
            self._check_finished_passes()
            if record is None:
                return None
            source = record["source"]
            if record["id"] in self.known_bad:
                example = None
            else:
                first_pass = self.readers[source].passes == 0  # skips are counted once per record
                example = self.preparer(record, count=first_pass)
                if example is None:
                    self.known_bad.add(record["id"])
            if example is not None:
                self.pass_served[source] += 1
                self.skips_in_row = 0
                return example
            self.skips_in_row += 1
            if self.skips_in_row >= self.cfg.max_consecutive_skips:
                raise consecutive_skips_error(
                    self.cfg.max_consecutive_skips, self.preparer.by_source, self.preparer.examples
                )

    def _check_finished_passes(self) -> None:
        """Stop when a source finished a pass that read records but served none of them."""
        for name, reader in self.readers.items():
            if reader.passes == self.pass_passes[name]:
                continue
            finished = reader.last_pass  # of the last pass ended (the mixture may have tried another)
            self.pass_passes[name] = reader.passes
            served, self.pass_served[name] = self.pass_served[name], 0
            if served or not finished["rows"]:  # served something, or this slot's share is empty
                continue
            reasons = dict(split_fixes(self.preparer.by_source.get(name, {}))[0])
            examples = dict(self.preparer.examples.get(name, {}))
            for reason, n in finished.get("left_out", {}).items():
                reasons[reason] = reasons.get(reason, 0) + n
                examples.setdefault(reason, finished.get("examples", {}).get(reason, ""))
            where = f" (rank x worker slot {self.slot} of {self.num_slots})" if self.num_slots > 1 else ""
            raise no_usable_example_error(name, reader.spec.path, finished["rows"], reasons, examples, where)

    def _shuffled(self) -> Iterator[Example]:
        """Examples in shuffled order: a random draw from a full buffer, then the drained buffer."""
        size = self.cfg.shuffle_buffer
        while not self.exhausted:
            example = self._next_example()
            if example is None:
                self.exhausted = True
                break
            if size == 0:
                yield example
                continue
            self.buffer.append(example)
            if len(self.buffer) >= size:
                if self.bucketer is None:
                    self._make_bucketer(
                        quantile_bounds([e.num_frames for e in self.buffer], self.cfg.num_buckets)
                    )
                i = int(self.rng.integers(len(self.buffer)))
                self.buffer[i], self.buffer[-1] = self.buffer[-1], self.buffer[i]
                yield self.buffer.pop()
        if self.buffer and self.bucketer is None:
            self._make_bucketer(quantile_bounds([e.num_frames for e in self.buffer], self.cfg.num_buckets))
        while self.buffer:
            i = int(self.rng.integers(len(self.buffer)))
            self.buffer[i], self.buffer[-1] = self.buffer[-1], self.buffer[i]
            yield self.buffer.pop()

    def batches_iter(self) -> Iterator[ExampleBatch]:
        if self.flushing is None:
            for example in self._shuffled():
                batch = self.bucketer.add(example)
                if batch is not None:
                    yield self._emit(batch)
            self.flushing = list(self.bucketer.flush()) if self.bucketer is not None else []
            if self.cfg.drop_last:
                self.flushing = []
        while self.flushing:
            yield self._emit(self.flushing.pop(0))

    def _emit(self, examples: list[Example]) -> ExampleBatch:
        self.batches += 1
        return self.tally(examples)

    def tally(self, examples: list[Example] | None = None) -> ExampleBatch:
        """``examples`` as a batch carrying the skips and draws counted since the last one."""
        skips, drawn = self.preparer.counts, self.mixture.drawn
        by_source = Counter(
            {
                f"{source}/{reason}": n
                for source, counts in self.preparer.by_source.items()
                for reason, n in counts.items()
            }
        )
        out = ExampleBatch(
            examples or [],
            _counter_delta(skips, self._reported_skips),
            _counter_delta(drawn, self._reported_drawn),
            _counter_delta(by_source, self._reported_by_source),
        )
        self._reported_skips, self._reported_drawn = Counter(skips), Counter(drawn)
        self._reported_by_source = by_source
        return out

    # -- state -------------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        def records(examples: list[Example]) -> list[dict]:
            return [e.record for e in examples]

        return {
            "version": STATE_VERSION,
            "epoch": self.epoch,
            "slot": [self.slot, self.num_slots],
            "rng": self.rng.bit_generator.state,
            "mixture": self.mixture.state_dict(),
            "buffer": records(self.buffer),
            "bounds": self.bucketer.bounds if self.bucketer is not None else None,
            "buckets": [records(b) for b in self.bucketer.buckets] if self.bucketer is not None else None,
            "flushing": [records(b) for b in self.flushing] if self.flushing is not None else None,
            "exhausted": self.exhausted,
            "batches": self.batches,
            "counts": dict(self.preparer.counts),
            "reported_skips": dict(self._reported_skips),
            "reported_drawn": dict(self._reported_drawn),
            "reported_by_source": dict(self._reported_by_source),
            "pass_served": dict(self.pass_served),
            "pass_passes": dict(self.pass_passes),
            "skips_in_row": self.skips_in_row,
            "by_source": {k: dict(v) for k, v in self.preparer.by_source.items()},
            "skip_examples": self.preparer.examples,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"unsupported pipeline state version {state.get('version')}")
        if state["slot"] != [self.slot, self.num_slots]:
            raise ValueError(
                f"state was saved for slot {state['slot']} but this is slot {[self.slot, self.num_slots]}:"
                " resume with the same world size and number of dataloader workers"
            )
        self.rng.bit_generator.state = state["rng"]
        self.mixture.load_state_dict(state["mixture"])

        def examples(records: list[dict]) -> list[Example]:
            # Re-preparing is deterministic; these records passed validation when first read.
            out = [self.preparer(r) for r in records]
            return [e for e in out if e is not None]

        self.buffer = examples(state["buffer"])
        if state["bounds"] is not None:
            self._make_bucketer(list(state["bounds"]))
            self.bucketer.set_buckets([examples(b) for b in state["buckets"]])
        self.flushing = [examples(b) for b in state["flushing"]] if state["flushing"] is not None else None
        self.exhausted = state["exhausted"]
        self.batches = state["batches"]
        self.preparer.counts = Counter(state["counts"])
        self._reported_skips = Counter(state["reported_skips"])
        self._reported_drawn = Counter(state["reported_drawn"])
        self._reported_by_source = Counter(state.get("reported_by_source", {}))
        self.pass_served = Counter(state.get("pass_served", {}))
        self.pass_passes.update(
            state.get("pass_passes", {r.spec.name: r.passes for r in self.readers.values()})
        )
        self.skips_in_row = state.get("skips_in_row", 0)
        self.preparer.by_source = {k: Counter(v) for k, v in state.get("by_source", {}).items()}
        self.preparer.examples = state.get("skip_examples", {})


class SpeechDataPipeline(IterableDataset):
    """Streams :class:`ExampleBatch` es for this process's rank and dataloader worker.

    Use with :func:`build_dataloader` (a ``torchdata`` ``StatefulDataLoader``), whose
    ``state_dict()`` / ``load_state_dict()`` give exact resume across workers.

    ``targets`` builds the CTC targets (default: the base vocabulary with ``config``'s OOV policy,
    lowercasing and punctuation settings); ``extra_symbols`` are a new language's CTC symbols
    after the base ones (the model's ``extra_symbols``), so that its letters become targets.
    """

    def __init__(
        self,
        config: PipelineConfig,
        targets: CTCTargetBuilder | None = None,
        rank: int | None = None,
        world_size: int | None = None,
        final_tally: bool = False,
        extra_symbols: Sequence[str] = (),
    ):
        super().__init__()
        self.config = config
        # a finite pass (evaluation) ends with one batch without examples that carries the skips
        # counted after the last real batch, so nothing skipped goes unreported
        self.final_tally = final_tally
        if targets is not None and extra_symbols:
            raise ValueError("give extra_symbols through the targets' vocabulary, not both")
        if targets is None:
            from granite_train.text.japanese import KatakanaConverter
            from granite_train.text.vocab import CharVocab

            targets = CTCTargetBuilder(
                CharVocab(config.oov_policy, extra_symbols=extra_symbols),
                KatakanaConverter(),
                lowercase=config.lowercase,
                strip_punctuation=config.strip_punctuation,
            )
        self.targets = targets
        if rank is None or world_size is None:
            rank, world_size = _distributed_rank_world()
        if not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got {rank}, {world_size}")
        self.rank, self.world_size = rank, world_size
        self.epoch = 0
        self._state: _SlotState | None = None
        self._pending: dict[str, Any] | None = None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _slot(self) -> tuple[int, int]:
        info = get_worker_info()
        workers, worker = (info.num_workers, info.id) if info is not None else (1, 0)
        return self.rank * workers + worker, self.world_size * workers

    def __iter__(self) -> Iterator[ExampleBatch]:
        slot, num_slots = self._slot()
        pending, self._pending = self._pending, None
        epoch = pending["epoch"] if pending is not None else self.epoch
        state = _SlotState(self.config, self.targets, epoch, slot, num_slots)
        if pending is not None:
            state.load_state_dict(pending)
        self._state = state
        yield from state.batches_iter()
        if self.final_tally:
            yield state.tally()

    def state_dict(self) -> dict[str, Any]:
        if self._state is None:
            return {"pending": self._pending}
        return {"pending": self._state.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._pending = state.get("pending")
        self._state = None


def build_dataloader(
    pipeline: SpeechDataPipeline,
    num_workers: int = 0,
    collator: Collator | None = None,
    prefetch_factor: int | None = 2,
    snapshot_every_n_steps: int = 1,
):
    """A ``StatefulDataLoader`` over ``pipeline``: batches come pre-formed, the collator pads them."""
    from torchdata.stateful_dataloader import StatefulDataLoader

    collator = collator or Collator()
    return StatefulDataLoader(
        pipeline,
        batch_size=None,
        num_workers=num_workers,
        collate_fn=collator,
        prefetch_factor=prefetch_factor if num_workers > 0 else None,
        snapshot_every_n_steps=snapshot_every_n_steps,
        persistent_workers=False,
    )
