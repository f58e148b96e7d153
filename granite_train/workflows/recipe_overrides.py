"""Recipe overrides the workflow commands share: their sources, and the trainer for this machine."""

from __future__ import annotations

from collections.abc import Sequence

from granite_train.data.sources import SourceSpec
from granite_train.recipes import override_value
from granite_train.typed_config import to_plain


def sources_override(key: str, sources: Sequence[SourceSpec]) -> str:
    """``key=[...]``: the sources as plain mappings in Hydra's override grammar (``data.train.sources``)."""
    return f"{key}=" + override_value([to_plain(source) for source in sources])


def device_trainer_overrides() -> list[str]:
    """The GPU trainer where CUDA is available, else the CPU one in ``auto`` precision (bf16 only
    where the CPU computes it natively)."""
    import torch

    return ["trainer=gpu"] if torch.cuda.is_available() else ["trainer=cpu", "trainer.precision=auto"]


__all__ = ["device_trainer_overrides", "sources_override"]
