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
    """Generate the multilingual synthetic corpus, then report on the pipeline over it."""
    from granite_train.data.tasks import generate_demo_corpus, run_data_report

    generate_demo_corpus(_container(cfg.demo), corpus_dir=cfg.paths.corpus_dir, seed=cfg.seed)
    report = run_data_report(_container(cfg.data), max_batches=cfg.report.max_batches)
    print(report.format())


COMMANDS: dict[str, tuple[str, Callable[[DictConfig], None]]] = {
    "demo": ("demo", demo),
    "data-report": ("data_report", data_report),
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
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s %(name)s %(levelname)s] %(message)s")
    # Hydra parses sys.argv itself: hand it the overrides only, and our name for its messages.
    sys.argv = [f"granite-train {command}", *rest]
    hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name=config_name)(task)()


if __name__ == "__main__":
    main()
