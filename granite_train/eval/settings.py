"""What every evaluation shares: its settings, its test sets, and how a test set is streamed.

:class:`EvalSettings` is the one owner of the evaluation knobs (``configs/eval.yaml`` holds the same
names): the CLI builds it once and the greedy-CTC (:mod:`~granite_train.eval.run`) and generation
(:mod:`~granite_train.eval.generate`) evaluators take it whole instead of a dozen keyword arguments.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from typing import Any

import torch

from granite_train.audio.features import LogMelFeatures
from granite_train.data.collate import Collator, ExampleBatch
from granite_train.data.pipeline import FRAME_RATE, PipelineConfig
from granite_train.data.prepare import PrepareConfig
from granite_train.data.sources import SourceSpec
from granite_train.eval.ctc_rescore import RescoreSettings
from granite_train.eval.speculative import SpeculativeSettings
from granite_train.text.normalize import NORMALIZER_NAMES
from granite_train.typed_config import check_keys, from_mapping

DTYPES = {
    "float32": None,
    "fp32": None,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}
REFERENCES = ("text", "ctc_target")
PROTOCOLS = ("default", "open_asr")
NORMALIZER_CHOICES = (*NORMALIZER_NAMES, "auto")
SAMPLE_RATE = LogMelFeatures.SAMPLE_RATE


PROMPT_DRAFTS = ("dataset", "ctc", "none")


@dataclass
class EvalSettings:
    """How test sets are decoded and scored.

    Attributes:
        device: ``auto`` (cuda if available), ``cpu``, ``cuda``, ``cuda:1``.
        dtype: ``float32``, or ``bfloat16`` / ``float16`` autocast (features stay float32).
        attn_impl: the encoder's attention kernel (``sdpa`` | ``math``).
        max_frames: padded 50 Hz frames per batch (20000 = 400 s of audio).
        max_duration: longest utterance in seconds, longer ones skipped and counted; None =
            ``max_frames / 50``, the longest that fits a batch.
        normalizer: greedy-CTC scoring: ``whisper_english`` | ``basic`` | ``none`` | ``auto``
            (Whisper English for en, basic otherwise); a dataset's own ``normalizer`` wins.
        num_workers: dataloader workers (each streams a disjoint share of a test set).
        write_hypotheses: write ``hypotheses.jsonl`` (per-utterance reference and hypothesis).
        progress: a progress bar per test set.
        num_beams: generation: 1 = greedy, more = beam search.
        max_new_tokens: generation limit per utterance.
        batch_size: generation: at most this many utterances per batch (None: max_frames alone).
        generate_normalizer: ASR normalizer of generation scoring (``auto``: Whisper English for en).
        keywords_in_prompt: keyword sets: ``true`` | ``false`` | ``both`` (the B-WER table).
        zero_audio: replace every waveform by silence of the same length: what the model says
            without hearing anything (AST: a BLEU gap shows the audio is read).
        normalize_translations: AST: score against references normalised as the targets were
            (``prompts.normalize_translations`` in training: lowercase, no punctuation).
        protocol: ``default``, or ``open_asr``: the Open ASR leaderboard's scoring. Whisper English
            normaliser, references empty once normalised left out before decoding (counted as
            ``empty_normalized_reference``), words aligned with kaldialign's ``merge_compounds``.
        speculative: generation: CTC-draft speculative decoding with these thresholds
            (:class:`~granite_train.eval.speculative.SpeculativeSettings`); None = autoregressive.
        rescore: generation: the LLM's beam n-best and the CTC transcript rescored jointly by the
            CTC head and the LLM (:class:`~granite_train.eval.ctc_rescore.RescoreSettings`); None =
            autoregressive. Not together with ``speculative``.
        probes: generation: also decode the built-in hallucination probes (silence, noise, one-word
            clips; :mod:`granite_train.eval.probes`) and report non-empty / over-long outputs.
        prompt_draft: generation: the first-pass transcript in the prompt (``Draft: ...``, for a
            model trained with drafts). ``dataset``: a record's ``draft`` column where it has one;
            ``ctc``: the model's own greedy CTC transcript, decoded per batch (its encoder pass
            counts in RTFx); ``none``: never.

    RTFx is the leaderboard's: audio seconds over the summed wall time of each batch's features,
    model and decoding (audio decoding and loading excluded); ``stream_wall_seconds`` in a
    result's details is the whole pass, loading included.
    """

    device: str = "auto"
    dtype: str = "float32"
    attn_impl: str = "sdpa"
    max_frames: int = 20_000
    max_duration: float | None = None
    normalizer: str = "whisper_english"
    num_workers: int = 0
    write_hypotheses: bool = True
    progress: bool = True
    num_beams: int = 1
    max_new_tokens: int = 200
    batch_size: int | None = None
    generate_normalizer: str = "auto"
    keywords_in_prompt: bool | str = True
    zero_audio: bool = False
    normalize_translations: bool = False
    protocol: str = "default"
    speculative: SpeculativeSettings | None = None
    rescore: RescoreSettings | None = None
    probes: bool = False
    prompt_draft: str = "dataset"

    def __post_init__(self) -> None:
        if self.prompt_draft not in PROMPT_DRAFTS:
            raise ValueError(f"prompt_draft must be one of {PROMPT_DRAFTS}, got {self.prompt_draft!r}")
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"protocol must be one of {PROTOCOLS}, got {self.protocol!r}")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {self.dtype!r}")
        for name in ("normalizer", "generate_normalizer"):
            if getattr(self, name) not in NORMALIZER_CHOICES:
                raise ValueError(f"{name} must be one of {NORMALIZER_CHOICES}, got {getattr(self, name)!r}")
        if self.keywords_in_prompt not in (True, False, "both"):
            raise ValueError(
                f"keywords_in_prompt must be true, false or both, got {self.keywords_in_prompt!r}"
            )
        if self.num_beams < 1 or self.max_new_tokens < 1:
            raise ValueError("num_beams and max_new_tokens must be >= 1")
        if self.speculative is not None and self.rescore is not None:
            raise ValueError("speculative and rescore are two decodings: set one of them (the other None)")

    @classmethod
    def of(cls, settings: EvalSettings | Mapping[str, Any] | None = None, **overrides: Any) -> EvalSettings:
        """``settings`` (or the defaults) with ``overrides`` applied, every key checked."""
        base = from_mapping(cls, settings, "eval")
        if not overrides:
            return base
        check_keys(overrides, {f.name for f in fields(cls)}, "eval")
        return replace(base, **overrides)

    @property
    def open_asr(self) -> bool:
        return self.protocol == "open_asr"

    @property
    def longest_seconds(self) -> float:
        return self.max_frames / FRAME_RATE if self.max_duration is None else float(self.max_duration)

    def resolved_device(self) -> torch.device:
        return resolve_device(self.device)

    def autocast(self, device: torch.device):
        """Autocast to ``dtype`` on ``device`` (a no-op for float32)."""
        amp = DTYPES[self.dtype]
        return contextlib.nullcontext() if amp is None else torch.autocast(device.type, dtype=amp)


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
        if self.normalizer is not None and self.normalizer not in NORMALIZER_CHOICES:
            raise ValueError(
                f"dataset {self.source.name!r}: normalizer must be one of {NORMALIZER_CHOICES}, "
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
    def from_mapping(
        cls, values: Mapping[str, Any] | EvalDataset | SourceSpec, index: int = 0
    ) -> EvalDataset:
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


def eval_datasets(datasets) -> list[EvalDataset]:
    """The test sets as :class:`EvalDataset` s, at least one, with unique names."""
    specs = [EvalDataset.from_mapping(d, i) for i, d in enumerate(datasets)]
    if not specs:
        raise ValueError("no datasets to evaluate")
    names = [d.source.name for d in specs]
    if len(set(names)) != len(names):
        raise ValueError(f"dataset names must be unique, got {names}")
    return specs


def resolve_device(device: str | torch.device) -> torch.device:
    """``"auto"`` -> cuda when available, else cpu; anything else as ``torch.device``."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_normalizer(name: str, language: str | None) -> str:
    """``auto`` -> Whisper English for English (``en``, ``en-US``, ...), basic otherwise."""
    if name != "auto":
        return name
    english = language is not None and language.replace("_", "-").split("-")[0].lower() == "en"
    return "whisper_english" if english else "basic"


