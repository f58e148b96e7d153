"""Recipes: finding them, composing them with Hydra, and checking them before a run starts.

A recipe (``recipes/<name>.yaml`` or any YAML path) picks one entry per config group in
``configs/`` and sets the rest. :func:`load_recipe` composes it with overrides into a plain dict and
checks every key against the typed sections (:class:`~granite_train.training.config.RecipeConfig`);
an unknown key is reported with where it came from: a command-line override, the recipe file (or
a recipe it extends) or a config group file.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf

from granite_train.typed_config import ConfigKeyError

REPO_ROOT = Path(__file__).resolve().parent.parent
CONFIG_DIR = REPO_ROOT / "configs"
RECIPE_DIR = REPO_ROOT / "recipes"

# `${repo_root:}` in configs: where the checkout lives (data_prep/texts, default work dir).
if not OmegaConf.has_resolver("repo_root"):
    OmegaConf.register_new_resolver("repo_root", lambda: str(REPO_ROOT))


class RecipeNotFoundError(ValueError):
    """A recipe name or path that does not exist (the message lists the available ones)."""


class MissingRecipeValueError(ValueError):
    """A recipe field the user must set (``???`` in the YAML, e.g. the fine-tuning data)."""


def check_complete(cfg: DictConfig, where: str) -> None:
    """Raise :class:`MissingRecipeValueError` naming every mandatory field left unset."""
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise MissingRecipeValueError(
            f"{where}: set {', '.join(missing)} (a key=value override), e.g. "
            "'data.train.sources=[{name: mine, path: /data/my_audio}]'"
        )


def to_container(cfg: DictConfig) -> dict:
    """A resolved Hydra config as plain Python containers."""
    return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]


def available_recipes() -> list[str]:
    """The names of the recipes in ``recipes/`` (``_base`` and other ``_`` files are building blocks)."""
    return sorted(p.stem for p in RECIPE_DIR.glob("*.yaml") if not p.stem.startswith("_"))


def recipe_file(recipe: str) -> Path:
    """The YAML file of ``recipe``: a name in ``recipes/`` or a path to a YAML file."""
    if recipe.endswith((".yaml", ".yml")) or "/" in recipe:
        path = Path(recipe).expanduser().resolve()
        if not path.is_file():
            raise RecipeNotFoundError(f"recipe file {path} not found")
        return path
    path = RECIPE_DIR / f"{recipe}.yaml"
    if not path.is_file():
        raise RecipeNotFoundError(f"unknown recipe {recipe!r}; available: {', '.join(available_recipes())}")
    return path


def override_value(value: Any) -> str:
    """``value`` (dicts, lists, strings, numbers, booleans, None) in Hydra's override grammar."""
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {override_value(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(override_value(v) for v in value) + "]"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int | float):
        return repr(value)
    return "'" + str(value).replace("\\", "\\\\").replace("'", "\\'") + "'"


def upsert_overrides(overrides: Sequence[str]) -> list[str]:
    """Dotted ``key=value`` overrides as ``++key=value``: set whether or not the YAML spells the key out.

    A field's default lives in its dataclass, not in the YAML, so ``trainer.threads=1`` must be
    settable though no file names ``threads``. A misspelt key is then caught by :func:`check_recipe`,
    which names it, the valid keys and the override it came from. Group choices (``model=x``),
    ``+`` / ``~`` overrides and Hydra's own keys are left as they are.
    """
    out = []
    for override in overrides:
        key = override.partition("=")[0]
        plain = "=" in override and "." in key and not key.startswith(("+", "~", "hydra."))
        out.append(f"++{override}" if plain else override)
    return out


def load_recipe(recipe: str, overrides: Sequence[str] = (), check: bool = True) -> dict:
    """Compose a recipe (name in ``recipes/`` or a YAML path) with overrides into a plain dict.

    What ``granite-train train`` runs, for notebooks and tests:
    ``train(load_recipe("ctc_tiny_en", ["trainer.max_steps=10"]))``. With ``check`` every key is
    checked now; an unknown one raises :class:`ConfigKeyError` saying where it came from.
    """
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    path = recipe_file(recipe)
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(path.parent), version_base="1.3"):
        cfg = compose(
            path.stem,
            overrides=[
                *upsert_overrides(overrides),
                f"hydra.searchpath=[file://{CONFIG_DIR},file://{RECIPE_DIR}]",
            ],
        )
    check_complete(cfg, f"recipe {path}")
    values = to_container(cfg)
    if check:
        check_recipe(values, path, overrides)
    return values


