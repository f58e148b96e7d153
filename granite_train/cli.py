"""``granite-train <command> [hydra overrides]``: one console entry point, one Hydra config per command.

Each command composes ``configs/<command>.yaml``; every field can be overridden on the command
line, and Hydra's own flags work after the command (``granite-train demo --cfg job``,
``granite-train data-report --help``).
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

from omegaconf import DictConfig

from granite_train.recipes import (
    CONFIG_DIR,
    RECIPE_DIR,
    MissingRecipeValueError,
    RecipeNotFoundError,
    available_recipes,
    check_complete,
    check_recipe,
    recipe_file,
    upsert_overrides,
)
from granite_train.recipes import to_container as _container
from granite_train.typed_config import ConfigKeyError

log = logging.getLogger("granite_train")

_RECIPE_PATH: Path | None = None  # the recipe file `granite-train train` composes (for error messages)
_PLAN_OVERRIDES: list[str] = []  # `granite-train plan`: the recipe overrides (the rest is configs/plan.yaml)


def data_report(cfg: DictConfig) -> None:
    """Stream ``cfg.data`` through the pipeline and print what it served."""
    from granite_train.data.tasks import run_data_report

    data = _container(cfg.data)
    print(run_data_report(data, max_batches=cfg.report.max_batches).format())


def _fail(command: str, err: Exception) -> NoReturn:
    print(f"granite-train {command}: {err}", file=sys.stderr)
    sys.exit(2)


def _config_file(hydra_cfg) -> Path:
    """The YAML file Hydra composed: ``configs/<name>.yaml``, or one found on ``--config-dir``."""
    name = f"{hydra_cfg.job.config_name}.yaml"
    for source in hydra_cfg.runtime.config_sources:
        if source.schema == "file" and (Path(source.path) / name).is_file():
            return Path(source.path) / name
    return CONFIG_DIR / name


def _config_class(command: str) -> type:
    """The typed config of a workflow command (:data:`TYPED_COMMANDS`)."""
    from granite_train.workflows.add_language_config import AddLanguageConfig
    from granite_train.workflows.data_check import DataCheckConfig
    from granite_train.workflows.demo_config import DemoConfig
    from granite_train.workflows.finetune_config import FinetuneConfig
    from granite_train.workflows.stage import StageConfig

    classes = {"demo": DemoConfig, "finetune": FinetuneConfig, "add-language": AddLanguageConfig}
    return {**classes, "data-check": DataCheckConfig, "stage": StageConfig}[command]


def _typed_config(command: str, cfg: DictConfig) -> Any:
    """``cfg`` as the command's typed config, every key and value checked before anything runs;
    exit 2 with what is wrong (an unknown key: where it came from, the closest and the valid keys)."""
    from hydra.core.hydra_config import HydraConfig

    from granite_train.workflows.command_config import load_command_config

    hydra_cfg = HydraConfig.get()
    try:
        return load_command_config(
            _config_class(command), cfg, _config_file(hydra_cfg), list(hydra_cfg.overrides.task)
        )
    except ValueError as err:  # ConfigKeyError and MissingRecipeValueError are ValueErrors
        _fail(command, err)


def _settable(args: list[str]) -> list[str]:
    """A workflow command's ``key=value`` arguments as ``++key=value``.

    A field's default lives in the command's dataclass, not in its YAML, so ``steps=6`` must be
    settable though the file does not name ``steps``; a misspelt key then reaches the typed check,
    which names it, its origin and the valid keys. Hydra's own keys (``hydra.*``, ``paths.*``) and
    flags are left to Hydra, which refuses an unknown one itself.
    """
    out = []
    for arg in args:
        key = arg.partition("=")[0]
        own = (
            "=" in arg and not arg.startswith(("-", "+", "~")) and key.split(".")[0] not in ("hydra", "paths")
        )
        out.append(f"++{arg}" if own else arg)
    return out


def demo(cfg: DictConfig) -> None:
    """End to end on CPU: corpus -> stage 1 -> stage 2 -> export -> transformers reload -> results."""
    from granite_train.demo import run_demo

    config = _typed_config("demo", cfg)
    table = run_demo(config)
    print("\n" + table)
    print(f"\nresults in {config.demo.work_dir}/results.md")


def finetune(cfg: DictConfig) -> None:
    """Fine-tune a released checkpoint on your audio: held-out split, before/after WER, replay."""
    from granite_train.finetune import run_finetune

    config = _typed_config("finetune", cfg)
    table = run_finetune(config)
    print("\n" + table)
    print(f"results in {config.output_dir}/{'data_check' if config.check else 'results'}.md")


def stage(cfg: DictConfig) -> None:
    """Stage sources once into large parquet shards (16 kHz audio bytes + index) for many ranks."""
    from granite_train.workflows.stage import run_stage

    config = _typed_config("stage", cfg)
    index = run_stage(config)
    rows = sum(s["rows"] for s in index["sources"])
    print(
        f"{rows} rows in {len(index['shards'])} shards; report: {config.out}/report.md, sources: {config.out}/data.yaml"
    )


def data_check(cfg: DictConfig) -> None:
    """Read your data once (audio headers): usable hours, skips with the fix, the held-out split."""
    from granite_train.workflows.data_check import run_data_check

    config = _typed_config("data-check", cfg)
    print(run_data_check(config))
    print(f"report in {config.output_dir}/data_check.md and data_check.json")


def add_language(cfg: DictConfig) -> None:
    """Add a language: coverage -> CTC vocabulary -> data -> stage 1 (+ 2) -> eval, resumable."""
    from granite_train.add_language import run_add_language

    config = _typed_config("add-language", cfg)
    table = run_add_language(config)
    print("\n" + table)
    print(f"results in {config.output_dir}/results.md")


def data_demo(cfg: DictConfig) -> None:
    """Generate the multilingual synthetic corpus, then report on the pipeline over it."""
    from granite_train.data.tasks import run_data_report
    from granite_train.demo import generate_demo_corpus

    generate_demo_corpus(_container(cfg.demo), corpus_dir=cfg.paths.corpus_dir, seed=cfg.seed)
    report = run_data_report(_container(cfg.data), max_batches=cfg.report.max_batches)
    print(report.format())


def train(cfg: DictConfig) -> None:
    """Train a recipe: granite-train train recipe=<name or path.yaml> [key=value ...]."""
    from hydra.core.hydra_config import HydraConfig

    from granite_train.training.run import train as run_training

    hydra_cfg = HydraConfig.get()
    recipe = _RECIPE_PATH or RECIPE_DIR / f"{hydra_cfg.job.config_name}.yaml"
    try:  # every key checked before a model is built or a file read
        check_complete(cfg, f"recipe {recipe}")
        values = _container(cfg)
        check_recipe(values, recipe, list(hydra_cfg.overrides.task))
    except (ConfigKeyError, MissingRecipeValueError) as err:
        print(f"granite-train train: {err}", file=sys.stderr)
        sys.exit(2)
    result = run_training(values)
    print(f"done: {result.global_step} steps; outputs in {result.output_dir}")
    for key in sorted(result.metrics):
        if key.startswith("val/"):
            print(f"  {key} = {result.metrics[key]:.4f}")


DECODINGS = ("auto", "ctc", "generate", "speculative", "rescore")


def evaluate(cfg: DictConfig) -> None:
    """Decode test sets (greedy CTC for an encoder, generation for a speech LLM folder); report
    WER / CER (BLEU for AST, B-WER / U-WER for keyword sets) and RTFx (JSON + markdown)."""
    from hydra.core.hydra_config import HydraConfig

    from granite_train.eval.generate import is_speech_llm_folder, run_generate_eval
    from granite_train.eval.run import run_eval
    from granite_train.eval.settings import EvalSettings

    values = _container(cfg)
    output_dir = values.pop("output_dir") or HydraConfig.get().runtime.output_dir
    model, datasets, decoding = values.pop("model_path"), values.pop("datasets"), values.pop("decoding")
    values.pop("paths", None)
    values["write_hypotheses"] = values.pop("hypotheses")
    if decoding not in DECODINGS:
        print(f"granite-train eval: decoding must be one of {DECODINGS}, got {decoding!r}", file=sys.stderr)
        sys.exit(2)
    for option in ("speculative", "rescore"):  # the settings of the decodings not chosen
        if decoding != option:
            values[option] = None
    try:
        settings = EvalSettings.of(values)
    except (ConfigKeyError, ValueError) as err:
        print(f"granite-train eval: {err}", file=sys.stderr)
        sys.exit(2)
    generate = decoding in ("generate", "speculative", "rescore") or (
        decoding == "auto" and is_speech_llm_folder(model)
    )
    run = run_generate_eval if generate else run_eval
    _, table = run(model, datasets, output_dir, settings)
    print(table, end="")
    print(f"results in {output_dir}")


def export(cfg: DictConfig) -> None:
    """Export a checkpoint as a transformers folder (stage 1: CTC encoder; stage 2: speech LLM)."""
    from granite_train.models.checkpoints import checkpoint_stage

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


def coverage(cfg: DictConfig) -> None:
    """How a new language's text fits the CTC vocabulary and the LLM tokenizer; what to add."""
    from hydra.core.hydra_config import HydraConfig

    from granite_train.text.coverage import coverage_report, read_lines
    from granite_train.workflows.coverage_files import write_coverage_report

    try:
        lines = read_lines(cfg.sample, cfg.max_lines)
        reference = read_lines(cfg.reference, cfg.reference_lines) if cfg.tokenizer else None
        report = coverage_report(
            lines,
            _stored_vocab(cfg.model_path),
            language=cfg.language,
            lowercase=cfg.lowercase,
            strip_punctuation=cfg.strip_punctuation,
            coverage=cfg.coverage,
            tokenizer=cfg.tokenizer,
            reference=reference,
            tokens_per_char_limit=cfg.tokens_per_char_limit,
            sample_name=str(cfg.sample),
        )
    except (OSError, ValueError) as err:
        _fail("coverage", err)
    markdown, data = write_coverage_report(report, cfg.output_dir or HydraConfig.get().runtime.output_dir)
    print(report.to_markdown())
    print(f"report in {markdown} and {data.name}")


