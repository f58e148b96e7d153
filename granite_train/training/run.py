"""Build and run a training job from a resolved config (what ``granite-train train`` does).

The config is a plain mapping (Hydra resolves it first); see ``configs/`` for the groups and
``recipes/`` for complete runs. Output layout of ``output_dir``::

    checkpoints/last.ckpt   (+ step checkpoints)   resumable Lightning checkpoints
    logs/version_N/metrics.csv                      CSV log of each launch (a resume adds one)
    metrics.csv                                     all launches merged, at the end of a run
    wandb/                                          wandb run (offline without an API key)
    curves.png                                      training loss and validation CER
    encoder_hf/                                     final encoder as a transformers folder
    config.yaml                                     the resolved config
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
import yaml

from granite_train.audio.augment import AdditiveNoise, SpecAugment
from granite_train.data.builders import build_pipeline_config
from granite_train.data.collate import Collator
from granite_train.data.mixture import mixture_probabilities
from granite_train.data.pipeline import SpeechDataPipeline, build_dataloader

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

    ``data`` holds ``train`` (a pipeline config, streamed endlessly), ``val`` (a pipeline config
    or null), ``num_workers`` and ``augment`` (``spec_augment`` / ``noise`` arguments or null).
    """

    def __init__(
        self,
        data: Mapping[str, Any],
        seed: int,
        snapshot_every_n_batches: int = 1,
        wrap_collator: Callable[[Collator, bool], Callable] | None = None,
    ):
        super().__init__()
        self.data = data
        self.seed = seed
        # stage 2 wraps the audio collator with prompt / target tokenization (train flag second)
        self.wrap_collator = wrap_collator or (lambda collator, train: collator)
        # Loader workers ship their state (stream positions, buffered raw records: megabytes) with
        # every snapshot. Snapshots at checkpoint steps are all that resume needs; between them
        # StatefulDataLoader replays from the last snapshot, which is exact as well.
        self.snapshot_every_n_batches = max(1, int(snapshot_every_n_batches))
        self.train_config = build_pipeline_config({**data["train"], "seed": seed, "infinite": True})
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
        val = data.get("val")
        self.val_config = None
        if val:
            self.val_config = build_pipeline_config(
                {"shuffle_buffer": 0, **val, "seed": seed, "infinite": False, "drop_last": False}
            )

    def _rank_world(self) -> tuple[int, int]:
        if self.trainer is None:
            return 0, 1
        return self.trainer.global_rank, self.trainer.world_size

    def train_dataloader(self):
        augment = self.data.get("augment") or {}
        spec = augment.get("spec_augment")
        noise = augment.get("noise")
        collator = Collator(
            compute_features=True,
            spec_augment=SpecAugment(**spec) if spec else None,
            noise=AdditiveNoise(**{**noise, "snr_db_range": tuple(noise["snr_db_range"])}) if noise else None,
            seed=self.seed,
        )
        rank, world = self._rank_world()
        pipeline = SpeechDataPipeline(self.train_config, rank=rank, world_size=world)
        return build_dataloader(
            pipeline,
            num_workers=int(self.data.get("num_workers", 0)),
            collator=self.wrap_collator(collator, True),
            snapshot_every_n_steps=self.snapshot_every_n_batches,
        )

    def val_dataloader(self):
        if self.val_config is None:
            return []
        rank, world = self._rank_world()
        pipeline = SpeechDataPipeline(self.val_config, rank=rank, world_size=world)
        workers = min(int(self.data.get("num_workers", 0)), 1)
        collator = self.wrap_collator(Collator(compute_features=True), False)
        return build_dataloader(pipeline, num_workers=workers, collator=collator)


def _export(cfg: Mapping[str, Any], module: L.LightningModule, output_dir: Path) -> Path:
    """The final model as a transformers folder: ``encoder_hf/`` (stage 1) or ``speech_llm_hf/``."""
    if cfg.get("stage") == "ctc":
        from granite_train.models.export import export_hf_encoder

        return export_hf_encoder(module.encoder, output_dir / "encoder_hf")
    from granite_train.models.speech_export import export_speech_llm

    merge = bool((cfg.get("export") or {}).get("merge_lora", True))
    return export_speech_llm(module.model, output_dir / "speech_llm_hf", merge_lora=merge)


