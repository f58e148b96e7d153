import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED = REPO_ROOT.parent / "shared"
FSDD_DIR = SHARED / "data" / "fsdd"


# CI sets this: there a missing ../shared is a broken checkout, and its tests must fail, not skip
REQUIRE_SHARED = os.environ.get("GRANITE_TRAIN_REQUIRE_SHARED", "") not in ("", "0")


def require_shared(path: Path) -> Path:
    """``path`` under ../shared, or a skip (a failure where CI requires it) when it is missing."""
    if not path.exists():
        message = f"real speech not found at {path}"
        if REQUIRE_SHARED:
            pytest.fail(message + " (GRANITE_TRAIN_REQUIRE_SHARED is set: CI needs ../shared/data/fsdd)")
        pytest.skip(message)
    return path


@pytest.fixture(scope="session")
def fsdd_dir() -> Path:
    return require_shared(FSDD_DIR)


def pytest_collection_modifyitems(config, items):
    import torch

    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)
