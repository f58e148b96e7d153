"""``granite-train finetune``: a released checkpoint fine-tuned on your audio, scored before and after.

The steps (:class:`~granite_train.workflows.finetune_config.FinetuneConfig`, ``configs/finetune.yaml``):
the held-out split (given, or made from the data: by speaker when known, else by recording) and an
optional general-domain regression set are scored with the released model;
``recipes/speech_llm_finetune.yaml`` trains on the rest (plus a replay share of general-domain data,
if asked); the export is scored on the same sets; a table compares the two (``results.md`` /
``results.json`` under ``output_dir``, written by the shared core
:mod:`granite_train.workflows.before_after`; the training curves are in ``train/curves.png``).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from granite_train.data.check import DataCheck
from granite_train.data.holdout import HoldoutPlan
from granite_train.data.prepare import PrepareConfig
from granite_train.data.sources import SourceSpec
from granite_train.typed_config import from_mapping
from granite_train.workflows.finetune_config import TRAINS, FinetuneConfig

log = logging.getLogger(__name__)

EXPORT = "speech_llm_hf"
"""The training run's export folder: what is scored after training."""
TURBOCTC_EXPORT = "turboctc_hf"
"""... of a granite-speech-5.0 TurboCTC model (``recipes/turboctc_finetune.yaml``)."""
TURBOCTC_TRAINS = ("all", "encoder_top")


@dataclass
class FinetuneSources:
    """What fine-tuning reads: the training sources (your data minus the held-out split, plus
    replay) and the test sets (the held-out split, plus the regression set)."""

    train: list[SourceSpec]
    tests: list[SourceSpec]


def _source(name: str, path: str, split: str, language: str, **extra: Any) -> SourceSpec:
    # a local folder or manifest usually has no id column; the audio path is the id then
    local = {"id_column": None} if Path(path).exists() else {}
    return SourceSpec(name=name, path=str(path), split=split, language=language, task="asr", **local, **extra)


def _columns(config: FinetuneConfig) -> dict[str, Any]:
    """How your data names its columns, and its manifest encoding."""
    return {
        "text_column": config.text_column,
        "audio_column": config.audio_column,
        "speaker_column": config.speaker_column,
        "encoding": config.encoding,
    }


def your_data(config: FinetuneConfig) -> SourceSpec:
    """Your data as one source, every record (what the data check reads and the split is made of)."""
    return _source("mine", config.data_path, config.data_split, config.language, **_columns(config))


def finetune_sources(config: FinetuneConfig, plan: HoldoutPlan | None = None) -> FinetuneSources:
    """Training sources (your data, minus the held-out split, plus replay) and test sets.

    ``plan``: the held-out split chosen from the checked data (:func:`holdout_plan`); without it
    (and without ``eval_data``) each record is placed by a hash of its speaker or recording.
    """
    share, yours = config.replay_share, (config.data_path, config.data_split, config.language)
    columns = _columns(config)
    if plan is not None and not config.eval_data:
        mine = dataclasses.replace(your_data(config), weight=1.0 - share)
        train, heldout = [plan.apply(mine, "exclude")], plan.apply(your_data(config), "only")
        heldout = dataclasses.replace(heldout, name="heldout")
    else:
        # without eval_data the held-out split is made from your data: both sides name it alike
        split = {} if config.eval_data else {"holdout_share": config.holdout_share,
                                             "holdout_speakers": list(config.holdout_speakers)}  # fmt: skip
        exclude = {"holdout": "exclude", **split} if split else {}
        train = [_source("mine", *yours, weight=1.0 - share, **exclude, **columns)]
        heldout = _source("heldout", *yours, holdout="only", **split, **columns)
    if share > 0:
        train.append(_source("replay", config.replay, "train", config.regression_language, weight=share))
    if config.eval_data:
        tests = [_source("heldout", config.eval_data, "test", config.language, **columns)]
    else:
        tests = [heldout]
    if config.regression:
        tests.append(_source("regression", config.regression, "test", config.regression_language))
    return FinetuneSources(train=train, tests=tests)


