"""Build and run a training job from a resolved config (what ``granite-train train`` does).

The config is a :class:`~granite_train.training.config.RecipeConfig` or its mapping form (Hydra
resolves it first), checked key by key before anything else runs; see ``configs/`` for the groups
and ``recipes/`` for complete runs. Output layout of ``output_dir``::

    checkpoints/last.ckpt   (+ step checkpoints)   resumable Lightning checkpoints
    logs/version_N/metrics.csv                      CSV log of each launch (a resume adds one)
    metrics.csv                                     all launches merged, at the end of a run
    wandb/                                          wandb run (offline without an API key)
    curves.png                                      training loss and validation CER
    encoder_hf/                                     final encoder as a transformers folder
    config.yaml                                     the resolved config
"""

from __future__ import annotations

import json
import logging
import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import lightning as L
import torch
import yaml

from granite_train.audio.augment import AdditiveNoise, SpecAugment
from granite_train.audio.degrade import Degrade
from granite_train.data.builders import build_pipeline_config
from granite_train.data.collate import Collator
from granite_train.data.mixture import mixture_probabilities
from granite_train.data.pipeline import SpeechDataPipeline, build_dataloader
from granite_train.training.config import (
    DataConfig,
    RecipeConfig,
    TrainerConfig,
    WandbConfig,
    load_recipe_config,
)
from granite_train.training.precision import resolve_precision
from granite_train.training.sharding import STRATEGY_NAME as SHARDED_STRATEGY
from granite_train.training.sharding import is_sharded
from granite_train.typed_config import from_mapping, to_plain

log = logging.getLogger(__name__)

# Known, understood warnings that would otherwise greet every run:
_QUIET = [
    # we fetch inside training_step on purpose (exact loader state in checkpoints)
    r"Found `dataloader_iter` argument",
    r"You are using the `dataloader_iter` step flavor",
    # manual optimization: checkpoints hold the weights after the step, which is what we resume from
    r"Using ModelCheckpoint with manual optimization",
    r"'set_vital' is deprecated",
    r".*isinstance\(treespec, LeafSpec\)",
    # an endless IterableDataset has no length; steps bound the run
    r"Your `IterableDataset` has `__len__` defined",
]


