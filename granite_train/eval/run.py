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
* RTFx, as the Open ASR leaderboard times it: audio seconds over the summed wall time of each
  batch's features, encoder and CTC decoding (audio decoding and loading excluded; RECIPE.md
  "Evaluation"). ``details["stream_wall_seconds"]`` is the whole pass, loading included. One
  warm-up forward runs before any timing.
* ``protocol: open_asr`` scores as the leaderboard (:class:`EvalSettings`).
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from granite_train.audio.features import LogMelFeatures
from granite_train.data.collate import ExampleBatch
from granite_train.data.pipeline import FRAME_RATE, SpeechDataPipeline, build_dataloader
from granite_train.data.sources import SourceSpec
from granite_train.eval.ctc_decode import greedy_ctc_decode
from granite_train.eval.metrics import error_rates
from granite_train.eval.report import EvalResult, results_to_markdown, write_hypotheses, write_result_files
from granite_train.eval.settings import (
    SAMPLE_RATE,
    EvalDataset,
    EvalSettings,
    TallyPassingCollator,
    drop_unscorable_references,
    eval_datasets,
    eval_pipeline_config,
    resolve_device,
    resolve_normalizer,
)
from granite_train.eval.turboctc import is_turboctc_folder, turboctc_eval_parts
from granite_train.text.normalize import get_normalizer
from granite_train.text.vocab import CharVocab

log = logging.getLogger(__name__)

__all__ = ["EvalDataset", "EvalSettings", "evaluate_ctc", "resolve_device", "run_eval"]


def _warmup(encoder: nn.Module, device: torch.device, settings: EvalSettings, input_dim: int) -> None:
    feats = torch.zeros(1, 2 * FRAME_RATE, input_dim, device=device)
    with torch.inference_mode(), settings.autocast(device):
        encoder(feats, torch.tensor([feats.shape[1]], device=device))
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _evaluate_one(
    encoder: nn.Module,
    dataset: EvalDataset,
    settings: EvalSettings,
    *,
    device: torch.device,
    features_on_device: bool,
    vocab: CharVocab,
    frontend=None,
    decode=None,
) -> tuple[EvalResult, list[dict[str, Any]]]:
    spec = dataset.source
    featurizer = frontend or (LogMelFeatures().to(device) if features_on_device else None)
    rows: list[dict[str, Any]] = []
    skipped: Counter[str] = Counter()
    repaired: Counter[str] = Counter()
    drawn: Counter[str] = Counter()
    batches = 0
    compute_seconds = 0.0
    reference_filter = None
    if settings.open_asr:
        normalize = get_normalizer("whisper_english")
        reference_filter = lambda examples: drop_unscorable_references(examples, normalize)  # noqa: E731

    start = time.perf_counter()
    config = eval_pipeline_config(spec, settings.max_frames, settings.longest_seconds)
    pipeline = SpeechDataPipeline(
        config, rank=0, world_size=1, final_tally=True, extra_symbols=vocab.extra_symbols
    )
    collator = TallyPassingCollator(compute_features=featurizer is None, reference_filter=reference_filter)
    loader = build_dataloader(pipeline, num_workers=settings.num_workers, collator=collator)
    bar = tqdm(desc=f"eval {spec.name}", unit="utt", disable=not settings.progress, dynamic_ncols=True)
    for batch in loader:
        for reason, n in batch.skipped.items():
            (repaired if reason.startswith("fixed_") else skipped)[reason] += n
        drawn.update(batch.drawn)
        if isinstance(batch, ExampleBatch):  # a slot's final tally: counts only
            continue
        batches += 1
        batch_start = time.perf_counter()
        if featurizer is not None:
            feats, feat_lengths = featurizer(
                batch.waveforms.to(device, non_blocking=True), batch.waveform_lengths.to(device)
            )
        else:
            feats = batch.features.to(device, non_blocking=True)  # (B, F, 160)
            feat_lengths = batch.feature_lengths.to(device)  # (B,)
        with torch.inference_mode(), settings.autocast(device):
            out = encoder(feats, feat_lengths)
        if decode is not None:
            hyps = decode(out.logits, out.lengths)
        else:
            hyps = greedy_ctc_decode(out.logits, out.lengths, vocab)  # argmax on the device, then CPU
        compute_seconds += time.perf_counter() - batch_start  # the texts are on the CPU: synchronised
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
    norm = resolve_normalizer(dataset.normalizer or settings.normalizer, language)
    if settings.open_asr:
        norm = "whisper_english"
    rows.sort(key=lambda r: r["id"])
    metrics = error_rates(
        [r["reference"] for r in rows],
        [r["hypothesis"] for r in rows],
        normalizer=norm,
        language=language,
        merge_compounds=settings.open_asr,
    )
    audio_seconds = sum(r["duration"] for r in rows)
    result = EvalResult.from_metrics(spec.name, metrics, audio_seconds, compute_seconds)
    result.details.update(
        stream_wall_seconds=wall,
        protocol=settings.protocol,
        records=sum(drawn.values()),
        skipped=dict(sorted(skipped.items())),
        repaired=dict(sorted(repaired.items())),
        languages=dict(sorted(languages.items())),
        source={"path": spec.path, "kind": spec.kind, "split": spec.split, "config": spec.config},
        reference=dataset.reference,
        decoding="greedy_ctc",
        device=str(device),
        dtype=settings.dtype,
        max_frames=settings.max_frames,
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
    settings: EvalSettings | Mapping[str, Any] | None = None,
    *,
    features_on_device: bool | None = None,
    hypotheses_path: str | Path | None = None,
    model_name: str | None = None,
    vocab: CharVocab | None = None,
    frontend=None,
    decode=None,
    **overrides: Any,
) -> list[EvalResult]:
    """Greedy-CTC WER / CER and RTFx of ``encoder`` on each dataset (see the module doc).

    Args:
        encoder: a :class:`~granite_train.models.encoder.CTCEncoder`, or any module called as
            ``encoder(features (B, F, 160), lengths (B,))`` returning an object with ``logits``
            ``(B, F, V)`` and ``lengths`` ``(B,)``. Moved to the device; run in eval mode (its
            training flag is restored afterwards).
        datasets: test sets: :class:`EvalDataset`, :class:`SourceSpec` or mappings of SourceSpec
            fields (``name``, ``path``, ``kind``, ``split``, ``language``, ``text_column``, ...)
            plus optional ``normalizer`` and ``reference`` (see :class:`EvalDataset`).
        settings: :class:`EvalSettings` (device, dtype, max_frames, max_duration, normalizer,
            num_workers, progress); ``overrides`` replace its fields (``device="cpu"``, ...).
        features_on_device: compute log-mel features on the device, inside each timed batch (the
            default), instead of in the loader.
        hypotheses_path: write one JSON line per scored utterance (dataset, id, language, duration,
            reference, hypothesis), sorted by id within each dataset.
        model_name: recorded in each result's details.
        vocab: the CTC head's vocabulary; default: the encoder's own (``encoder.ctc_vocab()``: the
            symbol table it was loaded with), else the base vocabulary.
        frontend / decode: another model family's input and output (the 5.0 TurboCTC's: its feature
            extractor, its BPE tokenizer; :mod:`granite_train.eval.turboctc`):
            ``frontend(waveforms, lengths)`` on the device gives what ``encoder`` is called with,
            inside each timed batch; ``decode(logits, lengths)`` the hypotheses.

    Returns:
        One :class:`EvalResult` per dataset, in order.
    """
    settings = EvalSettings.of(settings, **overrides)
    device = settings.resolved_device()
    specs = eval_datasets(datasets)
    if features_on_device is None:
        features_on_device = True  # features inside the timed batch, as the leaderboard times them

    was_training = encoder.training
    encoder = encoder.to(device).eval()
    try:
        config = getattr(encoder, "config", None)
        if frontend is not None:
            with torch.inference_mode():
                encoder(
                    *frontend(torch.zeros(1, 2 * SAMPLE_RATE, device=device), torch.tensor([2 * SAMPLE_RATE]))
                )
        else:
            _warmup(encoder, device, settings, getattr(config, "input_dim", LogMelFeatures.FEATURE_DIM))
        vocab = vocab if vocab is not None else _head_vocab(encoder)
        results, all_rows = [], []
        for dataset in specs:
            result, rows = _evaluate_one(
                encoder, dataset, settings, device=device, features_on_device=features_on_device, vocab=vocab,
                frontend=frontend, decode=decode,
            )  # fmt: skip
            if model_name is not None:
                result.details["model"] = model_name
            results.append(result)
            all_rows.extend(rows)
    finally:
        encoder.train(was_training)
    if hypotheses_path is not None:
        write_hypotheses(all_rows, hypotheses_path)
    return results