def recipe_overrides(config: FinetuneConfig, train_sources: list[SourceSpec], output_dir: Path) -> list[str]:
    """The ``speech_llm_finetune`` overrides the finetune settings stand for."""
    from granite_train.workflows.recipe_overrides import device_trainer_overrides, sources_override

    encoder_top = config.trains == "encoder_top"
    train = {**config.trained_parts, **({"encoder_layers": config.encoder_layers} if encoder_top else {})}
    out = [
        *device_trainer_overrides(),
        f"name={config.name}",
        f"output_dir={output_dir}",
        f"model.init={config.model_path}",
        "model.train={" + ", ".join(f"{k}: {str(v).lower()}" for k, v in train.items()) + "}",
        f"model.lora={{rank: {config.lora_rank}, alpha: {config.lora_rank}}}"
        if config.adds_lora
        else "model.lora=null",
        f"trainer.max_steps={config.steps}",
        f"trainer.checkpoint_every_n_steps={config.steps}",
        "trainer.val_every_n_steps=null",  # scored before and after instead
        f"optim.schedule.warmup_steps={config.warmup}",
        f"data.train.max_frames={config.max_frames}",
        sources_override("data.train.sources", train_sources),
        f"export.merge_lora={str(config.merge_lora).lower()}",
        # the LoRA alone for vLLM's --enable-lora: valid when nothing else trained
        f"export.lora_adapter={str(config.trains == 'lora').lower()}",
    ]
    if config.gradient_checkpointing:
        out.append("model.gradient_checkpointing={llm: true, encoder: true}")
    if encoder_top:  # the CTC head stays valid: the encoder's own CTC as an auxiliary
        lowercase = str(config.ctc_lowercase).lower()
        out += [
            f"model.loss.encoder_ctc_weight={float(config.encoder_ctc_weight)}",
            "data.train.prepare.ctc_targets=true",
            f"data.train.lowercase={lowercase}",
            f"data.train.strip_punctuation={lowercase}",
        ]
    if config.lr is not None:
        out.append(f"optim.lr={float(config.lr)}")
    return out + list(config.overrides)


def turboctc_recipe_overrides(
    config: FinetuneConfig, train_sources: list[SourceSpec], output_dir: Path
) -> list[str]:
    """The ``turboctc_finetune`` overrides the finetune settings stand for (a 5.0 TurboCTC model)."""
    from granite_train.workflows.recipe_overrides import device_trainer_overrides, sources_override

    top = config.encoder_layers if config.trains == "encoder_top" else None
    out = [
        *device_trainer_overrides(),
        f"name={config.name}",
        f"output_dir={output_dir}",
        f"model.init={config.model_path}",
        f"model.train_top_layers={'null' if top is None else top}",
        f"model.normalize_targets={str(config.ctc_lowercase).lower()}",
        f"trainer.max_steps={config.steps}",
        f"trainer.checkpoint_every_n_steps={config.steps}",
        f"optim.schedule.warmup_steps={config.warmup}",
        f"data.train.max_frames={config.max_frames}",
        sources_override("data.train.sources", train_sources),
    ]
    if config.lr is not None:
        out.append(f"optim.lr={float(config.lr)}")
    return out + list(config.overrides)


def _model_family(config: FinetuneConfig) -> str:
    """``turboctc`` (a granite-speech-5.0 TurboCTC folder) or ``speech_llm``; the ``trains`` the
    family has, checked (a ValueError naming the valid ones)."""
    from granite_train.eval.turboctc import is_turboctc_folder

    if is_turboctc_folder(config.model_path):
        if config.trains not in TURBOCTC_TRAINS:
            raise ValueError(
                f"trains={config.trains}: {config.model_path} is a granite-speech-5.0 TurboCTC model (CTC "
                f"only: no LLM, projector or LoRA); use trains=all (the whole model) or trains=encoder_top"
            )
        return "turboctc"
    if config.trains == "all":
        raise ValueError(
            f"trains=all is for a granite-speech-5.0 TurboCTC folder; {config.model_path} is a speech "
            f"LLM: use one of projector_lora, lora, projector, llm, encoder_top"
        )
    return "speech_llm"


def serving_note(config: FinetuneConfig, export: Path, run_dir: Path) -> str:
    """How to serve the result: the merged folder always; the LoRA alone when only it trained."""
    lines = [
        "## Serving",
        "",
        f"- merged (transformers `AutoModelForSpeechSeq2Seq`, vLLM): `vllm serve {export}`",
    ]
    adapter = run_dir / "speech_llm_lora"
    if (adapter / "adapter_config.json").exists():
        from granite_train.models.speech_export import vllm_max_lora_rank

        lines.append(
            f"- the LoRA alone on the released model: `vllm serve {config.model_path} --enable-lora "
            f"--max-lora-rank {vllm_max_lora_rank(config.lora_rank)} --lora-modules finetuned={adapter}`"
        )
    else:
        lines.append(
            f"- no LoRA-only adapter: trains={config.trains} changes more than the LLM's LoRA, and vLLM "
            "serves a LoRA on the LLM only (trains=lora gives one)"
        )
    return "\n".join(lines) + "\n"


def _summary(config: FinetuneConfig, steps: int, export: Path, run_dir: Path) -> str:
    """The line under the title: what trained on what, and where the results are."""
    trained = ", ".join(k for k, v in config.trained_parts.items() if v)
    if export.name == TURBOCTC_EXPORT:
        trained = (
            "the whole model"
            if config.trains == "all"
            else f"the top {config.encoder_layers} layers + CTC heads"
        )
    elif config.trains == "encoder_top":
        trained += f", the top {config.encoder_layers} encoder layers + CTC head"
    return (
        f"{steps} steps on `{config.data_path}` (trains: {config.trains}: {trained}; "
        f"replay share {config.replay_share:.2f}); export: `{export}`; curves: `{run_dir / 'curves.png'}`"
    )