class SpeechDataModule(L.LightningDataModule):
    """Train and validation loaders of a stage, built once the process knows its rank.

    ``data``: :class:`~granite_train.training.config.DataConfig` (or its mapping form): ``train`` (a
    pipeline config, streamed endlessly), ``val`` (a pipeline config or null), ``num_workers`` and
    ``augment``. ``extra_symbols``: the model's CTC symbols after the base vocabulary (a new
    language's letters), encoded in the targets.
    """

    def __init__(
        self,
        data: DataConfig | Mapping[str, Any],
        seed: int,
        snapshot_every_n_batches: int = 1,
        wrap_collator: Callable[[Collator, bool], Callable] | None = None,
        extra_symbols: Sequence[str] = (),
    ):
        super().__init__()
        self.data = data = from_mapping(DataConfig, data, "data")
        self.seed = seed
        self.extra_symbols = tuple(extra_symbols)
        # stage 2 wraps the audio collator with prompt / target tokenization (train flag second)
        self.wrap_collator = wrap_collator or (lambda collator, train: collator)
        # Loader workers ship their state (stream positions, buffered raw records: megabytes) with
        # every snapshot. Snapshots at checkpoint steps are all that resume needs; between them
        # StatefulDataLoader replays from the last snapshot, which is exact as well.
        self.snapshot_every_n_batches = max(1, int(snapshot_every_n_batches))
        self.train_config = build_pipeline_config(
            {**data.train, "seed": seed, "infinite": True}, "data.train"
        )
        specs = self.train_config.sources
        probs = mixture_probabilities(
            [s.weight for s in specs], [s.size for s in specs], self.train_config.alpha
        )
        self.requested_mixture = {s.name: float(p) for s, p in zip(specs, probs)}
        log.info(
            "requested mixture (alpha %.2f): %s",
            self.train_config.alpha,
            ", ".join(f"{name} {100 * p:.1f}%" for name, p in self.requested_mixture.items()),
        )
        self.val_config = None
        if data.val:
            self.val_config = build_pipeline_config(
                {"shuffle_buffer": 0, **data.val, "seed": seed, "infinite": False, "drop_last": False},
                "data.val",
            )

    def _rank_world(self) -> tuple[int, int]:
        if self.trainer is None:
            return 0, 1
        return self.trainer.global_rank, self.trainer.world_size

    def train_dataloader(self):
        spec = self.data.augment.spec_augment
        noise = self.data.augment.noise
        degrade = self.data.augment.degrade
        collator = Collator(
            compute_features=True,
            spec_augment=SpecAugment(**spec) if spec else None,
            noise=AdditiveNoise(**{**noise, "snr_db_range": tuple(noise["snr_db_range"])}) if noise else None,
            degrade=Degrade(**degrade) if degrade else None,
            seed=self.seed,
        )
        rank, world = self._rank_world()
        pipeline = SpeechDataPipeline(
            self.train_config, rank=rank, world_size=world, extra_symbols=self.extra_symbols
        )
        return build_dataloader(
            pipeline,
            num_workers=int(self.data.num_workers),
            collator=self.wrap_collator(collator, True),
            snapshot_every_n_steps=self.snapshot_every_n_batches,
        )

    def val_dataloader(self):
        if self.val_config is None:
            return []
        rank, world = self._rank_world()
        pipeline = SpeechDataPipeline(
            self.val_config, rank=rank, world_size=world, extra_symbols=self.extra_symbols
        )
        workers = min(int(self.data.num_workers), 1)
        collator = self.wrap_collator(Collator(compute_features=True), False)
        return build_dataloader(pipeline, num_workers=workers, collator=collator)


def _export(cfg: RecipeConfig, module: L.LightningModule, output_dir: Path, speech=None) -> Path:
    """The final model as a transformers folder: ``encoder_hf/`` (stage 1), ``turboctc_hf/`` or ``speech_llm_hf/``
    (of ``speech``, default ``module.model``: a sharded run passes the model of its full checkpoint)."""
    if cfg.stage == "ctc":
        from granite_train.models.export import export_hf_encoder

        return export_hf_encoder(module.encoder, output_dir / "encoder_hf")
    if cfg.stage == "turboctc":  # the released 5.0 layout: plain transformers loads it
        from granite_train.models.turboctc import save_turboctc

        processor = module.processor
        return save_turboctc(
            module.model, processor.tokenizer, output_dir / "turboctc_hf", processor.feature_extractor
        )
    from granite_train.models.speech_export import export_lora_adapter, export_speech_llm, only_lora_trained

    speech = module.model if speech is None else speech
    folder = export_speech_llm(speech, output_dir / "speech_llm_hf", merge_lora=cfg.export.merge_lora)
    if cfg.export.lora_adapter:
        why_not = only_lora_trained(speech)
        if why_not is None and not cfg.model.init:
            why_not = "the base model is not a released checkpoint (model.init)"
        if why_not is None:
            export_lora_adapter(speech, output_dir / "speech_llm_lora", cfg.model.init)
        else:
            log.warning("export.lora_adapter: no adapter written: %s (%s)", why_not, folder)
    return folder


@dataclass
class TrainResult:
    output_dir: Path
    last_checkpoint: Path | None
    global_step: int
    metrics: dict[str, float]
    counters: dict[str, float]


