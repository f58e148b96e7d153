"""Streaming pipeline: mixture, sharding, bucketing, bad input, exact resume."""

from __future__ import annotations

import io
import json
from collections import Counter

import numpy as np
import pytest
import torch

from granite_train.data.bucketing import DurationBucketer, geometric_bounds, quantile_bounds
from granite_train.data.mixture import mixture_probabilities
from granite_train.data.pipeline import PipelineConfig, SpeechDataPipeline, build_dataloader
from granite_train.data.prepare import PrepareConfig, SkipReason
from granite_train.data.sources import SourceSpec
from tests.corpus import audio_bytes, make_corpus, speechlike, write_parquet


def run_loader(pipeline, num_workers=0, stop_after=None, state=None):
    loader = build_dataloader(pipeline, num_workers=num_workers)
    if state is not None:
        loader.load_state_dict(state)
    batches, saved = [], None
    for batch in loader:
        batches.append(batch.ids)
        if stop_after is not None and len(batches) == stop_after:
            saved = loader.state_dict()
            break
    return batches, saved


@pytest.fixture(scope="module")
def two_corpora(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpora")
    ids_a = make_corpus(root, "a", 48, num_shards=4, seed=1)
    ids_b = make_corpus(root, "b", 24, num_shards=2, seed=2, durations=(1.0, 4.0))
    return root, ids_a, ids_b


def pipeline_config(root, **overrides) -> PipelineConfig:
    sources = [SourceSpec("a", str(root / "a"), weight=1.0, size=2.0), SourceSpec("b", str(root / "b"))]
    cfg = dict(sources=sources, seed=7, shuffle_buffer=8, max_frames=600, num_buckets=4)
    cfg.update(overrides)
    return PipelineConfig(**cfg)


# -- mixture -----------------------------------------------------------------------------------


def test_mixture_probabilities_alpha():
    sizes = [100.0, 10.0, 1.0]
    np.testing.assert_allclose(mixture_probabilities([1, 1, 1], sizes, 0.0), [1 / 3] * 3)
    np.testing.assert_allclose(mixture_probabilities([1, 1, 1], sizes, 1.0), np.array(sizes) / 111)
    p = mixture_probabilities([1, 2, 1], sizes, 0.6)
    expected = np.array([100**0.6, 2 * 10**0.6, 1.0])
    np.testing.assert_allclose(p, expected / expected.sum())
    with pytest.raises(ValueError):
        mixture_probabilities([0, 0], [1, 1], 1.0)


def test_mixture_draws_follow_probabilities(two_corpora):
    root, _, _ = two_corpora
    # sizes 3:1, alpha 1 -> 75% / 25%; infinite mode so neither source runs dry.
    cfg = pipeline_config(
        root,
        infinite=True,
        shuffle_buffer=0,
        alpha=1.0,
        sources=[SourceSpec("a", str(root / "a"), size=3.0), SourceSpec("b", str(root / "b"), size=1.0)],
        prepare=PrepareConfig(min_duration=0.1),
    )
    drawn = Counter()
    for i, batch in enumerate(build_dataloader(SpeechDataPipeline(cfg, rank=0, world_size=1))):
        drawn.update(batch.drawn)
        if i == 60:
            break
    total = sum(drawn.values())
    assert total > 150
    assert abs(drawn["a"] / total - 0.75) < 0.08, drawn


# -- bucketing ---------------------------------------------------------------------------------


class Item:
    def __init__(self, frames):
        self.num_frames = frames


def test_bucketer_respects_budget_and_keeps_every_item():
    rng = np.random.default_rng(0)
    frames = rng.integers(20, 1000, size=500).tolist()
    bucketer = DurationBucketer(quantile_bounds(frames, 10), max_frames=4000)
    batches = [b for f in frames if (b := bucketer.add(Item(f))) is not None]
    batches += list(bucketer.flush())
    assert sorted(x.num_frames for b in batches for x in b) == sorted(frames)
    for b in batches:
        assert len(b) * max(x.num_frames for x in b) <= 4000 or len(b) == 1


def test_geometric_bounds_bound_relative_width():
    bounds = geometric_bounds(10, 1500, 1.1)
    assert bounds[-1] == 1500
    assert all(b2 / b1 <= 1.1 + 1 / b1 for b1, b2 in zip(bounds, bounds[1:]))


# -- sharding, completeness, determinism ---------------------------------------------------


@pytest.mark.parametrize("num_workers", [0, 2])
def test_ranks_and_workers_see_disjoint_samples_covering_the_corpus(two_corpora, num_workers):
    root, ids_a, ids_b = two_corpora
    seen = []
    for rank in range(2):
        batches, _ = run_loader(
            SpeechDataPipeline(pipeline_config(root), rank=rank, world_size=2), num_workers
        )
        seen += [i for b in batches for i in b]
    assert len(seen) == len(set(seen)), "a sample was served twice"
    assert sorted(seen) == sorted(f"a/{i}" for i in ids_a) + sorted(f"b/{i}" for i in ids_b)


def test_same_seed_same_batches_other_seed_other_order(two_corpora):
    root, _, _ = two_corpora
    first, _ = run_loader(SpeechDataPipeline(pipeline_config(root), rank=0, world_size=1))
    again, _ = run_loader(SpeechDataPipeline(pipeline_config(root), rank=0, world_size=1))
    other, _ = run_loader(SpeechDataPipeline(pipeline_config(root, seed=8), rank=0, world_size=1))
    assert first == again
    assert first != other


def test_batches_stay_under_frame_budget_and_are_bucketed(two_corpora):
    root, _, _ = two_corpora
    loader = build_dataloader(SpeechDataPipeline(pipeline_config(root, max_frames=800), rank=0, world_size=1))
    for batch in loader:
        assert batch.features.shape[0] == len(batch)
        assert batch.features.shape[-1] == 160
        assert batch.feature_lengths.max() == batch.features.shape[1]
        if len(batch) > 1:
            assert len(batch) * batch.feature_lengths.max().item() <= 800


# -- exact resume ------------------------------------------------------------------------------


@pytest.mark.parametrize(("num_workers", "rank", "k"), [(0, 0, 3), (2, 1, 5), (2, 0, 1)])
def test_exact_resume_after_batch_k(two_corpora, num_workers, rank, k):
    root, _, _ = two_corpora

    def pipeline():
        return SpeechDataPipeline(pipeline_config(root), rank=rank, world_size=2)

    full, _ = run_loader(pipeline(), num_workers)
    assert len(full) > k + 2
    head, state = run_loader(pipeline(), num_workers, stop_after=k)
    assert head == full[:k]
    # The state must survive a safe round trip to disk (no pickle).
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)
    tail, _ = run_loader(pipeline(), num_workers, state=state)
    assert tail == full[k:]