EMPTY_REFERENCE = "empty_normalized_reference"
_IGNORED_REFERENCE = "ignore time segment in scoring"  # the leaderboard's marker of unscored audio


def drop_unscorable_references(examples: ExampleBatch, normalize) -> ExampleBatch:
    """The Open ASR leaderboard's filter, before decoding: records whose reference normalises to
    nothing (or is the ``ignore time segment in scoring`` marker) are left out, and counted."""
    if not isinstance(examples, ExampleBatch) or not examples.examples:
        return examples
    keep = []
    for e in examples.examples:
        normalized = " ".join(normalize(e.record.get("text") or "").split())
        if normalized and normalized != _IGNORED_REFERENCE:
            keep.append(e)
    dropped = len(examples.examples) - len(keep)
    if not dropped:
        return examples
    skipped = dict(examples.skipped)
    skipped[EMPTY_REFERENCE] = skipped.get(EMPTY_REFERENCE, 0) + dropped
    return ExampleBatch(keep, skipped, dict(examples.drawn))


class TallyPassingCollator(Collator):
    """Collator that passes the pipeline's final tally batches (no examples) through as they are;
    ``reference_filter`` (e.g. :func:`drop_unscorable_references`) runs first."""

    def __init__(self, *args, reference_filter=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.reference_filter = reference_filter

    def __call__(self, examples):
        if self.reference_filter is not None:
            examples = self.reference_filter(examples)
        if isinstance(examples, ExampleBatch) and not examples.examples:
            return examples
        return super().__call__(examples)


def eval_pipeline_config(source: SourceSpec, max_frames: int, max_duration: float) -> PipelineConfig:
    """One pass over ``source``, nothing filtered that could be scored (counted skips only)."""
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


__all__ = [
    "DTYPES",
    "EMPTY_REFERENCE",
    "PROTOCOLS",
    "REFERENCES",
    "EvalDataset",
    "EvalSettings",
    "TallyPassingCollator",
    "drop_unscorable_references",
    "eval_datasets",
    "eval_pipeline_config",
    "resolve_device",
    "resolve_normalizer",
]
