"""Collation of prepared examples into padded tensors."""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from granite_train.audio.augment import AdditiveNoise, SpecAugment
from granite_train.audio.degrade import Degrade
from granite_train.audio.features import LogMelFeatures
from granite_train.data.prepare import Example


@dataclass
class ExampleBatch:
    """What a pipeline slot yields: examples plus the diagnostics gathered since the last batch."""

    examples: list[Example]
    skipped: dict[str, int] = field(default_factory=dict)
    drawn: dict[str, int] = field(default_factory=dict)
    skipped_by_source: dict[str, int] = field(default_factory=dict)  # "source/reason" -> count


@dataclass
class Batch:
    """A padded batch. Features are ``None`` when they are computed on the training device.

    Shapes: ``B`` utterances, ``T`` samples, ``F`` 50 Hz frames, ``U`` target labels.
    """

    ids: list[str]
    sources: list[str]
    languages: list[str | None]
    texts: list[str | None]
    waveforms: torch.Tensor  # (B, T) float32, zero padded
    waveform_lengths: torch.Tensor  # (B,) int64
    targets: torch.Tensor  # (B, U) int64, padded with the blank id 0 (never a real target)
    target_lengths: torch.Tensor  # (B,) int64
    features: torch.Tensor | None = None  # (B, F, 160) float32
    feature_lengths: torch.Tensor | None = None  # (B,) int64
    skipped: dict[str, int] = field(default_factory=dict)  # skips/fixes counted since the last batch
    drawn: dict[str, int] = field(default_factory=dict)  # records drawn per source since the last batch
    skipped_by_source: dict[str, int] = field(default_factory=dict)  # the skips as "source/reason" -> count
    # per utterance, the waveform augmentations applied (``name(detail)``, e.g. ``reverb(rt60=0.41s,...)``);
    # empty when the collator has none configured
    augmentations: list[list[str]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def padding_ratio(self) -> float:
        """Share of padded frames in the batch (a data diagnostic worth logging)."""
        lengths = self.feature_lengths if self.feature_lengths is not None else self.waveform_lengths
        total = lengths.max().item() * len(lengths)
        return 1.0 - lengths.sum().item() / total if total else 0.0

    def to(self, device: torch.device | str) -> Batch:
        moved = {
            k: (v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v)
            for k, v in self.__dict__.items()
        }
        return type(self)(**moved)


def pad_1d(seqs: Sequence[torch.Tensor], value: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad 1-D tensors to ``(B, max_len)``; returns the padded tensor and the lengths."""
    lengths = torch.tensor([s.shape[-1] for s in seqs], dtype=torch.long)
    padded = torch.nn.utils.rnn.pad_sequence(list(seqs), batch_first=True, padding_value=value)
    return padded, lengths


class Collator:
    """Collates a list of :class:`Example` into a :class:`Batch`.

    Args:
        compute_features: Compute log-mel features here (in the loader worker). Set ``False`` to
            ship padded waveforms and compute features batched on the training device.
        noise: Additive noise applied to the padded waveforms (training only).
        degrade: Pitch shift and reverberation before the noise, telephone band and mu-law after
            it (training only; :mod:`granite_train.audio.degrade`). Each utterance draws from its own
            generator, seeded from ``seed``, the batch's ids and its position in the batch.
        spec_augment: SpecAugment applied to the features (training only; needs features here).
        seed: Base seed of the augmentations. Each batch's generator is seeded from this and the
            batch's sample ids, so a resumed run augments exactly as an uninterrupted one.
    """

    def __init__(
        self,
        compute_features: bool = True,
        noise: AdditiveNoise | None = None,
        spec_augment: SpecAugment | None = None,
        seed: int = 0,
        degrade: Degrade | None = None,
    ):
        if spec_augment is not None and not compute_features:
            raise ValueError("spec_augment needs compute_features=True (apply it on the device otherwise)")
        self.compute_features = compute_features
        self.features = LogMelFeatures() if compute_features else None
        self.noise = noise
        self.spec_augment = spec_augment
        self.degrade = degrade if degrade is not None and degrade.active else None
        self.seed = seed

    def _generator(self, ids: list[str]) -> torch.Generator:
        return torch.Generator().manual_seed(zlib.crc32("\n".join([str(self.seed), *ids]).encode()))

    def _utterance_generator(self, ids: list[str], index: int) -> torch.Generator:
        key = "\n".join([str(self.seed), "degrade", str(index), *ids])
        return torch.Generator().manual_seed(zlib.crc32(key.encode()))

    def __call__(self, examples: ExampleBatch | Sequence[Example]) -> Batch:
        skipped, drawn, by_source = {}, {}, {}
        if isinstance(examples, ExampleBatch):
            skipped, drawn, by_source = examples.skipped, examples.drawn, examples.skipped_by_source
            examples = examples.examples
        if not examples:
            raise ValueError("cannot collate an empty batch")
        waves, wave_lengths = pad_1d([e.waveform for e in examples])
        targets, target_lengths = pad_1d([torch.tensor(e.targets, dtype=torch.long) for e in examples], 0)
        batch = Batch(
            ids=[e.id for e in examples],
            sources=[e.record["source"] for e in examples],
            languages=[e.record.get("language") for e in examples],
            texts=[e.record.get("text") for e in examples],
            waveforms=waves,
            waveform_lengths=wave_lengths,
            targets=targets.long(),
            target_lengths=target_lengths,
            skipped=dict(skipped),
            drawn=dict(drawn),
            skipped_by_source=dict(by_source),
        )
        generator = self._generator(batch.ids) if (self.noise or self.spec_augment) else None
        applied: list[list[str]] = [[] for _ in examples]
        plans = None
        if self.degrade is not None:  # speed ran in the preparer; here pitch, room, noise, channel
            plans = [
                self.degrade.sample_plan(self._utterance_generator(batch.ids, i))
                for i in range(len(examples))
            ]
            for names, plan in zip(applied, plans):
                names.extend(plan.describe("before_noise"))
            batch.waveforms = self.degrade.apply_batch(batch.waveforms, wave_lengths, plans, "before_noise")
        if self.noise is not None:
            state = generator.get_state()  # noise draws its SNRs first: read them, then rewind
            snr_db = self.noise.sample_snr_db(len(examples), generator)
            generator.set_state(state)
            for names, snr in zip(applied, snr_db.tolist()):
                if snr == snr:  # not NaN: noise added
                    names.append(f"noise(snr={snr:.1f}dB)")
            batch.waveforms = self.noise(batch.waveforms, wave_lengths, generator=generator)
        if plans is not None:
            for names, plan in zip(applied, plans):
                names.extend(plan.describe("after_noise"))
            batch.waveforms = self.degrade.apply_batch(batch.waveforms, wave_lengths, plans, "after_noise")
        if self.degrade is not None or self.noise is not None:
            batch.augmentations = applied
        if self.features is not None:
            with torch.no_grad():
                batch.features, batch.feature_lengths = self.features(batch.waveforms, wave_lengths)
            if self.spec_augment is not None:
                batch.features = self.spec_augment(batch.features, batch.feature_lengths, generator=generator)
        return batch
