"""``benchmarks/turboctc_step.py`` runs and reports what the two architectures are."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "turboctc_step.py"


def _load():
    spec = importlib.util.spec_from_file_location("turboctc_step", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_turboctc_step_benchmark_compares_like_with_like(tmp_path, capsys):
    bench = _load()
    (result,) = bench.main(
        ["--sizes", "tiny", "--batch", "1", "--seconds", "2", "--steps", "1", "--warmup", "1",
         "--bpe-vocab", "64", "--json", str(tmp_path / "r.json")]
    )  # fmt: skip
    # by hand: 4.0 keeps the 50 Hz of its stacked input; 5.0's two subsampling blocks halve it twice
    assert result["output_hz_4_0"] == 50.0 and result["output_hz_5_0"] == 12.5
    # same width and depth: the conformer layers dominate both parameter counts
    assert 0.5 < result["params_5_0"] / result["params_4_0"] < 2.0
    assert (tmp_path / "r.json").exists() and "5.0 / 4.0 step time" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        bench.main(["--sizes", "huge"])
