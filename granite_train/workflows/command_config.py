"""A workflow command's composed Hydra config as its typed dataclass, checked before anything runs.

``configs/<command>.yaml`` sets only what its dataclass cannot know (the paths Hydra composes,
the mandatory ``???`` fields); the dataclass holds every other default. The composed config is
built into the dataclass with :func:`granite_train.typed_config.from_mapping`: an unknown key
raises :class:`~granite_train.typed_config.ConfigKeyError` saying where it came from (the config
file or a command-line override), the closest valid key and all valid keys; a value out of its
range raises the dataclass's own ``ValueError``.
"""

from __future__ import annotations

import dataclasses
import inspect
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml
from omegaconf import DictConfig, OmegaConf

from granite_train.recipes import MissingRecipeValueError, key_origin, to_container
from granite_train.typed_config import ConfigKeyError, from_mapping, to_plain

T = TypeVar("T")

HYDRA_SECTIONS = ("paths",)
"""Sections that are Hydra's, not the command's: where things live (``configs/paths/``)."""


def config_key_origin(key: str, config_file: Path, overrides: Sequence[str] = ()) -> str:
    """Where ``key`` of a command's composed config was set: a command-line override or the file."""
    # `granite-train` passes plain keys as `++key=value` (settable without a YAML entry): name them as typed
    origin = key_origin(key, config_file, [o.removeprefix("++") for o in overrides])
    # key_origin speaks of recipes; a command's config is a plain config file
    return "config file " + origin.removeprefix("recipe ") if origin.startswith("recipe ") else origin


def load_command_config(cls: type[T], cfg: DictConfig, config_file: Path, overrides: Sequence[str] = ()) -> T:
    """``cfg`` (the composed ``config_file``, with ``overrides``) as ``cls``, every key and value checked.

    Raises:
        MissingRecipeValueError: a mandatory field (``???``) is unset.
        ConfigKeyError: an unknown key, with its origin (:func:`config_key_origin`).
        ValueError: a value the dataclass refuses (its message names the field and what is valid).
    """
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise MissingRecipeValueError(f"set {', '.join(missing)} (key=value on the command line)")
    values = {k: v for k, v in to_container(cfg).items() if k not in HYDRA_SECTIONS}
    try:
        return from_mapping(cls, values)
    except ConfigKeyError as err:
        raise err.with_origin(config_key_origin(err.key, config_file, overrides)) from None


def field_defaults(cls: type) -> dict[str, Any]:
    """Every field of ``cls`` with its default (nested sections as mappings; ``???``: no default)."""
    hints = typing.get_type_hints(cls)
    out: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            out[f.name] = field_defaults(hints[f.name])
        elif f.default is not dataclasses.MISSING:
            out[f.name] = to_plain(f.default)
        elif f.default_factory is not dataclasses.MISSING:
            out[f.name] = to_plain(f.default_factory())
        else:
            out[f.name] = "???"
    return out


def _sections(cls: type) -> list[type]:
    hints = typing.get_type_hints(cls)
    nested = [hints[f.name] for f in dataclasses.fields(cls) if dataclasses.is_dataclass(hints[f.name])]
    return [cls, *(s for n in nested for s in _sections(n))]


def describe(cls: type) -> str:
    """``cls``'s every key with its default, then what each means (its docstrings): ``--help``."""
    defaults = yaml.safe_dump(field_defaults(cls), sort_keys=False, allow_unicode=True)
    docs = "\n\n".join(f"{s.__name__}: {inspect.cleandoc(s.__doc__ or '')}" for s in _sections(cls))
    return f"== Keys and defaults ({cls.__name__}; ??? = set in the YAML or on the command line) ==\n\n{defaults}\n{docs}\n"


__all__ = ["HYDRA_SECTIONS", "config_key_origin", "describe", "field_defaults", "load_command_config"]
