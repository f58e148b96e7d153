"""``granite-train finetune``: a released checkpoint fine-tuned on your audio, scored before and after.

The steps (``configs/finetune.yaml``): the held-out split (given, or made from the data: by
speaker when known, else by recording) and an optional general-domain regression set are scored
with the released model; ``recipes/speech_llm_finetune.yaml`` trains on the rest (plus a replay
share of general-domain data, if asked); the export is scored on the same sets; a table compares
the two (``results.md`` / ``results.json`` under ``output_dir``; the training curves are in
``train/curves.png``).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

# what trains, by name: model.train flags and whether a LoRA adapter is added
TRAINS: dict[str, tuple[dict[str, bool], bool]] = {
    "projector_lora": ({"projector": True, "lora": True, "llm": False, "encoder": False}, True),
    "lora": ({"projector": False, "lora": True, "llm": False, "encoder": False}, True),
    "projector": ({"projector": True, "lora": False, "llm": False, "encoder": False}, False),
    "llm": ({"projector": True, "lora": False, "llm": True, "encoder": False}, False),
    # + the top `encoder_layers` conformer layers and the CTC head, with the encoder CTC as an auxiliary
    "encoder_top": ({"projector": True, "lora": True, "llm": False, "encoder": False}, True),
}


def _source(name: str, path: str, split: str, language: str, **extra: Any) -> dict[str, Any]:
    source = {"name": name, "path": str(path), "split": split, "language": language, "task": "asr"}
    # a local folder or manifest usually has no id column; the audio path is the id then
    if Path(str(path)).exists():
        source["id_column"] = None
    return {**source, **extra}


def finetune_sources(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """Training sources (your data, minus the held-out split, plus replay) and test sets."""
    language = cfg["language"]
    share = float(cfg.get("replay_share") or 0.0)
    if not 0.0 <= share < 1.0:
        raise ValueError(f"replay_share must be in [0, 1), got {share}")
    if share > 0 and not cfg.get("replay"):
        raise ValueError("replay_share > 0 needs `replay` (general-domain data to mix in)")
    holdout: dict[str, Any] = {}
    if not cfg.get("eval_data"):
        holdout = {
            "holdout_share": float(cfg["holdout_share"]),
            "holdout_speakers": list(cfg["holdout_speakers"]),
        }
    mine = _source("mine", cfg["data_path"], cfg["data_split"], language, weight=1.0 - share,
                   **({"holdout": "exclude", **holdout} if holdout else {}))  # fmt: skip
    train = [mine]
    if share > 0:
        train.append(
            _source("replay", cfg["replay"], "train", cfg.get("regression_language", "en"), weight=share)
        )
    if cfg.get("eval_data"):
        heldout = _source("heldout", cfg["eval_data"], "test", language)
    else:
        heldout = _source("heldout", cfg["data_path"], cfg["data_split"], language, holdout="only", **holdout)
    tests = [heldout]
    if cfg.get("regression"):
        tests.append(_source("regression", cfg["regression"], "test", cfg.get("regression_language", "en")))
    return {"train": train, "tests": tests}


def recipe_overrides(cfg: Mapping[str, Any], train_sources: list[dict], output_dir: Path) -> list[str]:
    """The ``speech_llm_finetune`` overrides the finetune settings stand for."""
    import torch

    from granite_train.recipes import override_value

    trains = cfg["trains"]
    if trains not in TRAINS:
        raise ValueError(f"trains must be one of {sorted(TRAINS)}, got {trains!r}")
    flags, lora = TRAINS[trains]
    steps = int(cfg["steps"])
    warmup = cfg.get("warmup_steps")
    warmup = max(1, steps // 10) if warmup is None else int(warmup)
    trainer = ["trainer=gpu"] if torch.cuda.is_available() else ["trainer=cpu", "trainer.precision=auto"]
    out = [
        *trainer,
        f"name={cfg['name']}",
        f"output_dir={output_dir}",
        f"model.init={cfg['model_path']}",
        "model.train={"
        + ", ".join(f"{k}: {str(v).lower()}" for k, v in flags.items())
        + (f", encoder_layers: {int(cfg.get('encoder_layers') or 2)}" if trains == "encoder_top" else "")
        + "}",
        f"model.lora={{rank: {int(cfg['lora_rank'])}, alpha: {int(cfg['lora_rank'])}}}"
        if lora
        else "model.lora=null",
        f"trainer.max_steps={steps}",
        f"trainer.checkpoint_every_n_steps={steps}",
        "trainer.val_every_n_steps=null",  # scored before and after instead
        f"optim.schedule.warmup_steps={warmup}",
        f"data.train.max_frames={int(cfg['max_frames'])}",
        "data.train.sources=" + override_value(train_sources),
        f"export.merge_lora={str(bool(cfg.get('merge_lora', True))).lower()}",
        # the LoRA alone for vLLM's --enable-lora: valid when nothing else trained
        f"export.lora_adapter={str(trains == 'lora').lower()}",
    ]
    if cfg.get("gradient_checkpointing"):
        out.append("model.gradient_checkpointing={llm: true, encoder: true}")
    if trains == "encoder_top":  # the CTC head stays valid: the encoder's own CTC as an auxiliary
        out += [
            f"model.loss.encoder_ctc_weight={float(cfg.get('encoder_ctc_weight') or 0.2)}",
            "data.train.prepare.ctc_targets=true",
            f"data.train.lowercase={str(bool(cfg.get('ctc_lowercase'))).lower()}",
            f"data.train.strip_punctuation={str(bool(cfg.get('ctc_lowercase'))).lower()}",
        ]
    if cfg.get("lr") is not None:
        out.append(f"optim.lr={float(cfg['lr'])}")
    return out + list(cfg.get("overrides") or [])


def _row(name: str, before: Any, after: Any) -> dict[str, Any]:
    return {
        "test set": name,
        "utterances": after.num_utts,
        "wer_before": before.wer,
        "wer_after": after.wer,
        "cer_before": before.cer,
        "cer_after": after.cer,
        "rtfx_after": after.rtfx,
    }


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}"


def results_markdown(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| test set | utterances | WER before % | WER after % | change (points) | CER before % | CER after % |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        change = "-" if r["wer_before"] is None else f"{100 * (r['wer_after'] - r['wer_before']):+.2f}"
        lines.append(
            f"| {r['test set']} | {r['utterances']} | {_pct(r['wer_before'])} | {_pct(r['wer_after'])} | "
            f"{change} | {_pct(r['cer_before'])} | {_pct(r['cer_after'])} |"
        )
    return "\n".join(lines) + "\n"


def serving_note(cfg: Mapping[str, Any], export: Path, run_dir: Path) -> str:
    """How to serve the result: the merged folder always; the LoRA alone when only it trained."""
    lines = [
        "## Serving",
        "",
        f"- merged (transformers `AutoModelForSpeechSeq2Seq`, vLLM): `vllm serve {export}`",
    ]
    adapter = run_dir / "speech_llm_lora"
    if (adapter / "adapter_config.json").exists():
        lines.append(
            f"- the LoRA alone on the released model: `vllm serve {cfg['model_path']} --enable-lora "
            f"--max-lora-rank {int(cfg['lora_rank'])} --lora-modules finetuned={adapter}`"
        )
    else:
        lines.append(
            f"- no LoRA-only adapter: trains={cfg['trains']} changes more than the LLM's LoRA, and vLLM "
            "serves a LoRA on the LLM only (trains=lora gives one)"
        )
    return "\n".join(lines) + "\n"


def run_finetune(cfg: Mapping[str, Any]) -> str:
    """Run the whole job (``cfg`` is the resolved ``configs/finetune.yaml``); returns the table."""
    from granite_train.eval.generate import run_generate_eval
    from granite_train.eval.settings import EvalSettings
    from granite_train.recipes import load_recipe
    from granite_train.training.run import train

    out = Path(cfg["output_dir"]).resolve()
    out.mkdir(parents=True, exist_ok=True)
    sources = finetune_sources(cfg)
    settings = EvalSettings(num_beams=int(cfg["num_beams"]), max_new_tokens=int(cfg["max_new_tokens"]))
    recipe = load_recipe("speech_llm_finetune", recipe_overrides(cfg, sources["train"], out / "train"))

    print(f"[finetune] scoring the released model {cfg['model_path']} first", flush=True)
    before, _ = run_generate_eval(cfg["model_path"], sources["tests"], out / "eval_before", settings)
    result = train(recipe)
    export = result.output_dir / "speech_llm_hf"
    print(f"[finetune] scoring the fine-tuned export {export}", flush=True)
    after, _ = run_generate_eval(export, sources["tests"], out / "eval_after", settings)

    rows = [_row(b.name, b, a) for b, a in zip(before, after)]
    table = results_markdown(rows)
    trained = TRAINS[cfg["trains"]][0]
    top_layers = ""
    if cfg["trains"] == "encoder_top":
        top_layers = f", the top {int(cfg.get('encoder_layers') or 2)} encoder layers + CTC head"
    header = (
        f"# Fine-tuning {cfg['model_path']}\n\n{result.global_step} steps on `{cfg['data_path']}` "
        f"(trains: {cfg['trains']}: {', '.join(k for k, v in trained.items() if v)}{top_layers}; "
        f"replay share {float(cfg.get('replay_share') or 0):.2f}); export: `{export}`; "
        f"curves: `{result.output_dir / 'curves.png'}`\n\n"
    )
    (out / "results.md").write_text(header + table + "\n" + serving_note(cfg, export, result.output_dir))
    (out / "results.json").write_text(
        json.dumps(
            {
                "model": str(cfg["model_path"]),
                "export": str(export),
                "steps": result.global_step,
                "counters": result.counters,
                "results": rows,
            },
            indent=2,
        )  # fmt: skip
    )
    return table


__all__ = [
    "TRAINS",
    "finetune_sources",
    "recipe_overrides",
    "results_markdown",
    "run_finetune",
    "serving_note",
]
