"""Greedy-CTC evaluation of a stage-1 encoder over test sets: WER, CER and RTFx per dataset.

Per dataset::

    source (SourceSpec mapping) -> SpeechDataPipeline (one pass, no shuffle, no augmentation,
      lenient validation) -> Collator (log-mel; or on the device) -> encoder (eval, inference mode,
      optional autocast) -> greedy CTC decode -> error_rates(original transcripts, hypotheses)

* Nothing is lost silently. The pipeline's training filters are off (no minimum CTC length, no
  text requirement, no silence floor, durations from 257 samples up to ``max_duration``); what
  still cannot be scored (undecodable or empty audio, no transcript, over ``max_duration``) is
  counted per reason in ``details["skipped"]`` and logged as a warning. ``details["records"]``
  is every record read, so ``records == num_utts + sum(skipped)``.
* References are the original transcripts (``batch.texts``), not the OOV-filtered CTC targets, and
  both sides go through the same named normalizer (name and version in the result). A dataset may
  set ``reference: ctc_target`` instead, to score against the text the CTC head can spell (the
  katakana reading for Japanese, where the original kanji are out of the vocabulary).
* RTFx: audio seconds over wall seconds from opening the stream to the last decoded batch: data
  loading, decoding, resampling, features, the encoder and CTC decoding; not scoring (RECIPE.md
  "Evaluation"). One warm-up forward runs before any timing.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from granite_train.audio.features import LogMelFeatures
from granite_train.data.collate import Collator, ExampleBatch
from granite_train.data.pipeline import (
    FRAME_RATE,
    PipelineConfig,
    SpeechDataPipeline,
    _counter_delta,
    build_dataloader,
)
from granite_train.data.prepare import PrepareConfig
from granite_train.data.sources import SourceSpec
from granite_train.eval.ctc_decode import greedy_ctc_decode
from granite_train.eval.metrics import error_rates
from granite_train.eval.report import EvalResult, results_to_markdown, write_hypotheses, write_result_files
from granite_train.text.normalize import NORMALIZER_NAMES
from granite_train.text.vocab import CharVocab

log = logging.getLogger(__name__)

__all__ = ["EvalDataset", "evaluate_ctc", "resolve_device", "run_eval"]

DTYPES = {
    "float32": None,
    "fp32": None,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}
REFERENCES = ("text", "ctc_target")
SAMPLE_RATE = LogMelFeatures.SAMPLE_RATE


@dataclass
class EvalDataset:
    """One test set: a pipeline source plus how to score it.

    Attributes:
        source: where the audio and transcripts are (``split`` is usually ``test``).
        normalizer: "whisper_english", "basic", "none", "auto" (whisper_english for English, basic
            otherwise) or ``None`` for the run's default.
        reference: "text" (the original transcript) or "ctc_target" (the transcript as the CTC
            head spells it: katakana reading for Japanese, out-of-vocabulary characters dropped).
        target_language: generation eval (:mod:`granite_train.eval.generate`) of an ``ast`` set
            (``source.task``): the language to translate into, for records without their own.
        keywords_in_prompt: generation eval of a keyword set: ``True`` / ``False`` / ``"both"``,
            or ``None`` for the run's default. Ignored by greedy-CTC evaluation.
    """

    source: SourceSpec
    normalizer: str | None = None
    reference: str = "text"
    target_language: str | None = None
    keywords_in_prompt: bool | str | None = None

    def __post_init__(self) -> None:
        if self.normalizer is not None and self.normalizer not in (*NORMALIZER_NAMES, "auto"):
            raise ValueError(
                f"dataset {self.source.name!r}: normalizer must be one of {(*NORMALIZER_NAMES, 'auto')}, "
                f"got {self.normalizer!r}"
            )
        if self.reference not in REFERENCES:
            raise ValueError(f"dataset {self.source.name!r}: reference must be one of {REFERENCES}")
        if self.keywords_in_prompt not in (None, True, False, "both"):
            raise ValueError(
                f"dataset {self.source.name!r}: keywords_in_prompt must be true, false or both, "
                f"got {self.keywords_in_prompt!r}"
            )

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any] | EvalDataset, index: int = 0) -> EvalDataset:
        """From a config mapping: :class:`SourceSpec` fields plus this class's own fields."""
        if isinstance(values, EvalDataset):
            return values
        if isinstance(values, SourceSpec):
            return cls(values)
        values = dict(values)
        own_fields = {f.name for f in fields(cls)} - {"source"}
        own = {k: values.pop(k) for k in own_fields if k in values}
        known = {f.name for f in fields(SourceSpec)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(
                f"datasets[{index}]: unknown field(s) {unknown}; known: {sorted(known | own_fields)}"
            )
        return cls(SourceSpec(**values), **own)


def resolve_device(device: str | torch.device) -> torch.device:
    """``"auto"`` -> cuda when available, else cpu; anything else as ``torch.device``."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _autocast(device: torch.device, dtype: str):
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    amp = DTYPES[dtype]
    if amp is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=amp)


def _resolve_normalizer(name: str, language: str | None) -> str:
    if name != "auto":
        return name
    english = language is not None and language.replace("_", "-").split("-")[0].lower() == "en"
    return "whisper_english" if english else "basic"


class _TalliedPipeline(SpeechDataPipeline):
    """The pipeline, plus one last empty batch per slot with the skips counted after its last batch.

    A batch carries the skips since the previous one, so records skipped after a slot's (dataloader
    worker's) last batch, or in a slot that never fills one, would otherwise go unreported.
    """

    def __iter__(self):
        yield from super().__iter__()
        state = self._state
        yield ExampleBatch(
            [],
            _counter_delta(state.preparer.counts, state._reported_skips),
            _counter_delta(state.mixture.drawn, state._reported_drawn),
        )


class _TalliedCollator(Collator):
    """Collator that passes the final (empty) tally batches through as they are."""

    def __call__(self, examples):
        if isinstance(examples, ExampleBatch) and not examples.examples:
            return examples
        return super().__call__(examples)


def _pipeline_config(source: SourceSpec, max_frames: int, max_duration: float) -> PipelineConfig:
    prepare = PrepareConfig(
        sample_rate=SAMPLE_RATE,
        min_duration=LogMelFeatures.MIN_SAMPLES / SAMPLE_RATE,  # the least the features accept
        max_duration=max_duration,
        silence_db=-math.inf,  # only all-zero audio counts as silence
        require_text=False,  # counted here instead, and empty targets are still scorable
        check_ctc_length=False,  # a model is scored on what it outputs, whatever the length
    )
    return PipelineConfig(
        sources=[source],
        seed=0,
        infinite=False,
        shuffle_buffer=0,  # no shuffling; duration buckets still batch similar lengths
        max_frames=max_frames,
        # few, wide buckets: partly filled ones hold decoded audio until the end of the pass
        bucket_ratio=1.25,
        drop_last=False,
        oov_policy="drop",
        prepare=prepare,
    )


def _warmup(encoder: nn.Module, device: torch.device, dtype: str, input_dim: int) -> None:
    feats = torch.zeros(1, 2 * FRAME_RATE, input_dim, device=device)
    with torch.inference_mode(), _autocast(device, dtype):
        encoder(feats, torch.tensor([feats.shape[1]], device=device))
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _evaluate_one(
    encoder: nn.Module,
    dataset: EvalDataset,
    *,
    device: torch.device,
    dtype: str,
    max_frames: int,
    max_duration: float,
    normalizer: str,
    num_workers: int,
    features_on_device: bool,
    progress: bool,
    vocab: CharVocab,
) -> tuple[EvalResult, list[dict[str, Any]]]:
    spec = dataset.source
    featurizer = LogMelFeatures().to(device) if features_on_device else None
    rows: list[dict[str, Any]] = []
    skipped: Counter[str] = Counter()
    repaired: Counter[str] = Counter()
    drawn: Counter[str] = Counter()
    batches = 0

    start = time.perf_counter()
    pipeline = _TalliedPipeline(_pipeline_config(spec, max_frames, max_duration), rank=0, world_size=1)
    collator = _TalliedCollator(compute_features=not features_on_device)
    loader = build_dataloader(pipeline, num_workers=num_workers, collator=collator)
    bar = tqdm(desc=f"eval {spec.name}", unit="utt", disable=not progress, dynamic_ncols=True)
    for batch in loader:
        for reason, n in batch.skipped.items():
            (repaired if reason.startswith("fixed_") else skipped)[reason] += n
        drawn.update(batch.drawn)
        if isinstance(batch, ExampleBatch):  # a slot's final tally: counts only
            continue
        batches += 1
        if featurizer is not None:
            feats, feat_lengths = featurizer(
                batch.waveforms.to(device, non_blocking=True), batch.waveform_lengths.to(device)
            )
        else:
            feats = batch.features.to(device, non_blocking=True)  # (B, F, 160)
            feat_lengths = batch.feature_lengths.to(device)  # (B,)
        with torch.inference_mode(), _autocast(device, dtype):
            out = encoder(feats, feat_lengths)
        hyps = greedy_ctc_decode(out.logits, out.lengths, vocab)  # argmax on the device, then CPU
        for i, hyp in enumerate(hyps):
            text = batch.texts[i]
            if text is None:
                skipped["no_text"] += 1
                continue
            if dataset.reference == "ctc_target":
                text = vocab.decode(batch.targets[i, : int(batch.target_lengths[i])].tolist())
            rows.append(
                {
                    "dataset": spec.name,
                    "id": batch.ids[i],
                    "language": batch.languages[i],
                    "duration": int(batch.waveform_lengths[i]) / SAMPLE_RATE,
                    "reference": text,
                    "hypothesis": hyp,
                }
            )
        bar.update(len(batch))
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    wall = time.perf_counter() - start
    bar.close()

    languages = Counter(r["language"] or "?" for r in rows)
    language = spec.language or (languages.most_common(1)[0][0] if languages else "?")
    norm = _resolve_normalizer(dataset.normalizer or normalizer, language)
    rows.sort(key=lambda r: r["id"])
    metrics = error_rates(
        [r["reference"] for r in rows], [r["hypothesis"] for r in rows], normalizer=norm, language=language
    )
    audio_seconds = sum(r["duration"] for r in rows)
    result = EvalResult.from_metrics(spec.name, metrics, audio_seconds, wall)
    result.details.update(
        records=sum(drawn.values()),
        skipped=dict(sorted(skipped.items())),
        repaired=dict(sorted(repaired.items())),
        languages=dict(sorted(languages.items())),
        source={"path": spec.path, "kind": spec.kind, "split": spec.split, "config": spec.config},
        reference=dataset.reference,
        decoding="greedy_ctc",
        device=str(device),
        dtype=dtype,
        max_frames=max_frames,
        batches=batches,
    )
    if skipped:
        log.warning(
            "%s: %d of %d records could not be scored and are left out of WER/CER: %s",
            spec.name,
            sum(skipped.values()),
            result.details["records"],
            dict(skipped),
        )
    if not rows:
        log.warning("%s: no utterance could be scored", spec.name)
    return result, rows


def evaluate_ctc(
    encoder: nn.Module,
    datasets: Sequence[Mapping[str, Any] | EvalDataset | SourceSpec],
    *,
    device: str | torch.device = "cpu",
    dtype: str = "float32",
    max_frames: int = 20_000,
    max_duration: float | None = None,
    normalizer: str = "whisper_english",
    num_workers: int = 0,
    features_on_device: bool | None = None,
    progress: bool = True,
    hypotheses_path: str | Path | None = None,
    model_name: str | None = None,
) -> list[EvalResult]:
    """Greedy-CTC WER / CER and RTFx of ``encoder`` on each dataset (see the module doc).

    Args:
        encoder: a :class:`~granite_train.models.encoder.CTCEncoder`, or any module called as
            ``encoder(features (B, F, 160), lengths (B,))`` returning an object with ``logits``
            ``(B, F, V)`` and ``lengths`` ``(B,)``. Moved to ``device``; run in eval mode (its
            training flag is restored afterwards).
        datasets: test sets: :class:`EvalDataset`, :class:`SourceSpec` or mappings of SourceSpec
            fields (``name``, ``path``, ``kind``, ``split``, ``language``, ``text_column``, ...)
            plus optional ``normalizer`` and ``reference`` (see :class:`EvalDataset`).
        device: "cpu", "cuda", "cuda:1", or "auto".
        dtype: "float32", or "bfloat16" / "float16" for autocast (features stay float32).
        max_frames: padded 50 Hz frames per batch.
        max_duration: longest utterance in seconds (longer ones are skipped and counted); default
            ``max_frames / 50``, the longest that fits a batch.
        normalizer: default normalizer ("whisper_english", "basic", "none", "auto"); a dataset's
            own ``normalizer`` overrides it.
        num_workers: dataloader workers (each streams a disjoint share of the dataset).
        features_on_device: compute log-mel features on ``device`` (default: when it is not the CPU)
            instead of in the loader.
        progress: show a tqdm bar per dataset.
        hypotheses_path: write one JSON line per scored utterance (dataset, id, language, duration,
            reference, hypothesis), sorted by id within each dataset.
        model_name: recorded in each result's details.

    Returns:
        One :class:`EvalResult` per dataset, in order.
    """
    device = resolve_device(device)
    specs = [EvalDataset.from_mapping(d, i) for i, d in enumerate(datasets)]
    if not specs:
        raise ValueError("no datasets to evaluate")
    names = [d.source.name for d in specs]
    if len(set(names)) != len(names):
        raise ValueError(f"dataset names must be unique, got {names}")
    if normalizer not in (*NORMALIZER_NAMES, "auto"):
        raise ValueError(f"normalizer must be one of {(*NORMALIZER_NAMES, 'auto')}, got {normalizer!r}")
    _autocast(device, dtype)  # validates dtype
    if max_duration is None:
        max_duration = max_frames / FRAME_RATE
    if features_on_device is None:
        features_on_device = device.type != "cpu"

    was_training = encoder.training
    encoder = encoder.to(device).eval()
    try:
        config = getattr(encoder, "config", None)
        _warmup(encoder, device, dtype, getattr(config, "input_dim", LogMelFeatures.FEATURE_DIM))
        vocab = CharVocab()
        results, all_rows = [], []
        for dataset in specs:
            result, rows = _evaluate_one(
                encoder,
                dataset,
                device=device,
                dtype=dtype,
                max_frames=max_frames,
                max_duration=max_duration,
                normalizer=normalizer,
                num_workers=num_workers,
                features_on_device=features_on_device,
                progress=progress,
                vocab=vocab,
            )
            if model_name is not None:
                result.details["model"] = model_name
            results.append(result)
            all_rows.extend(rows)
    finally:
        encoder.train(was_training)
    if hypotheses_path is not None:
        write_hypotheses(all_rows, hypotheses_path)
    return results


def run_eval(
    model: str | Path,
    datasets: Sequence[Mapping[str, Any]],
    output_dir: str | Path,
    *,
    device: str = "auto",
    dtype: str = "float32",
    attn_impl: str = "sdpa",
    max_frames: int = 20_000,
    max_duration: float | None = None,
    normalizer: str = "whisper_english",
    num_workers: int = 0,
    write_hypotheses: bool = True,
    progress: bool = True,
) -> tuple[list[EvalResult], str]:
    """Load ``model`` (exported folder or training ``.ckpt``), evaluate, write the result files.

    Writes ``results.json``, ``results.md`` and (``write_hypotheses``) ``hypotheses.jsonl`` under
    ``output_dir``; returns the results and the markdown table.
    """
    from granite_train.models.export import load_encoder

    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    device_ = resolve_device(device)
    encoder = load_encoder(model, attn_impl=attn_impl)
    if dtype in ("float32", "fp32"):
        encoder = encoder.float()  # a bf16 export is evaluated in fp32 unless asked otherwise
    log.info("evaluating %s on %s (%s)", model, device_, dtype)
    results = evaluate_ctc(
        encoder,
        datasets,
        device=device_,
        dtype=dtype,
        max_frames=max_frames,
        max_duration=max_duration,
        normalizer=normalizer,
        num_workers=num_workers,
        progress=progress,
        hypotheses_path=out / "hypotheses.jsonl" if write_hypotheses else None,
        model_name=str(model),
    )
    table = results_to_markdown(results, average=len(results) > 1)
    settings = f"model: `{model}`  \ndevice: {device_}, dtype: {dtype}, max_frames: {max_frames}"
    write_result_files(results, out, "Greedy-CTC evaluation", settings, table)
    return results, table