def extend_vocab(cfg: DictConfig) -> None:
    """Add a new language's characters to an encoder's CTC vocabulary, as a new folder."""
    from granite_train.models.vocab_surgery import extend_encoder_folder
    from granite_train.text.coverage import coverage_report, read_lines

    try:
        if (cfg.symbols is None) == (cfg.symbols_from is None):
            raise ValueError("give exactly one of symbols=CHARS or symbols_from=FILE")
        vocab = _stored_vocab(cfg.model_path)
        if cfg.symbols is not None:
            given = cfg.symbols if isinstance(cfg.symbols, str) else "".join(map(str, cfg.symbols))
            symbols = [c for c in given if not c.isspace()]
        else:
            report = coverage_report(
                read_lines(cfg.symbols_from, cfg.max_lines),
                vocab,
                language=cfg.language,
                lowercase=cfg.lowercase,
                strip_punctuation=cfg.strip_punctuation,
                coverage=cfg.coverage,
            )
            symbols = sorted(report.recommended)  # ids in code point order: stable, readable
        new = [c for c in dict.fromkeys(symbols) if c not in vocab]
        if not new:
            raise ValueError(
                f"nothing to add: every character is in the vocabulary already ({len(vocab)} symbols)"
            )
        out = extend_encoder_folder(cfg.model_path, new, cfg.out, new_logit_bias=float(cfg.new_logit_bias))
    except (OSError, ValueError) as err:
        print(f"granite-train extend-vocab: {err}", file=sys.stderr)
        sys.exit(2)
    print(f"added {len(new)} symbols as ids {len(vocab)}..{len(vocab) + len(new) - 1}: {''.join(new)}")
    print(f"wrote {out} ({len(vocab) + len(new)} CTC outputs)")


