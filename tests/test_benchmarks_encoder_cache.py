"""benchmarks/encoder_cache.py: the cached step computes the same loss, and both variants are timed."""

import importlib.util
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "encoder_cache.py"


def test_cached_step_has_the_same_loss_and_is_timed(capsys):
    spec = importlib.util.spec_from_file_location("encoder_cache_bench", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
        result = module.main(["--steps", "1", "--warmup", "0"])
    finally:
        sys.modules.pop(spec.name, None)
        sys.modules.pop("stage2_step", None)
    assert result["loss_diff"] < 1e-5
    assert result["plain_s"] > 0 and result["cached_s"] > 0
    out = capsys.readouterr().out
    assert "cached / plain:" in out and "cache " in out