def test_resume_in_infinite_mode_across_source_passes(two_corpora):
    root, _, _ = two_corpora

    def pipeline():
        return SpeechDataPipeline(
            pipeline_config(root, infinite=True, shuffle_buffer=4), rank=0, world_size=1
        )

    def take(loader, n):
        out = []
        for batch in loader:
            out.append(batch.ids)
            if len(out) == n:
                break
        return out

    full = take(build_dataloader(pipeline()), 60)  # > one pass over source b
    loader = build_dataloader(pipeline())
    head = take(loader, 25)
    state = loader.state_dict()
    resumed = build_dataloader(pipeline())
    resumed.load_state_dict(state)
    assert head + take(resumed, 35) == full


# -- bad input ---------------------------------------------------------------------------------


def test_every_kind_of_bad_input_is_skipped_and_counted(tmp_path):
    good = [
        {
            "id": f"good{i}",
            "audio": {"bytes": audio_bytes(speechlike(1.0, seed=i)), "path": None},
            "text": "hello world",
            "language": "en",
        }
        for i in range(3)
    ]
    wav8k = audio_bytes(speechlike(1.0, sr=8000, seed=5), sr=8000)
    stereo = audio_bytes(speechlike(1.0, seed=6, channels=2))
    nan_wave = speechlike(1.0, seed=7)
    nan_wave[100] = np.nan
    bad = [
        ("corrupt", {"bytes": b"RIFF\x00\x00garbage" * 10, "path": None}, "text"),
        ("empty", {"bytes": audio_bytes(np.zeros(0, dtype=np.float32), fmt="WAV"), "path": None}, "text"),
        ("nan", {"bytes": audio_bytes(nan_wave, fmt="WAV"), "path": None}, "text"),
        ("silent", {"bytes": audio_bytes(np.zeros(16000, dtype=np.float32)), "path": None}, "text"),
        ("crowded", {"bytes": audio_bytes(speechlike(0.3)), "path": None}, "x" * 40),  # 15 frames, 40 labels
        ("oov", {"bytes": audio_bytes(speechlike(1.0)), "path": None}, "中文"),  # drop policy -> empty target
        ("long", {"bytes": audio_bytes(speechlike(3.5)), "path": None}, "a long one"),
        ("short", {"bytes": audio_bytes(speechlike(0.05)), "path": None}, "a"),
        ("missing", {"bytes": None, "path": str(tmp_path / "nope.wav")}, "text"),
        ("notext", {"bytes": audio_bytes(speechlike(1.0)), "path": None}, ""),
        ("noaudio", {"bytes": None, "path": None}, "text"),
        ("rate8k", {"bytes": wav8k, "path": None}, "fixed rate"),
        ("stereo", {"bytes": stereo, "path": None}, "fixed channels"),
    ]
    rows = good + [{"id": i, "audio": a, "text": t, "language": "en"} for i, a, t in bad]
    write_parquet(tmp_path / "bad" / "shard-0.parquet", rows)
    cfg = PipelineConfig(
        sources=[SourceSpec("bad", str(tmp_path / "bad"))],
        shuffle_buffer=0,
        max_frames=10_000,
        prepare=PrepareConfig(min_duration=0.1, max_duration=3.0),
    )
    skipped, ids = Counter(), []
    for batch in build_dataloader(SpeechDataPipeline(cfg, rank=0, world_size=1)):
        skipped.update(batch.skipped)
        ids += batch.ids
        assert torch.isfinite(batch.features).all()
    assert sorted(ids) == sorted(f"bad/{i}" for i in ["good0", "good1", "good2", "rate8k", "stereo"])
    assert skipped == {
        SkipReason.DECODE_ERROR.value: 1,
        SkipReason.EMPTY_AUDIO.value: 1,
        SkipReason.NON_FINITE.value: 1,
        SkipReason.SILENCE.value: 1,
        SkipReason.FRAMES_LT_TARGETS.value: 1,
        SkipReason.EMPTY_TARGET.value: 1,
        SkipReason.TOO_LONG.value: 1,
        SkipReason.TOO_SHORT.value: 1,
        SkipReason.MISSING_FILE.value: 1,
        SkipReason.NO_TEXT.value: 1,
        SkipReason.NO_AUDIO.value: 1,
        SkipReason.FIXED_SAMPLE_RATE.value: 1,
        SkipReason.FIXED_CHANNELS.value: 1,
    }