def check_data(config: FinetuneConfig, prepare: PrepareConfig) -> tuple[DataCheck, HoldoutPlan | None]:
    """Every record of your data (and of the replay, eval and regression sets) read once, from
    the audio headers, the report printed; then the held-out split chosen from the usable records.

    Raises :class:`~granite_train.data.errors.DataError` when a set has nothing usable or the split
    cannot be made: in seconds, before a model is loaded.
    """
    from granite_train.data.check import check_and_report
    from granite_train.data.holdout import choose_holdout

    specs = [your_data(config)]
    if config.replay_share > 0:
        specs.append(_source("replay", config.replay, "train", config.regression_language))
    if config.eval_data:
        specs.append(_source("heldout", config.eval_data, "test", config.language, **_columns(config)))
    if config.regression:
        specs.append(_source("regression", config.regression, "test", config.regression_language))
    title = f"[finetune] the data, every record read once (headers): {', '.join(f'{s.name} ({s.path})' for s in specs)}"
    check = check_and_report(specs, prepare, title)
    plan = None
    if not config.eval_data:
        speakers, share = list(config.holdout_speakers), config.holdout_share
        plan = choose_holdout(check.sources[0], speakers, share, config.min_heldout_utterances)
        print(f"[finetune] {plan.format()}", flush=True)
    return check, plan


def _data_report(check: DataCheck, plan: HoldoutPlan | None, counters: Mapping[str, float] | None) -> str:
    """``results.md``'s data section: the check, the split, and (``counters`` of the training run
    given) what training skipped."""
    from granite_train.training.run import skipped_summary

    lines = ["Every record read once before training (audio headers):", "", check.to_markdown()]
    if plan is not None:
        lines += [plan.format(), ""]
    if counters is not None:
        skipped = skipped_summary(counters)
        lines += ["During training: " + ("" if skipped else "nothing skipped or repaired."), *skipped[1:]]
    return "\n".join(lines) + "\n"


def run_finetune(config: FinetuneConfig | Mapping[str, Any]) -> str:
    """Run the whole job; returns the results table.

    ``config``: a :class:`FinetuneConfig`, or its fields as a mapping (checked key by key).
    """
    from granite_train.data.builders import build_pipeline_config
    from granite_train.eval.settings import EvalSettings
    from granite_train.recipes import load_recipe
    from granite_train.training.run import train
    from granite_train.workflows.before_after import (
        Scoring,
        comparison_table,
        score_train_score,
        write_results,
    )

    config = from_mapping(FinetuneConfig, config)
    out = Path(config.output_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    turbo = _model_family(config) == "turboctc"
    recipe_name, overrides = (
        ("turboctc_finetune", turboctc_recipe_overrides)
        if turbo
        else ("speech_llm_finetune", recipe_overrides)
    )
    # the recipe as composed decides what a usable record is (durations, text): check against it
    draft = load_recipe(recipe_name, overrides(config, finetune_sources(config).train, out / "train"))
    check, plan = check_data(config, build_pipeline_config(draft["data"]["train"], "data.train").prepare)
    if config.check:
        report = _data_report(check, plan, None)
        (out / "data_check.md").write_text(report)
        return report
    sources = finetune_sources(config, plan)
    recipe = load_recipe(recipe_name, overrides(config, sources.train, out / "train"))
    if turbo:
        scoring = Scoring(label="TurboCTC (greedy CTC)", key="eval", decoder="ctc", settings=EvalSettings())
    else:
        settings = EvalSettings(num_beams=config.num_beams, max_new_tokens=config.max_new_tokens)
        scoring = Scoring(label="speech LLM", key="eval", decoder="generate", settings=settings)
    export_name = TURBOCTC_EXPORT if turbo else EXPORT

    done = score_train_score(
        scoring, config.model_path, sources.tests, out, lambda: train(recipe), export_name, tag="finetune"
    )
    table = comparison_table(done.rows)
    run_dir = done.trained.output_dir
    write_results(
        out,
        title=f"Fine-tuning {config.model_path}",
        intro=_summary(config, done.trained.global_step, done.export, run_dir),
        table=table,
        payload={
            "model": str(config.model_path),
            "export": str(done.export),
            "steps": done.trained.global_step,
            "counters": done.trained.counters,
            "results": [row.to_json() for row in done.rows],
        },
        sections=[] if turbo else [serving_note(config, done.export, run_dir)],
        data_report=_data_report(check, plan, done.trained.counters),
        data_counts={"check": check.to_json(), "heldout_split": dataclasses.asdict(plan) if plan else None},
    )
    return table


__all__ = [
    "EXPORT",
    "TRAINS",
    "FinetuneConfig",
    "FinetuneSources",
    "finetune_sources",
    "recipe_overrides",
    "run_finetune",
    "serving_note",
]