def _head_vocab(encoder: nn.Module) -> CharVocab:
    """The vocabulary the encoder's head decodes to: its symbol table, or the base vocabulary."""
    ctc_vocab = getattr(encoder, "ctc_vocab", None)
    if callable(ctc_vocab):
        return ctc_vocab()  # raises, naming both sizes, when the head outgrows its vocabulary
    return CharVocab()


def run_eval(
    model: str | Path,
    datasets: Sequence[Mapping[str, Any]],
    output_dir: str | Path,
    settings: EvalSettings | Mapping[str, Any] | None = None,
    **overrides: Any,
) -> tuple[list[EvalResult], str]:
    """Load ``model`` (exported folder or training ``.ckpt``), evaluate, write the result files.

    Writes ``results.json``, ``results.md`` and (``settings.write_hypotheses``) ``hypotheses.jsonl``
    under ``output_dir``; returns the results and the markdown table.
    """
    from granite_train.models.export import load_encoder

    settings = EvalSettings.of(settings, **overrides)
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    device = settings.resolved_device()
    family = {}
    if is_turboctc_folder(model):  # granite-speech-5.0 TurboCTC: BPE CTC through its own processor
        encoder, family = turboctc_eval_parts(model, device)
    else:
        encoder = load_encoder(model, attn_impl=settings.attn_impl)
    if settings.dtype in ("float32", "fp32"):
        encoder = encoder.float()  # a bf16 export is evaluated in fp32 unless asked otherwise
    log.info("evaluating %s on %s (%s)", model, device, settings.dtype)
    results = evaluate_ctc(
        encoder,
        datasets,
        settings,
        device=str(device),
        hypotheses_path=out / "hypotheses.jsonl" if settings.write_hypotheses else None,
        model_name=str(model),
        **family,
    )
    table = results_to_markdown(results, average=len(results) > 1)
    summary = (
        f"model: `{model}`  \ndevice: {device}, dtype: {settings.dtype}, max_frames: {settings.max_frames}"
    )
    write_result_files(results, out, "Greedy-CTC evaluation", summary, table)
    return results, table