def _finish_wandb(wandb_logger) -> None:
    """End this run's wandb run. Lightning's ``WandbLogger`` reuses a run still open in the process
    (``wandb.run``), so without this a second ``train()`` in one process (``add-language``'s stage 1
    then stage 2, a notebook, the tests) would log into the first run's folder."""
    if wandb_logger is None or getattr(wandb_logger, "_experiment", None) is None:
        return
    import wandb

    if wandb.run is not None and wandb.run is wandb_logger._experiment:
        wandb.finish()


def _wandb_logger(cfg: WandbConfig, output_dir: Path, name: str):
    if cfg.mode == "disabled" or not cfg.enabled:
        return None
    try:
        from lightning.pytorch.loggers import WandbLogger
    except ImportError:  # pragma: no cover - wandb is a dependency
        log.warning("wandb is not installed: only the CSV log is written")
        return None
    offline = cfg.mode == "offline" or (cfg.mode == "auto" and not os.environ.get("WANDB_API_KEY"))
    if offline:
        log.info(
            "wandb: offline (no WANDB_API_KEY); sync later with `wandb sync %s/wandb/offline-run-*`",
            output_dir,
        )
    return WandbLogger(
        name=name,
        project=cfg.project,
        entity=cfg.entity,
        save_dir=str(output_dir),
        offline=offline,
        log_model=False,
    )


def _resume_path(resume: str | None, ckpt_dir: Path) -> str | None:
    if resume in (None, "", "never", False):
        return None
    if resume == "auto":
        last = ckpt_dir / "last.ckpt"
        return str(last) if last.exists() else None
    path = Path(resume)
    if not path.exists():
        raise FileNotFoundError(f"resume checkpoint {path} does not exist")
    return str(path)


def _write_summary(
    output_dir: Path, steps: int, counters: dict[str, float], metrics: dict[str, float]
) -> None:
    """``summary.json`` (steps, counters, last metrics) and what the mixture served, printed."""
    from granite_train.training.step_module import counter_shares

    (output_dir / "summary.json").write_text(
        json.dumps({"steps": steps, "counters": counters, "metrics": metrics}, indent=2, sort_keys=True)
    )
    for what, prefix in (("source", "seen/"), ("task", "task/")):
        if shares := counter_shares(counters, prefix):
            print(f"[summary] examples trained on per {what} (rank 0): {shares}", flush=True)
    for line in skipped_summary(counters):
        print(line, flush=True)
    if warning := audio_ctc_warning(counters):
        print(f"[summary] warning: {warning}", flush=True)
        log.warning("%s", warning)


def skipped_summary(counters: Mapping[str, float]) -> list[str]:
    """What the data pipeline skipped or repaired, per source and reason (each record counted once),
    with the fix for each reason; empty when nothing was."""
    from granite_train.data.skips import skip_report_lines

    by_source: dict[str, dict[str, int]] = {}
    for key, n in counters.items():
        if key.startswith("skipped_in/") and n:
            source, reason = key[len("skipped_in/") :].rsplit("/", 1)
            by_source.setdefault(source, {})[reason] = int(n)
    if not by_source:
        return []
    return skip_report_lines(by_source, title="[summary] records skipped or repaired (rank 0, each once):")


def check_training_data(data: DataConfig) -> str | None:
    """``data.check``: every record of the local training sources read once (headers), the report
    printed, and a :class:`~granite_train.data.errors.DataError` if a source has nothing usable."""
    from granite_train.data.check import check_and_report

    if not data.check:
        return None
    pipeline = build_pipeline_config(data.train, "data.train")
    local = [s for s in pipeline.sources if s.kind != "hub"]
    for spec in pipeline.sources:
        if spec.kind == "hub":
            print(f"[data check] {spec.name}: a hub dataset, not read ahead", flush=True)
    title = "[data check] training data, every record read once (headers):"
    return check_and_report(local, pipeline.prepare, title).to_markdown()