def import_llm(cfg: DictConfig) -> None:
    """Import a pretrained Llama-family LLM (GGUF, folder, smollm2-135m) as a Granite LLM folder."""
    from granite_train.models.import_llm import import_causal_lm

    try:
        out = import_causal_lm(cfg.src, cfg.out, dtype=cfg.dtype)
    except (OSError, ValueError) as err:
        _fail("import-llm", err)
    print(f"wrote {out} (GraniteForCausalLM, {cfg.dtype}; <|audio|> added, Granite speech chat template)")


def _stored_vocab(model_path: str | None):
    """The CTC vocabulary stored with a model (its symbol table), or the base one."""
    from granite_train.text.vocab import CharVocab

    if not model_path:
        return CharVocab()
    from granite_train.models.export import read_ctc_vocab

    if not Path(model_path).exists():
        raise FileNotFoundError(f"no model at {model_path}: expected an encoder folder or a .ckpt")
    return read_ctc_vocab(model_path) or CharVocab()


def plan(cfg: DictConfig) -> None:
    """Cost of a recipe before it runs: steps, audio hours, FLOPs, GPU-hours and days."""
    from hydra.core.hydra_config import HydraConfig

    from granite_train.recipes import load_recipe
    from granite_train.training.plan import PlanOptions, plan_recipe, write_plan
    from granite_train.typed_config import from_mapping

    values = _container(cfg)
    recipe, output = values.pop("recipe"), values.pop("output")
    output = output or Path(HydraConfig.get().runtime.output_dir) / "plan.json"
    values.pop("paths", None)
    try:
        options = from_mapping(PlanOptions, values, "plan")
        composed = load_recipe(recipe, _PLAN_OVERRIDES)  # as `granite-train train` composes it
        result = plan_recipe(composed, options, stage1=load_recipe)
    except (ConfigKeyError, MissingRecipeValueError, RecipeNotFoundError, ValueError) as err:
        print(f"granite-train plan: {err}", file=sys.stderr)
        sys.exit(2)
    print(result.format())
    print(f"\nplan written to {write_plan(result, output)}")


TYPED_COMMANDS = ("demo", "finetune", "add-language", "data-check", "stage")
"""Commands whose config is a typed dataclass (:mod:`granite_train.workflows`): every key checked."""