@dataclass
class TrainResult:
    output_dir: Path
    last_checkpoint: Path | None
    global_step: int
    metrics: dict[str, float]
    counters: dict[str, float]


def _wandb_logger(cfg: Mapping[str, Any], output_dir: Path, name: str):
    mode = cfg.get("mode", "auto")
    if mode == "disabled" or not cfg.get("enabled", True):
        return None
    try:
        from lightning.pytorch.loggers import WandbLogger
    except ImportError:  # pragma: no cover - wandb is a dependency
        log.warning("wandb is not installed: only the CSV log is written")
        return None
    offline = mode == "offline" or (mode == "auto" and not os.environ.get("WANDB_API_KEY"))
    if offline:
        log.info(
            "wandb: offline (no WANDB_API_KEY); sync later with `wandb sync %s/wandb/offline-run-*`",
            output_dir,
        )
    return WandbLogger(
        name=name,
        project=cfg.get("project", "granite-train"),
        entity=cfg.get("entity"),
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


def train(cfg: Mapping[str, Any], extra_callbacks: list[L.Callback] | None = None) -> TrainResult:
    """Run the stage named by ``cfg["stage"]`` (``ctc``) and return where its outputs are.

    Process-wide torch settings it changes (deterministic algorithms, threads) are restored on return.
    """
    was_deterministic = torch.are_deterministic_algorithms_enabled()
    threads = torch.get_num_threads()
    try:
        return _train(cfg, extra_callbacks or [])
    finally:
        torch.use_deterministic_algorithms(was_deterministic)
        torch.set_num_threads(threads)


def _build_stage(cfg: Mapping[str, Any], max_steps: int, seed: int, debug: Mapping[str, Any]):
    """The stage's LightningModule and its collator wrapper (stage 2 adds prompts and targets)."""
    stage = cfg.get("stage")
    if stage == "ctc":
        from granite_train.training.ctc_module import CTCPretrainModule

        module = CTCPretrainModule(
            model=dict(cfg["model"]),
            optim=dict(cfg["optim"]),
            total_steps=max_steps,
            seed=seed,
            val_normalizer=cfg.get("val_normalizer", "basic"),
            fault_injection=debug.get("fault_injection"),
        )
        return module, None
    if stage == "speech_llm":
        from granite_train.data.prompts import PromptBuilder, PromptConfig, SpeechLLMCollator
        from granite_train.models.encoder_cache import check_encoder_cache_allowed
        from granite_train.training.speech_llm_module import SpeechLLMModule

        check_encoder_cache_allowed(cfg["model"], cfg.get("data") or {})
        val = dict(cfg.get("validation") or {})
        module = SpeechLLMModule(
            model=dict(cfg["model"]),
            optim=dict(cfg["optim"]),
            total_steps=max_steps,
            seed=seed,
            val_normalizer=cfg.get("val_normalizer", "auto"),
            val_generate_batches=int(val.get("generate_batches", 4)),
            max_new_tokens=int(val.get("max_new_tokens", 64)),
            fault_injection=debug.get("fault_injection"),
        )
        speech = module.model
        prompts = dict(cfg.get("prompts") or {})

        def wrap(collator: Collator, train: bool) -> SpeechLLMCollator:
            config = PromptConfig(**{**prompts, **({} if train else {"vary_instructions": False})})
            builder = PromptBuilder(
                speech.tokenizer, config, speech.config.window_size, speech.config.downsample_rate, seed=seed
            )
            return SpeechLLMCollator(builder, collator)

        return module, wrap
    raise ValueError(f"unknown stage {stage!r}; this build trains: ctc, speech_llm")


def _train(cfg: Mapping[str, Any], extra_callbacks: list[L.Callback]) -> TrainResult:
    from granite_train.training.callbacks import RankWeights, SampleLog, merge_metrics, plot_curves

    output_dir = Path(cfg["output_dir"]).resolve()
    output_dir.mkdir(parents=True, exist_ok=True)
    ckpt_dir = output_dir / "checkpoints"
    seed = int(cfg.get("seed", 0))
    tcfg = dict(cfg["trainer"])
    debug = dict(cfg.get("debug") or {})
    deterministic = bool(tcfg.get("deterministic", False))
    for pattern in _QUIET:
        warnings.filterwarnings("ignore", message=pattern)
    L.seed_everything(seed, workers=True, verbose=False)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=False)
    if tcfg.get("threads"):
        torch.set_num_threads(int(tcfg["threads"]))

    max_steps = int(tcfg["max_steps"])
    accumulate = int(cfg["optim"].get("accumulate_grad_batches", 1))
    module, wrap_collator = _build_stage(cfg, max_steps, seed, debug)
    every = int(tcfg.get("checkpoint_every_n_steps", 1000))
    datamodule = SpeechDataModule(
        cfg["data"], seed=seed, snapshot_every_n_batches=every * accumulate, wrap_collator=wrap_collator
    )

    from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint, TQDMProgressBar
    from lightning.pytorch.loggers import CSVLogger

    callbacks: list[L.Callback] = [
        ModelCheckpoint(
            dirpath=ckpt_dir,
            filename="step{step:08d}",
            auto_insert_metric_name=False,
            every_n_train_steps=every,
            save_top_k=int(tcfg.get("keep_checkpoints", 1)),
            monitor="step",
            mode="max",
            save_last=True,
            save_on_train_epoch_end=False,
        ),
    ]
    callbacks += extra_callbacks
    progress_bar = bool(tcfg.get("enable_progress_bar", True))
    if progress_bar:
        # each refresh reads the logged metrics back (a host sync per value): every step that is
        # ~8% of a 2-core CPU step, every 10th step it is noise
        callbacks.append(TQDMProgressBar(refresh_rate=int(tcfg.get("progress_bar_refresh_rate", 10))))
    if debug.get("log_sample_ids"):
        callbacks.append(SampleLog(output_dir))
    if debug.get("save_rank_weights"):
        callbacks.append(RankWeights(output_dir / "rank_weights"))

    # one CSV per launch (logs/version_N): Lightning's CSV logger truncates an existing file
    loggers: list = [CSVLogger(save_dir=str(output_dir), name="logs")]
    wandb_logger = _wandb_logger(
        dict((cfg.get("logger") or {}).get("wandb") or {}), output_dir, str(cfg.get("name"))
    )
    if wandb_logger is not None:
        loggers.append(wandb_logger)
        callbacks.append(LearningRateMonitor(logging_interval="step"))

    val_every = tcfg.get("val_every_n_steps")
    has_val = datamodule.val_config is not None and val_every
    trainer = L.Trainer(
        max_steps=max_steps,
        max_epochs=-1,
        accelerator=tcfg.get("accelerator", "auto"),
        devices=tcfg.get("devices", "auto"),
        num_nodes=int(tcfg.get("num_nodes", 1)),
        strategy=tcfg.get("strategy", "auto"),
        precision=tcfg.get("precision", "32-true"),
        val_check_interval=int(val_every) * accumulate if has_val else None,
        check_val_every_n_epoch=None,
        limit_val_batches=tcfg.get("limit_val_batches", 1.0) if has_val else 0,
        num_sanity_val_steps=0,
        log_every_n_steps=int(tcfg.get("log_every_n_steps", 10)),
        callbacks=callbacks,
        logger=loggers,
        deterministic=deterministic,
        enable_progress_bar=progress_bar,
        use_distributed_sampler=False,
        default_root_dir=str(output_dir),
    )
    if trainer.is_global_zero:
        with open(output_dir / "config.yaml", "w") as f:
            yaml.safe_dump(dict(cfg), f, sort_keys=False)
        if cfg.get("stage") == "speech_llm":  # tokenizer + processor: what export needs besides a ckpt
            from granite_train.models.speech_export import save_processor

            save_processor(module.model, output_dir / "processor")
    ckpt_path = _resume_path(cfg.get("resume", "auto"), ckpt_dir)
    if ckpt_path:
        log.info("resuming from %s", ckpt_path)
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
        png = merged and plot_curves(merged, output_dir / "curves.png", title=str(cfg.get("name", "")))
        if png:
            log.info("loss / CER curves: %s", png)
    if trainer.is_global_zero and tcfg.get("export_hf", True):
        _export(cfg, module, output_dir)
    last = ckpt_dir / "last.ckpt"
    return TrainResult(
        output_dir=output_dir,
        last_checkpoint=last if last.exists() else None,
        global_step=trainer.global_step,
        metrics=metrics,
        counters=dict(module.counters),
    )
