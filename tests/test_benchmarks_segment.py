"""benchmarks/segment_long.py: a recording of a few seconds, cut by both alignment paths and measured."""

import importlib.util
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "segment_long.py"


def test_both_paths_cut_the_recording_and_are_measured(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("segment_long_bench", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    try:
        spec.loader.exec_module(module)
        result = module.main(["--minutes", "0.5", "--compare", "--work", str(tmp_path),
                              "--segment-args", "--lowercase --min-score 0 --min-heard 0 --max-seconds 10 "
                              "--window-seconds 10 --overlap-seconds 3"])  # fmt: skip
    finally:
        sys.modules.pop(spec.name, None)
    assert result["floor_gib"] > 0
    for name in ("full", "windowed"):
        run = result[name]
        assert run["peak_gib"] >= result["floor_gib"] * 0.9 and run["wall_s"] > 0
        assert run["segments"] >= 3 and 0.0 <= run["cuts_in_pause"] <= 1.0
    out = capsys.readouterr().out
    assert "windowed" in out and "peak RSS" in out