COMMANDS: dict[str, tuple[str, Callable[[DictConfig], None]]] = {
    "demo": ("demo", demo),
    "data-demo": ("data_demo", data_demo),
    "data-report": ("data_report", data_report),
    "eval": ("eval", evaluate),
    "export": ("export", export),
    "train": ("", train),  # the config is the recipe named on the command line
    "finetune": ("finetune", finetune),
    "data-check": ("data_check", data_check),
    "stage": ("stage", stage),
    "add-language": ("add_language", add_language),
    "plan": ("plan", plan),
    "coverage": ("coverage", coverage),
    "extend-vocab": ("extend_vocab", extend_vocab),
    "import-llm": ("import_llm", import_llm),
}


def _usage() -> str:
    lines = ["usage: granite-train <command> [key=value ...] [hydra flags]", "", "commands:"]
    lines += [f"  {name:<14}{fn.__doc__.strip().splitlines()[0]}" for name, (_, fn) in COMMANDS.items()]
    lines += ["", "Per-command help and config: granite-train <command> --help | --cfg job"]
    return "\n".join(lines)


def _stops_on_data_errors(command: str, task: Callable[[DictConfig], None]) -> Callable[[DictConfig], None]:
    """``task`` exiting with the message alone (exit 2) on a :class:`DataError`: bad data is the
    user's to fix, and a traceback (or a DataLoader worker's, wrapped around it) hides the fix."""
    import functools

    from granite_train.data.errors import data_error_message

    @functools.wraps(task)
    def run(cfg: DictConfig) -> None:
        try:
            task(cfg)
        except Exception as err:  # noqa: BLE001 - only data errors are turned into a message
            message = data_error_message(err)
            if message is None:
                raise
            print(f"granite-train {command}: {message}", file=sys.stderr, flush=True)
            sys.exit(2)

    return run


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
    if command in ("finetune", "data-check"):  # `model=` / `data=` would pick config groups: they name paths
        rest = [re.sub(r"^(model|data)=", r"\1_path=", a) for a in rest]
    if command == "stage":  # data=<a configs/data group> composes the group; anything else is a path or URL
        rest = [_stage_data_argument(a) for a in rest]
    if command in TYPED_COMMANDS:
        rest = _settable(rest)
        if "--help" in rest or "-h" in rest:  # the YAML names few keys: every key and its meaning first
            from granite_train.workflows.command_config import describe

            print(describe(_config_class(command)))
    if command == "plan":
        global _PLAN_OVERRIDES
        rest, _PLAN_OVERRIDES = _plan_arguments(rest)
    if command == "train":
        global _RECIPE_PATH
        config_dir, config_name, rest = _recipe(rest)
        _RECIPE_PATH = config_dir / f"{config_name}.yaml"
        # recipes pick their groups (model, data, optim, ...) from configs/
        rest = [f"hydra.searchpath=[file://{CONFIG_DIR},file://{RECIPE_DIR}]", *upsert_overrides(rest)]
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s %(name)s %(levelname)s] %(message)s")
    # Hydra parses sys.argv itself: hand it the overrides only, and our name for its messages.
    sys.argv = [f"granite-train {command}", *rest]
    task = _stops_on_data_errors(command, task)
    hydra.main(version_base="1.3", config_path=str(config_dir), config_name=config_name)(task)()


def _stage_data_argument(arg: str) -> str:
    if not arg.startswith("data="):
        return arg
    value = arg.removeprefix("data=")
    return f"+data={value}" if (CONFIG_DIR / "data" / f"{value}.yaml").is_file() else f"data_path={value}"


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
    try:
        path = recipe_file(names[0])
    except RecipeNotFoundError as err:
        print(f"granite-train train: {err}", file=sys.stderr)
        sys.exit(2)
    return path.parent, path.stem, rest


def _plan_arguments(args: list[str]) -> tuple[list[str], list[str]]:
    """Split ``granite-train plan``'s arguments: (plan options and Hydra flags, recipe overrides).

    Plan options are the keys of ``configs/plan.yaml`` (``recipe``, ``output`` and the
    :class:`~granite_train.training.plan.PlanOptions` fields; ``--measure`` is ``measure=true``);
    every other ``key=value`` overrides the recipe, as ``granite-train train`` takes it.
    """
    from granite_train.training.plan import PlanOptions

    own_keys = {"recipe", "output", *PlanOptions.__dataclass_fields__}
    own, recipe = [], []
    for arg in args:
        arg = "measure=true" if arg == "--measure" else arg
        key = arg.partition("=")[0].lstrip("+~")
        if "=" not in arg or arg.startswith("-") or key in own_keys or key.startswith("hydra."):
            own.append(arg)
        else:
            recipe.append(arg)
    return own, recipe


if __name__ == "__main__":
    main()