def test_reject_policy_skips_utterances_with_oov_text(tmp_path):
    rows = [
        {
            "id": "ok",
            "audio": {"bytes": audio_bytes(speechlike(1.0)), "path": None},
            "text": "fine",
            "language": "en",
        },
        {
            "id": "mixed",
            "audio": {"bytes": audio_bytes(speechlike(1.0)), "path": None},
            "text": "fine 中",
            "language": "en",
        },
    ]
    write_parquet(tmp_path / "c" / "s.parquet", rows)
    cfg = PipelineConfig(
        sources=[SourceSpec("c", str(tmp_path / "c"))], shuffle_buffer=0, oov_policy="reject"
    )
    batches = list(build_dataloader(SpeechDataPipeline(cfg, rank=0, world_size=1)))
    assert [i for b in batches for i in b.ids] == ["c/ok"]
    assert sum((Counter(b.skipped) for b in batches), Counter())[SkipReason.OOV_TEXT.value] == 1


# -- source kinds ------------------------------------------------------------------------------


def test_jsonl_manifest_with_relative_paths(tmp_path):
    import soundfile as sf

    (tmp_path / "wavs").mkdir()
    lines = []
    for i in range(3):
        sf.write(tmp_path / "wavs" / f"u{i}.wav", speechlike(1.0, sr=22050, seed=i), 22050)
        lines.append({"audio_filepath": f"wavs/u{i}.wav", "text": f"utterance {i}", "duration": 1.0})
    (tmp_path / "train.jsonl").write_text("\n".join(json.dumps(x) for x in lines))
    spec = SourceSpec("man", str(tmp_path / "train.jsonl"), id_column=None, language="en")
    assert spec.kind == "jsonl"
    cfg = PipelineConfig(sources=[spec], shuffle_buffer=0)
    batches = list(build_dataloader(SpeechDataPipeline(cfg, rank=0, world_size=1)))
    texts = sorted(t for b in batches for t in b.texts)
    assert texts == ["utterance 0", "utterance 1", "utterance 2"]
    assert sum(b.skipped.get(SkipReason.FIXED_SAMPLE_RATE.value, 0) for b in batches) == 3


