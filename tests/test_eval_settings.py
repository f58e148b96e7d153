"""One owner of the evaluation settings: checked keys, overrides, and the shared helpers."""

from __future__ import annotations

import pytest
import torch

from granite_train.eval.settings import EvalSettings, resolve_normalizer
from granite_train.typed_config import ConfigKeyError


def test_settings_take_overrides_and_check_them():
    base = EvalSettings.of({"num_beams": 4, "device": "cpu"})
    assert (base.num_beams, base.device, base.max_frames) == (4, "cpu", 20_000)
    tuned = EvalSettings.of(base, max_frames=1000, normalizer="basic")
    assert (tuned.num_beams, tuned.max_frames, tuned.normalizer) == (4, 1000, "basic")
    assert tuned.longest_seconds == 20.0 and EvalSettings(max_duration=3).longest_seconds == 3.0
    with pytest.raises(ConfigKeyError, match="num_beam") as err:
        EvalSettings.of(base, num_beam=2)
    assert "num_beams" in err.value.valid
    with pytest.raises(ValueError, match="dtype"):
        EvalSettings.of(dtype="int8")
    with pytest.raises(ValueError, match="generate_normalizer"):
        EvalSettings(generate_normalizer="whisper")


def test_autocast_only_for_half_dtypes():
    cpu = torch.device("cpu")
    with EvalSettings(dtype="float32").autocast(cpu):
        assert not torch.is_autocast_enabled("cpu")
    with EvalSettings(dtype="bfloat16").autocast(cpu):
        assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16


@pytest.mark.parametrize(
    "language, expected",
    [("en", "whisper_english"), ("en-US", "whisper_english"), ("fr", "basic"), (None, "basic")],
)
def test_auto_normalizer_by_language(language, expected):
    assert resolve_normalizer("auto", language) == expected
    assert resolve_normalizer("none", language) == "none"


def test_cli_eval_refuses_a_misspelt_setting(tmp_path):
    import subprocess
    import sys

    run = subprocess.run(
        [sys.executable, "-m", "granite_train.cli", "eval", f"model_path={tmp_path}", "+num_beam=2",
         f"output_dir={tmp_path / 'out'}"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert run.returncode == 2
    assert "unknown config key 'eval.num_beam'" in run.stderr and "num_beams" in run.stderr
