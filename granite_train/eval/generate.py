"""Generation-based evaluation of a stage-2 speech LLM: WER / CER (ASR), BLEU (AST), B-WER / U-WER
(keyword-biased ASR) and RTFx per dataset.

Per dataset (and keyword condition)::

    source (SourceSpec mapping) -> SpeechDataPipeline (one pass, no shuffle, no augmentation,
      lenient validation, no CTC targets) -> SpeechLLMCollator (log-mel + left-padded prompts with
      the first, fixed instruction) -> SpeechLLM.generate (greedy, or beam search) ->
      tokenizer.batch_decode -> scores

* Same accounting as the greedy-CTC evaluation (:mod:`granite_train.eval.run`): nothing is lost
  silently (skips counted per reason, ``records == num_utts + sum(skipped)``), references are the
  original texts, and RTFx is the leaderboard's: audio seconds over the summed wall time of each
  batch's features, encoder, projector and decoding (not loading, not scoring). One warm-up
  generation runs before any timing.
* Decoding: autoregressive (greedy or beam search), or CTC-draft speculative decoding
  (``settings.speculative``, :mod:`granite_train.eval.speculative`) for ASR sets; the result counts
  the utterances on each path (``details["paths"]``) and each hypothesis row names its path.
* Hallucination signals of every ASR result: insertions per reference word and the share of
  hypotheses more than twice their reference's length (``details["hallucination"]``).
* Task ``asr`` (the default; ``task`` of the dataset mapping or the records' ``task`` column): WER
  and CER with the named normalizer (``auto``: Whisper's English normalizer for English, basic
  otherwise); for languages without spaces (``NO_SPACE_LANGUAGES``, e.g. ja) read the CER.
* Task ``ast``: corpus BLEU with sacrebleu against the translation (``text`` column); tokenizer
  ``char`` for ja / zh targets (``ja-mecab`` needs MeCab, not installed), ``13a`` otherwise. The
  sacrebleu signature is recorded.
* Keyword sets (records with ``keywords`` / ``prompt_suffix``): B-WER, U-WER and keyword recall
  (:mod:`granite_train.eval.biasing`), bias words from the ``bias_words`` column (else the keywords
  found in the reference). ``keywords_in_prompt``: ``True`` decodes with the ``Keywords: ...``
  suffix, ``False`` without, ``"both"`` decodes twice and writes the with/without table.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from granite_train.audio.features import LogMelFeatures
from granite_train.data.collate import Collator, ExampleBatch
from granite_train.data.pipeline import SpeechDataPipeline, build_dataloader
from granite_train.data.prompts import (
    PromptBuilder,
    PromptConfig,
    SpeechLLMCollator,
    normalize_target,
    pad_id,
    pad_token_rows,
    translation_part,
    with_draft,
)
from granite_train.data.sources import SourceSpec
from granite_train.eval.biasing import biasing_error_rates, biasing_markdown
from granite_train.eval.ctc_rescore import rescore_decode
from granite_train.eval.metrics import NO_SPACE_LANGUAGES, error_rates, hallucination_summary
from granite_train.eval.report import (
    EvalResult,
    normalizer_label,
    percent,
    write_hypotheses,
    write_result_files,
)
from granite_train.eval.settings import (
    SAMPLE_RATE,
    EvalDataset,
    EvalSettings,
    drop_unscorable_references,
    eval_datasets,
    eval_pipeline_config,
    resolve_normalizer,
)
from granite_train.eval.speculative import PATHS, ctc_draft, speculative_decode
from granite_train.text.normalize import get_normalizer

log = logging.getLogger(__name__)

__all__ = [
    "SpeechLLMLoadError",
    "bleu_tokenizer",
    "translation_bleu",
    "evaluate_speech_llm",
    "generation_markdown",
    "is_speech_llm_folder",
    "load_speech_llm_checked",
    "run_generate_eval",
]

SPEECH_MODEL_TYPE = "granite_speech"
KEYWORDS_PREFIX = "Keywords: "
CONDITIONS = {True: "with keywords", False: "without keywords"}
RESCORED_BEAM, RESCORED_CTC = "rescored_beam", "rescored_ctc"  # the paths of joint CTC / LLM rescoring


class SpeechLLMLoadError(ValueError):
    """A model folder that is missing, or not a loadable GraniteSpeech (speech LLM) folder."""


def _read_config(path: str | Path) -> dict[str, Any] | None:
    """``config.json`` of a folder (``None`` when ``path`` is not a folder with one)."""
    config = Path(path) / "config.json"
    if not config.is_file():
        return None
    try:
        values = json.loads(config.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise SpeechLLMLoadError(f"{config}: not a readable JSON model config ({err})") from err
    if not isinstance(values, dict):
        raise SpeechLLMLoadError(f"{config}: not a JSON object")
    return values


def is_speech_llm_folder(path: str | Path) -> bool:
    """Whether ``path`` is a folder whose ``config.json`` has ``model_type: granite_speech``."""
    values = _read_config(path) if Path(path).is_dir() else None
    return bool(values) and values.get("model_type") == SPEECH_MODEL_TYPE


def load_speech_llm_checked(path: str | Path, attn_impl: str = "sdpa"):
    """:func:`~granite_train.models.speech_llm.load_speech_llm` with clear errors for bad folders."""
    from granite_train.models.speech_llm import load_speech_llm

    folder = Path(path)
    if not folder.exists():
        raise SpeechLLMLoadError(f"model folder {folder} does not exist")
    if not folder.is_dir():
        raise SpeechLLMLoadError(f"{folder} is not a folder; expected an exported speech LLM folder")
    values = _read_config(folder)
    if values is None:
        raise SpeechLLMLoadError(f"{folder}: no config.json; expected an exported speech LLM folder")
    if values.get("model_type") != SPEECH_MODEL_TYPE:
        raise SpeechLLMLoadError(
            f"{folder}: model_type is {values.get('model_type')!r}, expected {SPEECH_MODEL_TYPE!r}"
        )
    try:
        return load_speech_llm(folder, attn_impl=attn_impl)
    except Exception as err:  # transformers raises many kinds (OSError, ValueError, safetensors errors)
        raise SpeechLLMLoadError(
            f"{folder}: cannot load the speech LLM: {type(err).__name__}: {err}"
        ) from err


def bleu_tokenizer(language: str | None) -> str:
    """sacrebleu tokenizer for a target language: ``char`` for ja / zh (no MeCab here), else ``13a``."""
    base = (language or "").replace("_", "-").split("-")[0].lower()
    return "char" if base in ("ja", "zh") else "13a"


def translation_bleu(
    references: Sequence[str],
    hypotheses: Sequence[str],
    target_language: str | None,
    normalized: bool = False,
):
    """sacrebleu's corpus BLEU of the translation parts (``[Translation] ...`` of a ``[Transcription]
    ... [Translation] ...`` output or reference), and the metric (its signature); ``normalized``: the
    references normalised as the targets were (``prompts.normalize_translations``)."""
    from sacrebleu.metrics import BLEU

    metric = BLEU(tokenize=bleu_tokenizer(target_language))
    refs = [translation_part(normalize_target(r) if normalized else r) for r in references]
    hyps = [translation_part(h) for h in hypotheses]
    return (metric.corpus_score(hyps, [refs]) if hyps else None), metric


def _bias_words(record: Mapping[str, Any], reference: str, norm) -> list[str]:
    """The record's ``bias_words``, else its keywords whose normalized words occur in the reference."""
    if record.get("bias_words") is not None:
        return list(record["bias_words"])
    ref = f" {' '.join(norm(reference).split())} "
    return [k for k in record.get("keywords") or [] if (w := " ".join(norm(k).split())) and f" {w} " in ref]