def check_recipe(values: dict, path: Path, overrides: Sequence[str] = ()) -> None:
    """Raise :class:`ConfigKeyError` (with its origin) if a key of the composed recipe is unknown."""
    from granite_train.training.config import load_recipe_config

    try:
        load_recipe_config(values)
    except ConfigKeyError as err:
        raise err.with_origin(key_origin(err.key, path, overrides)) from None


# --------------------------------------------------------------------------------------------------
# where a key came from
# --------------------------------------------------------------------------------------------------
_INDEX = re.compile(r"^(.*)\[(\d+)\]$")


def _has_path(node: Any, parts: Sequence[str]) -> bool:
    for part in parts:
        match = _INDEX.match(part)
        name, index = (match.group(1), int(match.group(2))) if match else (part, None)
        if not isinstance(node, dict) or name not in node:
            return False
        node = node[name]
        if index is not None:
            if not isinstance(node, list) or index >= len(node):
                return False
            node = node[index]
    return True


def _read_yaml(path: Path) -> dict:
    try:
        return yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError):
        return {}


def _defaults(config: dict) -> list:
    return [d for d in config.get("defaults") or [] if d != "_self_"]


def _recipe_chain(path: Path) -> list[Path]:
    """The recipe file and the recipes it extends (plain entries of its defaults list)."""
    chain, todo = [], [path]
    while todo:
        current = todo.pop(0)
        chain.append(current)
        for entry in _defaults(_read_yaml(current)):
            if isinstance(entry, str):
                parent = current.parent / f"{entry}.yaml"
                if not parent.is_file():  # on the search path: recipes/
                    parent = RECIPE_DIR / f"{entry}.yaml"
                if parent.is_file() and parent not in chain:
                    todo.append(parent)
    return chain


def _group_file(group: str, chain: Sequence[Path], overrides: Sequence[str]) -> Path | None:
    """The config group file the composed recipe took for ``group``."""
    choice = None
    for override in overrides:
        name, _, value = override.lstrip("+").partition("=")
        if name == group:
            choice = value
    for recipe in reversed(chain):  # the recipe itself wins over the ones it extends
        if choice is None:
            for entry in _defaults(_read_yaml(recipe)):
                if isinstance(entry, dict):
                    for key, value in entry.items():
                        if key.removeprefix("override ").strip() == group:
                            choice = value
    if choice is None:
        return None
    path = CONFIG_DIR / group / f"{choice}.yaml"
    return path if path.is_file() else None


def key_origin(key: str, recipe: Path, overrides: Sequence[str] = ()) -> str:
    """Where the dotted ``key`` of a composed recipe was set: an override, a recipe file or a group file."""
    parts = key.split(".")
    plain = re.sub(r"\[\d+\]", "", key)
    for override in overrides:
        name = override.lstrip("+").partition("=")[0]
        if plain == name or plain.startswith(name + ".") or name.startswith(plain + "."):
            return f"command-line override {override!r}"
    chain = _recipe_chain(recipe)
    for path in chain:
        if _has_path(_read_yaml(path), parts):
            return f"recipe {path}"
    group = _group_file(parts[0], chain, overrides)
    if group is not None and _has_path(_read_yaml(group), parts[1:]):
        return f"config group file {group}"
    return f"the recipe composed from {recipe}"


__all__ = [
    "CONFIG_DIR",
    "RECIPE_DIR",
    "REPO_ROOT",
    "MissingRecipeValueError",
    "RecipeNotFoundError",
    "check_complete",
    "available_recipes",
    "check_recipe",
    "key_origin",
    "load_recipe",
    "override_value",
    "recipe_file",
    "to_container",
    "upsert_overrides",
]
