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


def _checked(cls: type, values: Mapping[str, Any], where: str) -> dict[str, Any]:
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"{where}: unknown field(s) {unknown}; known: {sorted(known)}")
    return dict(values)


def build_pipeline_config(data: Mapping[str, Any]) -> PipelineConfig:
    """A :class:`PipelineConfig` from a ``data`` config mapping (loader-only keys are ignored)."""
    values = {k: v for k, v in data.items() if k not in ("num_workers", "compute_features")}
    sources = values.pop("sources", None)
    if not sources:
        raise ValueError("data.sources: at least one source is required")
    specs = [SourceSpec(**_checked(SourceSpec, s, f"data.sources[{i}]")) for i, s in enumerate(sources)]
    prepare = PrepareConfig(**_checked(PrepareConfig, values.pop("prepare", {}) or {}, "data.prepare"))
    return PipelineConfig(sources=specs, prepare=prepare, **_checked(PipelineConfig, values, "data"))