def _is_keyword_record(record: Mapping[str, Any]) -> bool:
    return bool(record.get("keywords")) or bool(record.get("prompt_suffix"))


class _GenerationCollator:
    """:class:`SpeechLLMCollator` with the dataset's defaults applied to the records first.

    Adds ``target_language`` where a record has none, and sets the keyword suffix of the prompt
    (``Keywords: ...`` from ``keywords`` when the record has no ``prompt_suffix``) or removes it.
    The pipeline's final tally batches (no examples) pass through as they are.
    """

    def __init__(
        self,
        inner: SpeechLLMCollator,
        target_language: str | None,
        keywords_in_prompt: bool,
        zero_audio: bool = False,
        reference_filter=None,
        keep_drafts: bool = True,
    ):
        self.inner = inner
        self.keep_drafts = keep_drafts
        self.target_language = target_language
        self.keywords_in_prompt = keywords_in_prompt
        self.zero_audio = zero_audio
        self.reference_filter = reference_filter

    def __call__(self, examples: ExampleBatch):
        if self.reference_filter is not None:
            examples = self.reference_filter(examples)
        if isinstance(examples, ExampleBatch) and not examples.examples:
            return examples
        items = examples.examples if isinstance(examples, ExampleBatch) else examples
        for e in items:
            record = dict(e.record)
            if self.target_language and not record.get("target_language"):
                record["target_language"] = self.target_language
            if not self.keywords_in_prompt:
                record["prompt_suffix"] = ""
            elif not record.get("prompt_suffix") and record.get("keywords"):
                record["prompt_suffix"] = KEYWORDS_PREFIX + ", ".join(record["keywords"])
            if not self.keep_drafts:
                record.pop("draft", None)
            e.record = record
            if self.zero_audio:  # silence of the same length: the same prompt, nothing to hear
                e.waveform = torch.zeros_like(e.waveform)
        batch = self.inner(examples)
        # what scoring needs of each record (an attribute, so it survives the loader's workers)
        batch.keyword_fields = [
            {k: e.record[k] for k in ("keywords", "bias_words", "prompt_suffix") if k in e.record}
            for e in items
        ]
        batch.drafts = [e.record.get("draft") for e in items]
        return batch