def audio_ctc_warning(counters: Mapping[str, float], share: float = 0.25) -> str | None:
    """A warning when the audio-token CTC loss left out more than ``share`` of the utterances: their
    targets had more tokens than the utterance has audio tokens (10 per second as published), as
    when the tokenizer spends several byte tokens per character of a new script."""
    dropped, seen = counters.get("skipped/audio_ctc_too_short", 0), counters.get("utterances", 0)
    if not seen or dropped <= share * seen:
        return None
    return (
        f"the audio-token CTC loss (model.loss.audio_ctc_weight) left out {int(dropped)} of {int(seen)} "
        f"utterances ({100 * dropped / seen:.1f}%): their targets have more tokens than audio tokens, so "
        "they trained without it (a tokenizer spending several tokens per character, e.g. on a new "
        "script: `granite-train coverage` reports the ratio; extend the tokenizer or shorten the targets)"
    )


def _report_memory(speech, max_frames: int, precision: str, device: torch.device, output_dir: Path) -> None:
    """Print (and write) what a training step will need, before the first one runs."""
    from granite_train.training.memory import estimate_step_memory

    try:
        estimate = estimate_step_memory(speech, max_frames, precision, device)
    except Exception as err:  # advisory only: a model the dry run cannot trace still trains
        log.warning("memory estimate skipped (%s: %s)", type(err).__name__, err)
        return
    print(estimate.report(), flush=True)
    record = {
        **vars(estimate),
        "total": estimate.total,
        "fits": estimate.fits(),
        "frames_that_fit": estimate.frames_that_fit(),
    }
    (output_dir / "memory_estimate.json").write_text(json.dumps(record, indent=2))


def train(
    cfg: RecipeConfig | Mapping[str, Any], extra_callbacks: list[L.Callback] | None = None
) -> TrainResult:
    """Run the stage named by ``cfg.stage`` (``ctc`` or ``speech_llm``) and return where its outputs are.

    The whole config is checked first: an unknown key fails here, before any data is read.
    Process-wide torch settings it changes (deterministic algorithms, threads) are restored on return.
    """
    recipe = load_recipe_config(cfg)
    was_deterministic = torch.are_deterministic_algorithms_enabled()
    threads = torch.get_num_threads()
    try:
        return _train(recipe, extra_callbacks or [])
    finally:
        torch.use_deterministic_algorithms(was_deterministic)
        torch.set_num_threads(threads)


def _build_stage(cfg: RecipeConfig, max_steps: int):
    """The stage's LightningModule and its collator wrapper (stage 2 adds prompts and targets)."""
    common = dict(
        model=cfg.model,
        optim=cfg.optim,
        total_steps=max_steps,
        seed=cfg.seed,
        val_normalizer=cfg.val_normalizer,
        fault_injection=cfg.debug.fault_injection,
    )
    if cfg.stage == "ctc":
        from granite_train.training.ctc_module import CTCPretrainModule

        return CTCPretrainModule(**common), None
    if cfg.stage == "turboctc":  # its own features and BPE targets from the waveforms and texts
        from granite_train.training.turboctc_module import TurboCTCModule

        module = TurboCTCModule(**common)
        return module, lambda collator, train: module.collator(collator)
    from granite_train.data.prompts import PromptBuilder, SpeechLLMCollator
    from granite_train.models.encoder_cache import check_encoder_cache_allowed
    from granite_train.training.speech_llm_module import SpeechLLMModule

    check_encoder_cache_allowed(to_plain(cfg.model), to_plain(cfg.data))
    module = SpeechLLMModule(
        **common,
        val_generate_batches=cfg.validation.generate_batches,
        max_new_tokens=cfg.validation.max_new_tokens,
        normalized_translations=cfg.prompts.normalize_translations,
    )
    speech = module.model

    def wrap(collator: Collator, train: bool) -> SpeechLLMCollator:
        # evaluation prompts always use the first (published) instruction
        config = cfg.prompts if train else replace(cfg.prompts, vary_instructions=False)
        builder = PromptBuilder(
            speech.tokenizer, config, speech.config.window_size, speech.config.downsample_rate, seed=cfg.seed
        )
        return SpeechLLMCollator(builder, collator)

    return module, wrap


