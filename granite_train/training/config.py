"""Typed sections of a training recipe: what ``granite-train train`` validates before it reads data.

A recipe (``recipes/*.yaml``) composes one entry per config group (``configs/<group>/``) and sets
the rest; the result is a :class:`RecipeConfig`. Every field's default lives in these dataclasses,
once; the YAML files set only what differs. An unknown or misspelt key anywhere raises
:class:`~granite_train.typed_config.ConfigKeyError` naming it and the valid keys.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any

from granite_train.data.prompts import PromptConfig
from granite_train.models.config import CTCModelConfig, SpeechLLMModelConfig, TurboCTCModelConfig
from granite_train.training.schedules import SCHEDULE_ARGS
from granite_train.typed_config import check_keys, from_mapping

STAGES = ("ctc", "speech_llm", "turboctc")
PRECISIONS = ("auto", "32-true", "32", "bf16-mixed", "bf16-true", "16-mixed", "16-true", "64-true")


@dataclass
class ScheduleConfig:
    """LR schedule (:mod:`granite_train.training.schedules`): ``triangular``, ``cosine`` or ``constant``.

    Attributes:
        start_lr / end_lr: triangular: the LR at step 0 and at the end; cosine: ``end_lr`` only.
        warmup_fraction / warmup_steps: length of the rise (steps win over the fraction).
    """

    name: str = "constant"
    start_lr: float | None = None
    end_lr: float | None = None
    warmup_fraction: float | None = None
    warmup_steps: int | None = None

    def __post_init__(self) -> None:
        if self.name not in ("triangular", "cosine", "constant"):
            raise ValueError(f"optim.schedule.name must be triangular, cosine or constant, got {self.name!r}")

    def arguments(self) -> dict[str, Any]:
        """The schedule arguments that are set (what :func:`build_schedule` takes)."""
        return {k: getattr(self, k) for k in sorted(SCHEDULE_ARGS) if getattr(self, k) is not None}


@dataclass
class OptimConfig:
    """AdamW with per-part LR settings.

    Attributes:
        lr: peak learning rate (default: the published stage-2 peak).
        weight_decay: decoupled weight decay (not on biases, norm scales or the Q-Former queries).
        fused: ``auto`` = one fused kernel when every parameter is on CPU or CUDA; false = per tensor.
        grad_clip: max global gradient norm; null disables clipping.
        accumulate_grad_batches: micro-batches per optimizer step.
        lr_scale: ``{parameter-name substring: LR factor}``, e.g. ``{projector: 2.0}``.
        start_step: ``{parameter-name substring: step}``: that part holds at LR 0 until the step.
    """

    lr: float = 1.0e-4
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = 1.0e-8
    fused: bool | str = "auto"
    grad_clip: float | None = 1.0
    accumulate_grad_batches: int = 1
    lr_scale: dict[str, float] = field(default_factory=dict)
    start_step: dict[str, int] = field(default_factory=dict)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)

    def __post_init__(self) -> None:
        if self.accumulate_grad_batches < 1:
            raise ValueError("optim.accumulate_grad_batches must be >= 1")
        if self.fused not in ("auto", True, False):
            raise ValueError(f"optim.fused must be auto, true or false, got {self.fused!r}")
        self.betas = tuple(self.betas)  # type: ignore[assignment]


@dataclass
class TrainerConfig:
    """The Lightning Trainer and the run's loop settings.

    Attributes:
        max_steps: optimizer steps (skipped non-finite steps do not count).
        accelerator / devices / num_nodes / strategy: Lightning's (``devices`` > 1: DDP), or
            ``fsdp2``: stage 2 with the LLM sharded over the ranks (torch FSDP2 through Lightning's
            model-parallel strategy, CPU or CUDA; :mod:`granite_train.training.sharding`).
        process_group_timeout_s: how long a DDP collective waits for the other ranks before it
            fails and the run exits (Lightning's default, 30 minutes). A rank whose processes died
            is noticed at once (its connections close); this bounds the wait on one that hangs or
            whose node vanished silently. Keep it above the longest wait of a healthy run (rank 0
            writing a checkpoint, the slowest rank's validation share). Applies when
            ``strategy`` is a DDP one, ``fsdp2``, or ``auto`` with ``num_nodes`` > 1.
        precision: ``auto`` = bf16 autocast where the device computes bf16 natively (CUDA with
            bf16, a CPU with AVX512-BF16 or AMX), fp32 elsewhere; or any Lightning precision.
        threads: torch intra-op threads; null = torch's default (all cores).
        val_every_n_steps: validation every N steps and at the end; null disables it.
        limit_val_batches: share (float) or number (int) of validation batches.
        checkpoint_every_n_steps: step checkpoints (and ``last.ckpt``) every N steps.
        keep_checkpoints: step checkpoints kept besides ``last.ckpt``.
        deterministic: bit-exact CPU runs (torch deterministic algorithms).
        progress_bar_refresh_rate: steps per bar refresh (each reads the logged metrics back).
        export_hf: write the final model as a transformers folder at the end.
    """

    max_steps: int = 1000
    accelerator: str = "auto"
    devices: int | str = "auto"
    num_nodes: int = 1
    strategy: str = "auto"
    process_group_timeout_s: float = 1800.0
    precision: str = "auto"
    threads: int | None = None
    val_every_n_steps: int | None = 250
    limit_val_batches: float | int = 1.0
    log_every_n_steps: int = 10
    checkpoint_every_n_steps: int = 1000
    keep_checkpoints: int = 1
    deterministic: bool = False
    enable_progress_bar: bool = True
    progress_bar_refresh_rate: int = 10
    export_hf: bool = True

    def __post_init__(self) -> None:
        self.precision = str(self.precision)
        if self.precision not in PRECISIONS:
            raise ValueError(f"trainer.precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.max_steps < 1:
            raise ValueError(f"trainer.max_steps must be >= 1, got {self.max_steps}")
        if not self.process_group_timeout_s > 0:
            raise ValueError(
                f"trainer.process_group_timeout_s must be > 0, got {self.process_group_timeout_s}"
            )


@dataclass
class AugmentConfig:
    """On-the-fly augmentation of training batches (all off by default), each the keyword arguments
    of its class or null for none.

    Attributes:
        spec_augment: :class:`~granite_train.audio.augment.SpecAugment` (``freq_masks``,
            ``freq_width``, ``time_masks``, ``time_width``, ``p``, ...) on the features.
        noise: :class:`~granite_train.audio.augment.AdditiveNoise` (``snr_db_range``, ``p``):
            white / pink noise at a random SNR.
        degrade: :class:`~granite_train.audio.degrade.Degrade`, acoustic variety, each step with its
            own probability (default 0): ``pitch_p`` / ``pitch_semitones`` (duration kept),
            ``reverb_p`` / ``rt60_range`` / ``drr_db_range`` (procedural rooms), ``telephone_p``
            (8 kHz, 300-3400 Hz), ``mu_law_p`` (8-bit companding). Pitch and room run before the
            noise, the channel after it. Speed perturbation is ``prepare.speed_factors`` of a pipeline.
    """

    spec_augment: dict[str, Any] | None = None
    noise: dict[str, Any] | None = None
    degrade: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        from granite_train.audio.augment import AdditiveNoise, SpecAugment
        from granite_train.audio.degrade import Degrade

        for name, cls in (("spec_augment", SpecAugment), ("noise", AdditiveNoise), ("degrade", Degrade)):
            args = set(inspect.signature(cls.__init__).parameters) - {"self"}
            check_keys(getattr(self, name) or {}, args, f"data.augment.{name}")
        if self.degrade:
            Degrade(**self.degrade)  # values checked now, before any data is read


@dataclass
class DataConfig:
    """Train and validation pipelines (:class:`~granite_train.data.pipeline.PipelineConfig` fields
    plus ``sources`` and ``prepare``; checked when the pipelines are built, before any data is read).

    Attributes:
        train: the training pipeline, streamed endlessly.
        val: the validation pipeline, or null.
        num_workers: loader workers per rank (each streams a disjoint share).
        check: read every record of the local training sources once before training (headers,
            not decoding: :mod:`granite_train.data.check`), print what is usable and skipped, and
            stop when a source has nothing usable. Hub sources are not read ahead. Off by default:
            large corpora take minutes to read; ``finetune`` always checks your data.
    """

    train: dict[str, Any] = field(default_factory=dict)
    val: dict[str, Any] | None = None
    num_workers: int = 0
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    check: bool = False

    def __post_init__(self) -> None:
        from granite_train.data.builders import build_pipeline_config

        # every key of both pipelines checked now, before a model is built or a file is read
        for name in ("train", "val"):
            values = getattr(self, name)
            if values:
                build_pipeline_config(values, f"data.{name}")


@dataclass
class ValidationConfig:
    """Stage-2 validation: greedy generation on the first ``generate_batches`` batches (WER)."""

    generate_batches: int = 4
    max_new_tokens: int = 64


@dataclass
class ExportConfig:
    """The final export (stage 2).

    Attributes:
        merge_lora: fold the LoRA into the weights (``speech_llm_hf/``); false keeps the adapter
            beside them (the 3.3 layout).
        lora_adapter: also write the LoRA alone (``speech_llm_lora/``) for vLLM's ``--enable-lora``
            on the base model (``model.init``); only when nothing else trained (else the reason is
            logged and the merged folder is what to serve).
    """

    merge_lora: bool = True
    lora_adapter: bool = False


@dataclass
class DebugConfig:
    """Test and diagnosis hooks.

    Attributes:
        log_sample_ids: write ``samples.rank<R>.jsonl``, the ids each micro-batch trained on.
        save_rank_weights: write ``rank_weights/encoder.rank<R>.safetensors`` at the end.
        fault_injection: ``{nan_loss_at_steps: [..], inf_grad_at_steps: [..],
            aux_dropped_at_steps: [..], ranks: [..]}``: those steps' loss NaN / one gradient
            infinite / no audio-CTC loss (stage 2), on those ranks (default all) (tests).
    """

    log_sample_ids: bool = False
    save_rank_weights: bool = False
    fault_injection: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        check_keys(
            self.fault_injection or {},
            {"nan_loss_at_steps", "inf_grad_at_steps", "aux_dropped_at_steps", "ranks"},
            "debug.fault_injection",
        )


@dataclass
class WandbConfig:
    """wandb logging: ``mode`` auto = online with ``WANDB_API_KEY`` set, offline files otherwise."""

    enabled: bool = True
    mode: str = "auto"
    project: str = "granite-train"
    entity: str | None = None

    def __post_init__(self) -> None:
        if self.mode not in ("auto", "online", "offline", "disabled"):
            raise ValueError(
                f"logger.wandb.mode must be auto, online, offline or disabled, got {self.mode!r}"
            )


@dataclass
class LoggerConfig:
    """Loggers besides ``metrics.csv`` (always written)."""

    wandb: WandbConfig = field(default_factory=WandbConfig)


@dataclass
class RecipeConfig:
    """A whole training run (what ``granite-train train recipe=...`` composes).

    Attributes:
        name: the run's name (logs, wandb).
        stage: ``ctc`` (stage 1, the encoder), ``speech_llm`` (stage 2) or ``turboctc`` (a
            granite-speech-5.0 TurboCTC model).
        output_dir: checkpoints, logs, curves and the export.
        resume: ``auto`` = continue from ``output_dir/checkpoints/last.ckpt`` if present; null =
            start over; or a checkpoint path.
        val_normalizer: text normalizer of the validation CER / WER (``auto``: Whisper English for en).
        model: :class:`CTCModelConfig` (stage 1), :class:`SpeechLLMModelConfig` (stage 2) or
            :class:`TurboCTCModelConfig`.
        prompts / validation / export: stage 2 only.
        paths: where things live (``configs/paths``), free-form.
    """

    name: str = "run"
    stage: str = "ctc"
    seed: int = 0
    output_dir: str = "work/experiments/run"
    resume: str | None = "auto"
    val_normalizer: str = "auto"
    model: Any = None
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    prompts: PromptConfig = field(default_factory=PromptConfig)
    validation: ValidationConfig = field(default_factory=ValidationConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    debug: DebugConfig = field(default_factory=DebugConfig)
    paths: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.stage not in STAGES:
            raise ValueError(f"stage must be one of {STAGES}, got {self.stage!r}")
        model_cls = {
            "ctc": CTCModelConfig,
            "speech_llm": SpeechLLMModelConfig,
            "turboctc": TurboCTCModelConfig,
        }[self.stage]
        self.model = from_mapping(model_cls, self.model, "model")


def load_recipe_config(values: Any) -> RecipeConfig:
    """A :class:`RecipeConfig` from a resolved recipe mapping (or an instance), every key checked."""
    return from_mapping(RecipeConfig, values)


__all__ = [
    "AugmentConfig",
    "DataConfig",
    "DebugConfig",
    "ExportConfig",
    "LoggerConfig",
    "OptimConfig",
    "RecipeConfig",
    "ScheduleConfig",
    "TrainerConfig",
    "ValidationConfig",
    "WandbConfig",
    "load_recipe_config",
]