def _prompts_with_ctc_drafts(speech, prompts: PromptBuilder, batch, feats, feat_lengths):
    """The batch's prompts rebuilt with the model's own greedy CTC transcript as the draft.

    Returns the left-padded prompt ids and mask (on the CPU), the drafts and the instructions.
    """
    _, encoder_out = speech._encode(feats, feat_lengths)
    drafts, _ = ctc_draft(encoder_out.logits, encoder_out.lengths, speech.encoder.ctc_vocab())
    drafts = [" ".join(d.split()) for d in drafts]
    rows, instructions = [], []
    for i, draft in enumerate(drafts):
        row = batch.prompt_ids[i][batch.prompt_mask[i].bool()]
        n_audio = int((row == speech.audio_token_id).sum())
        instructions.append(with_draft(batch.instructions[i], draft))
        rows.append(prompts.prompt_ids(instructions[-1], n_audio))
    ids, mask = pad_token_rows(rows, pad_id(prompts.tokenizer), left=True)
    return ids, mask, drafts, instructions


def _warmup(speech, device: torch.device, settings: EvalSettings, prompts: PromptBuilder) -> None:
    samples = 2 * SAMPLE_RATE
    feats, lengths = LogMelFeatures()(torch.zeros(1, samples), torch.tensor([samples]))
    ids = torch.tensor([prompts({"id": "warmup"}, samples).prompt_ids])
    with torch.inference_mode(), settings.autocast(device):
        speech.generate(
            ids.to(device),
            torch.ones_like(ids).to(device),
            feats.to(device),
            lengths.to(device),
            max_new_tokens=2,
        )
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _decode_pass(
    speech,
    dataset: EvalDataset,
    *,
    name: str,
    keywords_in_prompt: bool,
    prompts: PromptBuilder,
    settings: EvalSettings,
    device: torch.device,
    features_on_device: bool,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """One streamed pass: rows (one per scored utterance) and the pass's counts and timing."""
    spec = dataset.source
    featurizer = LogMelFeatures().to(device) if features_on_device else None
    rows: list[dict[str, Any]] = []
    skipped: Counter[str] = Counter()
    repaired: Counter[str] = Counter()
    drawn: Counter[str] = Counter()
    batches = 0
    compute_seconds = 0.0
    paths: Counter[str] = Counter()
    tokenizer = speech.tokenizer
    speculative = settings.speculative if (spec.task or "asr") == "asr" else None
    rescore = settings.rescore if (spec.task or "asr") == "asr" else None
    reference_filter = None
    if settings.open_asr and (spec.task or "asr") == "asr":
        normalize = get_normalizer("whisper_english")
        reference_filter = lambda examples: drop_unscorable_references(examples, normalize)  # noqa: E731

    config = eval_pipeline_config(spec, settings.max_frames, settings.longest_seconds)
    config = dataclasses.replace(
        config,
        max_batch_size=settings.batch_size,
        prepare=dataclasses.replace(config.prepare, ctc_targets=False, check_ctc_length=False),
    )
    start = time.perf_counter()
    pipeline = SpeechDataPipeline(config, rank=0, world_size=1, final_tally=True)
    collator = _GenerationCollator(
        SpeechLLMCollator(prompts, Collator(compute_features=not features_on_device)),
        dataset.target_language,
        keywords_in_prompt,
        settings.zero_audio,
        reference_filter,
        keep_drafts=settings.prompt_draft == "dataset",
    )
    loader = build_dataloader(pipeline, num_workers=settings.num_workers, collator=collator)
    bar = tqdm(desc=f"generate {name}", unit="utt", disable=not settings.progress, dynamic_ncols=True)
    generate_kwargs = {
        "num_beams": settings.num_beams,
        "max_new_tokens": settings.max_new_tokens,
        "do_sample": False,
    }
    for batch in loader:
        for reason, n in batch.skipped.items():
            if reason == "target_truncated":  # the teacher-forcing target: irrelevant to generation
                continue
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
            feats = batch.features.to(device, non_blocking=True)
            feat_lengths = batch.feature_lengths.to(device)
        spec_out = rescored = None
        prompt_ids, prompt_mask, drafts = batch.prompt_ids, batch.prompt_mask, batch.drafts
        instructions = batch.instructions
        with torch.inference_mode(), settings.autocast(device):
            if settings.prompt_draft == "ctc":
                prompt_ids, prompt_mask, drafts, instructions = _prompts_with_ctc_drafts(
                    speech, prompts, batch, feats, feat_lengths
                )
            if speculative is not None and not any(t == "ast" for t in batch.tasks):
                spec_out = speculative_decode(
                    speech,
                    prompt_ids.to(device),
                    prompt_mask.to(device),
                    feats,
                    feat_lengths,
                    speculative,
                    max_new_tokens=settings.max_new_tokens,
                    num_beams=settings.num_beams,
                )
                hyps = spec_out.texts
            elif rescore is not None and not any(t == "ast" for t in batch.tasks):
                rescored = rescore_decode(
                    speech,
                    prompt_ids.to(device),
                    prompt_mask.to(device),
                    feats,
                    feat_lengths,
                    rescore,
                    max_new_tokens=settings.max_new_tokens,
                )
                hyps = rescored.texts
            else:
                out = speech.generate(
                    prompt_ids.to(device),
                    prompt_mask.to(device),
                    feats,
                    feat_lengths,
                    **generate_kwargs,
                )
                hyps = tokenizer.batch_decode(out.cpu(), skip_special_tokens=True)
        compute_seconds += time.perf_counter() - batch_start  # the ids are on the CPU: synchronised
        for i, hyp in enumerate(hyps):
            text = batch.texts[i]
            if text is None:
                skipped["no_text"] += 1
                continue
            rows.append(
                {
                    "dataset": name,
                    "id": batch.ids[i],
                    "language": batch.languages[i],
                    "task": batch.tasks[i],
                    "target_language": batch.target_languages[i],
                    "instruction": instructions[i],
                    "duration": int(batch.waveform_lengths[i]) / SAMPLE_RATE,
                    "reference": text,
                    "hypothesis": hyp.strip(),
                    "_record": batch.keyword_fields[i],
                }
            )
            if drafts[i] is not None:
                rows[-1]["prompt_draft"] = drafts[i]
            path = "autoregressive" if spec_out is None else spec_out.paths[i]
            if rescored is not None:  # which candidate won: an LLM beam or the CTC transcript
                path = RESCORED_BEAM if rescored.chosen[i].startswith("beam") else RESCORED_CTC
                rows[-1].update(
                    path=path,
                    chosen=rescored.chosen[i],
                    ctc_draft=rescored.drafts[i],
                    candidates=rescored.candidates[i],
                )
            paths[path] += 1
            if spec_out is not None:
                rows[-1].update(
                    path=path,
                    ctc_entropy=round(spec_out.entropies[i], 4),
                    ctc_draft=spec_out.drafts[i],
                    resumed_tokens=spec_out.resumed_tokens[i],
                    generated_tokens=spec_out.generated_tokens[i],
                )
        bar.update(len(batch))
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    wall = time.perf_counter() - start
    bar.close()
    rows.sort(key=lambda r: r["id"])
    info = {
        "wall": compute_seconds,
        "stream_wall": wall,
        "paths": {p: paths[p] for p in (*PATHS, RESCORED_BEAM, RESCORED_CTC, "autoregressive") if paths[p]},
        "speculative": dataclasses.asdict(speculative) if speculative is not None else None,
        "rescore": dataclasses.asdict(rescore) if rescore is not None else None,
        "records": sum(drawn.values()),
        "skipped": dict(sorted(skipped.items())),
        "repaired": dict(sorted(repaired.items())),
        "batches": batches,
    }
    return rows, info


def _score(
    rows: list[dict[str, Any]],
    dataset: EvalDataset,
    name: str,
    normalizer: str,
    wall: float,
    normalize_translations: bool = False,
    open_asr: bool = False,
) -> EvalResult:
    spec = dataset.source
    languages = Counter(r["language"] or "?" for r in rows)
    language = spec.language or (languages.most_common(1)[0][0] if languages else "?")
    tasks = Counter(r["task"] for r in rows)
    task = spec.task or (tasks.most_common(1)[0][0] if tasks else "asr")
    if len(tasks) > 1:
        raise ValueError(f"{name}: a dataset must hold one task, found {dict(tasks)}")
    refs = [r["reference"] for r in rows]
    hyps = [r["hypothesis"] for r in rows]
    audio_seconds = sum(r["duration"] for r in rows)
    if task == "ast":
        import sacrebleu

        targets = Counter(r["target_language"] or "?" for r in rows)
        target = dataset.target_language or (targets.most_common(1)[0][0] if targets else None)
        tokenize = bleu_tokenizer(target)
        score, metric = translation_bleu(refs, hyps, target, normalize_translations)
        result = EvalResult(
            name=name,
            num_utts=len(rows),
            wer=None,
            cer=None,
            normalizer="sacrebleu",
            normalizer_version=sacrebleu.__version__,
            audio_seconds=audio_seconds,
            wall_seconds=wall,
            details={
                "bleu": None if score is None else score.score,
                "bleu_signature": str(metric.get_signature()),
                "bleu_tokenize": tokenize,
                "bleu_precisions": None if score is None else list(score.precisions),
                "bleu_brevity_penalty": None if score is None else score.bp,
                "target_language": target,
                "target_languages": dict(sorted(targets.items())),
            },
        )
    else:
        norm = (
            "whisper_english" if open_asr else resolve_normalizer(dataset.normalizer or normalizer, language)
        )
        metrics = error_rates(refs, hyps, normalizer=norm, language=language, merge_compounds=open_asr)
        result = EvalResult.from_metrics(name, metrics, audio_seconds, wall)
        result.details["hallucination"] = hallucination_summary(metrics)
        if language in NO_SPACE_LANGUAGES:
            result.details["primary_metric"] = "cer"
        if any("bias_words" in r for r in rows):
            result.details["biasing"] = biasing_error_rates(
                refs, hyps, [r.get("bias_words", []) for r in rows], normalizer=norm
            )
    result.details.update(task=task, languages=dict(sorted(languages.items())))
    return result


def evaluate_speech_llm(
    speech,
    datasets: Sequence[Mapping[str, Any] | EvalDataset | SourceSpec],
    settings: EvalSettings | Mapping[str, Any] | None = None,
    *,
    features_on_device: bool | None = None,
    hypotheses_path: str | Path | None = None,
    model_name: str | None = None,
    **overrides: Any,
) -> list[EvalResult]:
    """Decode each dataset with ``speech.generate`` and score it (see the module doc).

    Args:
        speech: a :class:`~granite_train.models.speech_llm.SpeechLLM` (moved to the device, run in
            eval mode; its training flag is restored afterwards).
        datasets: :class:`EvalDataset`, :class:`SourceSpec` or mappings of SourceSpec fields (``task``
            included) plus ``normalizer``, ``target_language`` and ``keywords_in_prompt``.
        settings: :class:`EvalSettings`: device, dtype, max_frames, max_duration, num_workers,
            progress, and for generation num_beams, max_new_tokens, batch_size,
            generate_normalizer (the default normalizer of ASR scoring) and keywords_in_prompt (the
            default for keyword sets); ``overrides`` replace its fields.
        features_on_device: as in :func:`granite_train.eval.run.evaluate_ctc`.
        hypotheses_path: write one JSON line per scored utterance and condition.
        model_name: recorded in each result's details.

    Returns:
        One :class:`EvalResult` per dataset, or two (``name/with_keywords``,
        ``name/without_keywords``) for a keyword set decoded both ways.
    """
    settings = EvalSettings.of(settings, **overrides)
    device = settings.resolved_device()
    specs = eval_datasets(datasets)
    for d in specs:
        if d.reference != "text":
            raise ValueError(f"dataset {d.source.name!r}: generation is scored against the text only")
        if d.source.task not in (None, "asr", "ast"):
            raise ValueError(f"dataset {d.source.name!r}: task must be asr or ast, got {d.source.task!r}")
    if features_on_device is None:
        features_on_device = True  # features inside the timed batch, as the leaderboard times them
    normalizer, num_beams = settings.generate_normalizer, settings.num_beams

    prompts = PromptBuilder(
        speech.tokenizer,
        PromptConfig(vary_instructions=False),
        window_size=speech.config.window_size,
        downsample_rate=speech.config.downsample_rate,
    )
    was_training = speech.training
    speech = speech.to(device).eval()
    results, all_rows = [], []
    try:
        _warmup(speech, device, settings, prompts)
        for dataset in specs:
            name = dataset.source.name
            mode = dataset.keywords_in_prompt
            if mode is None:
                mode = settings.keywords_in_prompt
            conditions = [False, True] if mode == "both" else [bool(mode)]
            per_condition = {}
            for cond in conditions:
                label = name if len(conditions) == 1 else f"{name}/{CONDITIONS[cond].replace(' ', '_')}"
                rows, info = _decode_pass(
                    speech,
                    dataset,
                    name=label,
                    keywords_in_prompt=cond,
                    prompts=prompts,
                    settings=settings,
                    device=device,
                    features_on_device=features_on_device,
                )
                per_condition[cond] = (label, rows, info)
            keyword_set = any(
                _is_keyword_record(r["_record"]) for _, rows, _ in per_condition.values() for r in rows
            )
            for cond, (label, rows, info) in per_condition.items():
                result = _finish(
                    dataset,
                    label,
                    rows,
                    info,
                    normalizer,
                    keyword_set,
                    cond,
                    settings.normalize_translations,
                    settings.open_asr,
                )
                result.details.update(
                    decoding=_decoding_label(
                        settings,
                        speculative=info["speculative"] is not None,
                        rescore=info["rescore"] is not None,
                    ),
                    speculative=info["speculative"],
                    rescore=info["rescore"],
                    protocol=settings.protocol,
                    num_beams=num_beams,
                    max_new_tokens=settings.max_new_tokens,
                    device=str(device),
                    dtype=settings.dtype,
                    max_frames=settings.max_frames,
                    batch_size=settings.batch_size,
                    source={
                        "path": dataset.source.path,
                        "kind": dataset.source.kind,
                        "split": dataset.source.split,
                        "config": dataset.source.config,
                    },
                )
                if model_name is not None:
                    result.details["model"] = model_name
                results.append(result)
                all_rows.extend(rows)
        if settings.probes:
            result, rows = _run_probes(speech, prompts, settings, device, features_on_device)
            if model_name is not None:
                result.details["model"] = model_name
            results.append(result)
            all_rows.extend(rows)
    finally:
        speech.train(was_training)
    if hypotheses_path is not None:
        write_hypotheses(all_rows, hypotheses_path)
    return results


PROBES_NAME = "hallucination_probes"


def _run_probes(speech, prompts, settings: EvalSettings, device, features_on_device: bool):
    """Decode the built-in probe set (:mod:`granite_train.eval.probes`) as the test sets were."""
    import tempfile

    from granite_train.eval.probes import probe_report, write_probe_set

    with tempfile.TemporaryDirectory() as tmp:
        dataset = EvalDataset(
            SourceSpec(
                name=PROBES_NAME, path=str(write_probe_set(tmp)), split="test", language="en", task="asr"
            )
        )
        # scored as is: the leaderboard's filter would drop the empty references that are the point
        plain = dataclasses.replace(settings, protocol="default")
        rows, info = _decode_pass(
            speech,
            dataset,
            name=PROBES_NAME,
            keywords_in_prompt=False,
            prompts=prompts,
            settings=plain,
            device=device,
            features_on_device=features_on_device,
        )
    result = _finish(dataset, PROBES_NAME, rows, info, "whisper_english", False, False)
    result.details.update(
        probes=probe_report(rows),
        decoding=_decoding_label(
            settings, speculative=info["speculative"] is not None, rescore=info["rescore"] is not None
        ),
    )
    return result, rows


def _decoding_label(settings: EvalSettings, speculative: bool, rescore: bool = False) -> str:
    """``greedy`` / ``beam_search(N)``, after the thresholds when speculative decoding ran, or the
    rescoring's label when it ran."""
    if rescore:
        return settings.rescore.label
    decoding = "greedy" if settings.num_beams == 1 else f"beam_search({settings.num_beams})"
    return f"{settings.speculative.label} + {decoding}" if speculative else decoding


def _finish(
    dataset: EvalDataset,
    label: str,
    rows: list[dict[str, Any]],
    info: dict[str, Any],
    normalizer: str,
    keyword_set: bool,
    keywords_in_prompt: bool,
    normalize_translations: bool = False,
    open_asr: bool = False,
) -> EvalResult:
    if keyword_set:
        language = dataset.source.language or next((r["language"] for r in rows if r["language"]), None)
        norm = get_normalizer(resolve_normalizer(dataset.normalizer or normalizer, language))
        for r in rows:
            r["bias_words"] = _bias_words(r.pop("_record", {}), r["reference"], norm)
            r["keywords_in_prompt"] = keywords_in_prompt
    for r in rows:
        r.pop("_record", None)
    result = _score(rows, dataset, label, normalizer, info["wall"], normalize_translations, open_asr)
    result.details.update(
        stream_wall_seconds=info["stream_wall"],
        paths=info["paths"],
        records=info["records"],
        skipped=info["skipped"],
        repaired=info["repaired"],
        batches=info["batches"],
    )
    if keyword_set:
        result.details["keywords_in_prompt"] = keywords_in_prompt
    if info["skipped"]:
        log.warning(
            "%s: %d of %d records could not be scored and are left out: %s",
            label,
            sum(info["skipped"].values()),
            info["records"],
            info["skipped"],
        )
    if not rows:
        log.warning("%s: no utterance could be scored", label)
    return result


def _fmt(value: float | None, digits: int = 2) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def generation_markdown(results: Sequence[EvalResult]) -> str:
    """Markdown: one table (dataset, task, utts, WER %, CER %, BLEU, RTFx, scoring), then a keyword
    table per keyword set (with / without keywords in the prompt, and the change)."""
    lines = [
        "| dataset | task | utts | WER % | CER % | BLEU | ins / ref word | > 2x ref length % | RTFx | paths | scoring |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- |",
    ]
    for r in results:
        scoring = normalizer_label(r)
        if r.details.get("bleu_signature"):
            scoring = r.details["bleu_signature"]
        if r.details.get("merge_compounds"):
            scoring += ", merge_compounds"
        hall = r.details.get("hallucination") or {}
        paths = ", ".join(f"{k} {v}" for k, v in (r.details.get("paths") or {}).items())
        lines.append(
            f"| {r.name} | {r.details.get('task', 'asr')} | {r.num_utts} | {percent(r.wer)} | {percent(r.cer)} | "
            f"{_fmt(r.details.get('bleu'))} | {_fmt(hall.get('insertions_per_ref_word'), 3)} | "
            f"{percent(hall.get('overlong_share'))} | {_fmt(r.rtfx, 1)} | {paths or 'n/a'} | {scoring} |"
        )
    text = "\n".join(lines) + "\n"
    groups: dict[str, dict[str, Any]] = {}
    for r in results:
        if "biasing" in r.details:
            base = (
                r.name.rsplit("/", 1)[0]
                if r.name.endswith(("/with_keywords", "/without_keywords"))
                else r.name
            )
            label = CONDITIONS[bool(r.details.get("keywords_in_prompt", True))]
            groups.setdefault(base, {})[label] = r.details["biasing"]
    for base, conditions in groups.items():
        ordered = {k: conditions[k] for k in (CONDITIONS[False], CONDITIONS[True]) if k in conditions}
        text += f"\n### Keyword biasing: {base}\n\n" + biasing_markdown(ordered)
    for r in results:
        if r.details.get("probes"):
            from granite_train.eval.probes import probe_markdown

            text += "\n### Hallucination probes (silence, noise, one word)\n\n" + probe_markdown(
                r.details["probes"]
            )
    return text


def run_generate_eval(
    model: str | Path,
    datasets: Sequence[Mapping[str, Any]],
    output_dir: str | Path,
    settings: EvalSettings | Mapping[str, Any] | None = None,
    **overrides: Any,
) -> tuple[list[EvalResult], str]:
    """Load an exported speech LLM folder, evaluate it, write ``results.json``, ``results.md`` and
    (``settings.write_hypotheses``) ``hypotheses.jsonl`` under ``output_dir``; returns results and markdown."""
    settings = EvalSettings.of(settings, **overrides)
    speech = load_speech_llm_checked(model, attn_impl=settings.attn_impl)
    if settings.dtype in ("float32", "fp32"):
        speech = speech.float()  # a bf16 export is evaluated in fp32 unless asked otherwise
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    device = settings.resolved_device()
    log.info("evaluating %s on %s (%s), num_beams=%d", model, device, settings.dtype, settings.num_beams)
    results = evaluate_speech_llm(
        speech,
        datasets,
        settings,
        device=str(device),
        hypotheses_path=out / "hypotheses.jsonl" if settings.write_hypotheses else None,
        model_name=str(model),
    )
    table = generation_markdown(results)
    decoding = "greedy" if settings.num_beams == 1 else f"beam search ({settings.num_beams} beams)"
    if settings.speculative is not None:
        decoding = f"{settings.speculative.label}, fallback {decoding}"
    if settings.rescore is not None:
        decoding = settings.rescore.label
    summary = (
        f"model: `{model}`  \ndevice: {device}, dtype: {settings.dtype}, max_frames: {settings.max_frames}, "
        f"max_new_tokens: {settings.max_new_tokens}"
    )
    write_result_files(results, out, f"Speech LLM evaluation ({decoding})", summary, table)
    return results, table