def _strategy(tcfg: TrainerConfig) -> Any:
    """``trainer.strategy``; a DDP one (or ``fsdp2``, :mod:`.sharding`) built with
    ``trainer.process_group_timeout_s``."""
    from datetime import timedelta

    from lightning.pytorch.strategies import DDPStrategy, StrategyRegistry

    from granite_train.training.sharding import ShardedDataParallelStrategy

    name = tcfg.strategy
    if name == SHARDED_STRATEGY:
        return ShardedDataParallelStrategy(timeout=timedelta(seconds=float(tcfg.process_group_timeout_s)))
    if name == "auto" and int(tcfg.num_nodes) > 1:
        name = "ddp"  # what Lightning picks for several nodes
    entry = StrategyRegistry[name] if name in StrategyRegistry else {}
    if not entry or not issubclass(entry["strategy"], DDPStrategy):
        return tcfg.strategy
    timeout = timedelta(seconds=float(tcfg.process_group_timeout_s))
    return entry["strategy"](**entry["init_params"], timeout=timeout)


def _train(cfg: RecipeConfig, extra_callbacks: list[L.Callback]) -> TrainResult:
    from granite_train.training.callbacks import RankWeights, SampleLog, merge_metrics, plot_curves

    output_dir = Path(cfg.output_dir).resolve()
    output_dir.mkdir(parents=True, exist_ok=True)
    ckpt_dir = output_dir / "checkpoints"
    seed = int(cfg.seed)
    tcfg = cfg.trainer
    debug = cfg.debug
    deterministic = bool(tcfg.deterministic)
    for pattern in _QUIET:
        warnings.filterwarnings("ignore", message=pattern)
    L.seed_everything(seed, workers=True, verbose=False)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=False)
    if tcfg.threads:
        torch.set_num_threads(int(tcfg.threads))
    precision = resolve_precision(tcfg.precision, tcfg.accelerator)

    max_steps = int(tcfg.max_steps)
    accumulate = int(cfg.optim.accumulate_grad_batches)
    if tcfg.strategy == SHARDED_STRATEGY and cfg.stage != "speech_llm":
        raise ValueError(
            f"trainer.strategy={SHARDED_STRATEGY} shards a stage-2 LLM; stage {cfg.stage!r} trains an "
            "encoder that fits one device: use trainer.strategy=ddp (or auto)"
        )
    check_training_data(cfg.data)  # before a model is built: bad data fails in seconds
    module, wrap_collator = _build_stage(cfg, max_steps)
    every = int(tcfg.checkpoint_every_n_steps)
    encoder = module.encoder if cfg.stage == "ctc" else module.model.encoder
    datamodule = SpeechDataModule(
        cfg.data,
        seed=seed,
        snapshot_every_n_batches=every * accumulate,
        wrap_collator=wrap_collator,
        extra_symbols=getattr(encoder, "extra_symbols", ()),  # targets spell what the head spells
    )

    from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint, TQDMProgressBar
    from lightning.pytorch.loggers import CSVLogger

    callbacks: list[L.Callback] = [
        ModelCheckpoint(
            dirpath=ckpt_dir,
            filename="step{step:08d}",
            auto_insert_metric_name=False,
            every_n_train_steps=every,
            save_top_k=int(tcfg.keep_checkpoints),
            monitor="step",
            mode="max",
            save_last=True,
            save_on_train_epoch_end=False,
        ),
    ]
    callbacks += extra_callbacks
    progress_bar = bool(tcfg.enable_progress_bar)
    if progress_bar:
        # each refresh reads the logged metrics back (a host sync per value): every step that is
        # ~8% of a 2-core CPU step, every 10th step it is noise
        callbacks.append(TQDMProgressBar(refresh_rate=int(tcfg.progress_bar_refresh_rate)))
    if debug.log_sample_ids:
        callbacks.append(SampleLog(output_dir))
    if debug.save_rank_weights:
        callbacks.append(RankWeights(output_dir / "rank_weights"))

    # one CSV per launch (logs/version_N): Lightning's CSV logger truncates an existing file
    loggers: list = [CSVLogger(save_dir=str(output_dir), name="logs")]
    wandb_logger = _wandb_logger(cfg.logger.wandb, output_dir, str(cfg.name))
    if wandb_logger is not None:
        loggers.append(wandb_logger)
        callbacks.append(LearningRateMonitor(logging_interval="step"))

    val_every = tcfg.val_every_n_steps
    has_val = datamodule.val_config is not None and val_every
    trainer = L.Trainer(
        max_steps=max_steps,
        max_epochs=-1,
        accelerator=tcfg.accelerator,
        devices=tcfg.devices,
        num_nodes=int(tcfg.num_nodes),
        strategy=_strategy(tcfg),
        precision=precision,
        val_check_interval=int(val_every) * accumulate if has_val else None,
        check_val_every_n_epoch=None,
        limit_val_batches=tcfg.limit_val_batches if has_val else 0,
        num_sanity_val_steps=0,
        log_every_n_steps=int(tcfg.log_every_n_steps),
        callbacks=callbacks,
        logger=loggers,
        deterministic=deterministic,
        enable_progress_bar=progress_bar,
        use_distributed_sampler=False,
        default_root_dir=str(output_dir),
    )
    if trainer.is_global_zero:
        with open(output_dir / "config.yaml", "w") as f:  # every field, defaults included
            yaml.safe_dump(to_plain(cfg), f, sort_keys=False)
        if cfg.stage == "speech_llm":  # tokenizer + processor: what export needs besides a ckpt
            from granite_train.models.speech_export import save_processor

            save_processor(module.model, output_dir / "processor")
            max_frames = datamodule.train_config.max_frames
            _report_memory(module.model, max_frames, precision, trainer.strategy.root_device, output_dir)
    ckpt_path = _resume_path(cfg.resume, ckpt_dir)
    if ckpt_path:
        log.info("resuming from %s", ckpt_path)
    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)

        if has_val and trainer.global_step % int(val_every) != 0:
            trainer.validate(module, datamodule=datamodule, verbose=False)
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.save()
            versions = sorted(
                (output_dir / "logs").glob("version_*/metrics.csv"), key=lambda p: int(p.parent.name[8:])
            )
            merged = merge_metrics(versions, output_dir / "metrics.csv")
            png = merged and plot_curves(merged, output_dir / "curves.png", title=str(cfg.name))
            if png:
                log.info("loss / CER curves: %s", png)
        if tcfg.export_hf and is_sharded(trainer.strategy):
            # the weights are spread over the ranks: every rank takes part in writing one full
            # checkpoint, which rank 0 then exports as any checkpoint is exported
            final = ckpt_dir / "final.ckpt"
            trainer.save_checkpoint(final)
            if trainer.is_global_zero:
                from granite_train.models.speech_export import speech_llm_from_checkpoint

                _export(
                    cfg,
                    module,
                    output_dir,
                    speech=speech_llm_from_checkpoint(final, output_dir / "processor"),
                )
        elif trainer.is_global_zero and tcfg.export_hf:
            _export(cfg, module, output_dir)
        if trainer.is_global_zero:
            _write_summary(output_dir, trainer.global_step, dict(module.counters), metrics)
        last = ckpt_dir / "last.ckpt"
        return TrainResult(
            output_dir=output_dir,
            last_checkpoint=last if last.exists() else None,
            global_step=trainer.global_step,
            metrics=metrics,
            counters=dict(module.counters),
        )
    finally:  # a finished run: the next train() in this process must not log into it
        _finish_wandb(wandb_logger)
