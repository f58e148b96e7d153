"""Builders from plain config mappings (Hydra / YAML) to typed pipeline objects.

Library classes never see a ``DictConfig``: the CLI resolves configs to containers and these
functions turn them into dataclasses, failing early with the field that is wrong.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import fields
from typing import Any

from granite_train.data.pipeline import PipelineConfig
from granite_train.data.prepare import PrepareConfig
from granite_train.data.sources import SourceSpec
from granite_train.typed_config import check_keys


def _checked(cls: type, values: Mapping[str, Any], where: str) -> dict[str, Any]:
    check_keys(values, {f.name for f in fields(cls)}, where)
    return dict(values)


def build_pipeline_config(data: Mapping[str, Any], where: str = "data") -> PipelineConfig:
    """A :class:`PipelineConfig` from a ``data`` config mapping (loader-only keys are ignored).

    ``where`` is the mapping's place in the recipe (``data.train``), named in errors.
    """
    values = {k: v for k, v in data.items() if k not in ("num_workers", "compute_features")}
    sources = values.pop("sources", None)
    if not sources:
        raise ValueError(f"{where}.sources: at least one source is required")
    specs = [SourceSpec(**_checked(SourceSpec, s, f"{where}.sources[{i}]")) for i, s in enumerate(sources)]
    prepare = PrepareConfig(**_checked(PrepareConfig, values.pop("prepare", {}) or {}, f"{where}.prepare"))
    return PipelineConfig(sources=specs, prepare=prepare, **_checked(PipelineConfig, values, where))
