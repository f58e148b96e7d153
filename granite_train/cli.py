"""``granite-train <command> [hydra overrides]``: one console entry point, one Hydra config per command.

Each command composes ``configs/<command>.yaml``; every field can be overridden on the command
line, and Hydra's own flags work after the command (``granite-train demo --cfg job``,
``granite-train data-report --help``).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

log = logging.getLogger("granite_train")

REPO_ROOT = Path(__file__).resolve().parent.parent
CONFIG_DIR = REPO_ROOT / "configs"
RECIPE_DIR = REPO_ROOT / "recipes"

# `${repo_root:}` in configs: where the checkout lives (data_prep/texts, default work dir).
if not OmegaConf.has_resolver("repo_root"):
    OmegaConf.register_new_resolver("repo_root", lambda: str(REPO_ROOT))


def _container(cfg: DictConfig) -> dict:
    return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]


def data_report(cfg: DictConfig) -> None:
    """Stream ``cfg.data`` through the pipeline and print what it served."""
    from granite_train.data.tasks import run_data_report

    data = _container(cfg.data)
    print(run_data_report(data, max_batches=cfg.report.max_batches).format())


def demo(cfg: DictConfig) -> None:
    """End to end on CPU: corpus -> stage 1 -> stage 2 -> export -> transformers reload -> results."""
    from granite_train.demo import run_demo

    table = run_demo(_container(cfg))
    print("\n" + table)
    print(f"\nresults in {cfg.demo.work_dir}/results.md")


def data_demo(cfg: DictConfig) -> None:
    """Generate the multilingual synthetic corpus, then report on the pipeline over it."""
    from granite_train.data.tasks import generate_demo_corpus, run_data_report

    generate_demo_corpus(_container(cfg.demo), corpus_dir=cfg.paths.corpus_dir, seed=cfg.seed)
    report = run_data_report(_container(cfg.data), max_batches=cfg.report.max_batches)
    print(report.format())


def train(cfg: DictConfig) -> None:
    """Train a recipe: granite-train train recipe=<name or path.yaml> [key=value ...]."""
    from granite_train.training.run import train as run_training

    result = run_training(_container(cfg))
    print(f"done: {result.global_step} steps; outputs in {result.output_dir}")
    for key in sorted(result.metrics):
        if key.startswith("val/"):
            print(f"  {key} = {result.metrics[key]:.4f}")


def evaluate(cfg: DictConfig) -> None:
    """Decode test sets (greedy CTC for an encoder, generation for a speech LLM folder); report
    WER / CER (BLEU for AST, B-WER / U-WER for keyword sets) and RTFx (JSON + markdown)."""
    from hydra.core.hydra_config import HydraConfig

    from granite_train.eval.generate import is_speech_llm_folder, run_generate_eval
    from granite_train.eval.run import run_eval

    output_dir = cfg.output_dir or HydraConfig.get().runtime.output_dir
    decoding = cfg.get("decoding", "auto")
    if decoding not in ("auto", "ctc", "generate"):
        raise ValueError(f"decoding must be auto, ctc or generate, got {decoding!r}")
    if decoding == "generate" or (decoding == "auto" and is_speech_llm_folder(cfg.model_path)):
        _, table = run_generate_eval(
            cfg.model_path,
            _container(cfg.datasets),
            output_dir,
            device=cfg.device,
            dtype=cfg.dtype,
            attn_impl=cfg.attn_impl,
            max_frames=cfg.max_frames,
            max_duration=cfg.max_duration,
            batch_size=cfg.get("batch_size"),
            num_beams=cfg.get("num_beams", 1),
            max_new_tokens=cfg.get("max_new_tokens", 200),
            normalizer=cfg.get("generate_normalizer", "auto"),
            keywords_in_prompt=cfg.get("keywords_in_prompt", True),
            num_workers=cfg.num_workers,
            write_hypotheses=cfg.hypotheses,
        )
        print(table, end="")
        print(f"results in {output_dir}")
        return
    _, table = run_eval(
        cfg.model_path,
        _container(cfg.datasets),
        output_dir,
        device=cfg.device,
        dtype=cfg.dtype,
        attn_impl=cfg.attn_impl,
        max_frames=cfg.max_frames,
        max_duration=cfg.max_duration,
        normalizer=cfg.normalizer,
        num_workers=cfg.num_workers,
        write_hypotheses=cfg.hypotheses,
    )
    print(table, end="")
    print(f"results in {output_dir}")


def export(cfg: DictConfig) -> None:
    """Export a checkpoint as a transformers folder (stage 1: CTC encoder; stage 2: speech LLM)."""
    from granite_train.models.speech_export import checkpoint_stage

    if checkpoint_stage(cfg.checkpoint) == 2:
        from granite_train.models.speech_export import export_speech_checkpoint

        out = export_speech_checkpoint(
            cfg.checkpoint,
            cfg.output_dir,
            merge_lora=cfg.merge_lora,
            processor_dir=cfg.processor_dir,
            dtype=cfg.dtype,
        )
        print(f"exported speech LLM to {out}")
        return
    from granite_train.models.export import export_checkpoint

    out = export_checkpoint(cfg.checkpoint, cfg.output_dir)
    print(f"exported encoder to {out}")


COMMANDS: dict[str, tuple[str, Callable[[DictConfig], None]]] = {
    "demo": ("demo", demo),
    "data-demo": ("data_demo", data_demo),
    "data-report": ("data_report", data_report),
    "eval": ("eval", evaluate),
    "export": ("export", export),
    "train": ("", train),  # the config is the recipe named on the command line
}


def _usage() -> str:
    lines = ["usage: granite-train <command> [key=value ...] [hydra flags]", "", "commands:"]
    lines += [f"  {name:<14}{fn.__doc__.strip().splitlines()[0]}" for name, (_, fn) in COMMANDS.items()]
    lines += ["", "Per-command help and config: granite-train <command> --help | --cfg job"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    import hydra

    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"granite-train: unknown command {command!r}\n\n{_usage()}", file=sys.stderr)
        sys.exit(2)
    config_name, task = COMMANDS[command]
    config_dir = CONFIG_DIR
    if command == "train":
        config_dir, config_name, rest = _recipe(rest)
        # recipes pick their groups (model, data, optim, ...) from configs/
        rest = [f"hydra.searchpath=[file://{CONFIG_DIR}]", *rest]
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s %(name)s %(levelname)s] %(message)s")
    # Hydra parses sys.argv itself: hand it the overrides only, and our name for its messages.
    sys.argv = [f"granite-train {command}", *rest]
    hydra.main(version_base="1.3", config_path=str(config_dir), config_name=config_name)(task)()


def load_recipe(recipe: str, overrides: list[str] | tuple[str, ...] = ()) -> dict:
    """Compose a recipe (name in ``recipes/`` or a YAML path) with overrides into a plain dict.

    What ``granite-train train`` runs, for notebooks and tests:
    ``train(load_recipe("ctc_tiny_en", ["trainer.max_steps=10"]))``.
    """
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    config_dir, name, _ = _recipe([f"recipe={recipe}"])
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(config_dir), version_base="1.3"):
        cfg = compose(name, overrides=[*overrides, f"hydra.searchpath=[file://{CONFIG_DIR}]"])
    return _container(cfg)


def available_recipes() -> list[str]:
    return sorted(p.stem for p in RECIPE_DIR.glob("*.yaml"))


def _recipe(args: list[str]) -> tuple[Path, str, list[str]]:
    """Split ``recipe=NAME|PATH`` off the arguments: (config dir, config name, other arguments)."""
    names = [a.split("=", 1)[1] for a in args if a.startswith("recipe=")]
    rest = [a for a in args if not a.startswith("recipe=")]
    if len(names) != 1:
        print(
            "granite-train train: name exactly one recipe, e.g. `granite-train train recipe=ctc_tiny_en`"
            f"\nrecipes in {RECIPE_DIR}: {', '.join(available_recipes())}"
            "\nor a path: recipe=path/to/my_recipe.yaml",
            file=sys.stderr,
        )
        sys.exit(2)
    name = names[0]
    if name.endswith((".yaml", ".yml")) or "/" in name:
        path = Path(name).expanduser().resolve()
        if not path.is_file():
            print(f"granite-train train: recipe file {path} not found", file=sys.stderr)
            sys.exit(2)
        return path.parent, path.stem, rest
    if not (RECIPE_DIR / f"{name}.yaml").is_file():
        print(
            f"granite-train train: unknown recipe {name!r}; available: {', '.join(available_recipes())}",
            file=sys.stderr,
        )
        sys.exit(2)
    return RECIPE_DIR, name, rest


if __name__ == "__main__":
    main()
