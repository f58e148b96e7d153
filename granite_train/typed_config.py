"""Plain mappings (Hydra / YAML) -> typed, documented config dataclasses, checked key by key.

Every config section of a run is a dataclass whose fields hold the defaults and whose docstring
documents them. :func:`from_mapping` builds one from a mapping, recursing into nested dataclass
fields, and refuses a key the dataclass does not have with :class:`ConfigKeyError`, which names
the full dotted key and the valid ones. The CLI adds where the key came from (recipe, config
group file or command-line override) before any data is read.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from collections.abc import Mapping
from typing import Any, TypeVar

T = TypeVar("T")


class ConfigKeyError(ValueError):
    """An unknown key in a config section: ``key`` is the dotted path, ``valid`` the keys allowed there."""

    def __init__(self, key: str, valid: list[str], origin: str | None = None):
        self.key = key
        self.valid = sorted(valid)
        self.origin = origin
        leaf = key.rsplit(".", 1)[-1]
        close = difflib.get_close_matches(leaf, self.valid, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        where = f" in {origin}" if origin else ""
        super().__init__(
            f"unknown config key {key!r}{where}{hint}; valid keys there: {', '.join(self.valid)}"
        )

    def with_origin(self, origin: str) -> ConfigKeyError:
        return ConfigKeyError(self.key, self.valid, origin)


def _dataclass_type(annotation: Any) -> type | None:
    """The dataclass in ``annotation`` (``X``, ``X | None``, ``Optional[X]``), if there is one."""
    if dataclasses.is_dataclass(annotation) and isinstance(annotation, type):
        return annotation
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        found = [a for a in typing.get_args(annotation) if dataclasses.is_dataclass(a)]
        return found[0] if len(found) == 1 else None
    return None


def check_keys(values: Mapping[str, Any], valid: list[str] | set[str], where: str) -> None:
    """Raise :class:`ConfigKeyError` for the first key of ``values`` not in ``valid``."""
    for key in values:
        if key not in valid:
            raise ConfigKeyError(f"{where}.{key}" if where else str(key), list(valid))


def from_mapping(cls: type[T], values: Mapping[str, Any] | T | None, where: str = "") -> T:
    """``cls`` built from ``values`` (a mapping, an instance already, or None for the defaults).

    Nested dataclass fields are built recursively; a None value for a field typed ``X | None``
    stays None. Unknown keys raise :class:`ConfigKeyError` naming ``where.key``.
    """
    if values is None:
        return cls()
    if isinstance(values, cls):
        return values
    if not isinstance(values, Mapping):
        raise TypeError(
            f"config section {where or cls.__name__!r} must be a mapping, got {type(values).__name__}"
        )
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    check_keys(values, set(fields), where)
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, value in values.items():
        nested = _dataclass_type(hints[name])
        path = f"{where}.{name}" if where else name
        if nested is not None and value is not None:
            value = from_mapping(nested, value, path)
        kwargs[name] = value
    return cls(**kwargs)


def to_plain(config: Any) -> Any:
    """A config dataclass (or container of them) as plain dicts / lists, e.g. for YAML or hparams."""
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        return {f.name: to_plain(getattr(config, f.name)) for f in dataclasses.fields(config)}
    if isinstance(config, Mapping):
        return {k: to_plain(v) for k, v in config.items()}
    if isinstance(config, list | tuple):
        return [to_plain(v) for v in config]
    return config


__all__ = ["ConfigKeyError", "check_keys", "from_mapping", "to_plain"]