def test_audiofolder_source_reads_real_8khz_speech(fsdd_dir):
    spec = SourceSpec("fsdd", str(fsdd_dir), id_column=None, language="en")
    assert spec.kind == "audiofolder"
    cfg = PipelineConfig(sources=[spec], shuffle_buffer=0, max_frames=2000)
    batch = next(iter(build_dataloader(SpeechDataPipeline(cfg, rank=0, world_size=1))))
    assert batch.texts[0] in {"zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"}
    assert batch.skipped.get(SkipReason.FIXED_SAMPLE_RATE.value, 0) >= len(batch)
    assert batch.features.shape[-1] == 160


# -- augmentation ------------------------------------------------------------------------------


def test_speed_perturbation_is_per_utterance_seeded_and_survives_resume(two_corpora):
    root, _, _ = two_corpora
    prepare = PrepareConfig(speed_factors=[0.9, 1.1])

    def pipeline(speed=True):
        cfg = pipeline_config(root, prepare=prepare if speed else PrepareConfig())
        return SpeechDataPipeline(cfg, rank=0, world_size=1)

    def lengths(loader):
        return {i: n for b in loader for i, n in zip(b.ids, b.waveform_lengths.tolist())}

    plain, fast = lengths(build_dataloader(pipeline(False))), lengths(build_dataloader(pipeline()))
    assert plain.keys() == fast.keys()
    ratios = {round(plain[i] / fast[i], 2) for i in plain}
    assert ratios == {0.9, 1.1}, ratios  # both factors drawn, every utterance perturbed
    full, _ = run_loader(pipeline())
    head, state = run_loader(pipeline(), stop_after=4)
    tail, _ = run_loader(pipeline(), state=state)
    assert head + tail == full


def test_collator_augmentation_is_deterministic_per_batch(two_corpora):
    from granite_train.audio.augment import AdditiveNoise, SpecAugment
    from granite_train.data.collate import Collator

    root, _, _ = two_corpora
    cfg = pipeline_config(root, shuffle_buffer=0)
    examples = next(iter(SpeechDataPipeline(cfg, rank=0, world_size=1))).examples
    augment = dict(noise=AdditiveNoise(p=1.0), spec_augment=SpecAugment(p=1.0), seed=3)
    a, b = Collator(**augment)(examples), Collator(**augment)(examples)
    clean = Collator()(examples)
    torch.testing.assert_close(a.features, b.features, rtol=0, atol=0)
    assert not torch.equal(a.features, clean.features)
    assert not torch.equal(Collator(**{**augment, "seed": 4})(examples).features, a.features)
