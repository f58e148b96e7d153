"""Every shipped config composes and builds; the CLI runs end to end on real speech."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from granite_train.cli import COMMANDS
from granite_train.data.builders import build_pipeline_config
from granite_train.recipes import CONFIG_DIR, available_recipes, load_recipe

# every data config but those that take the user's own sources (`sources: ???`: data/finetune.yaml)
DATA_CONFIGS = sorted(
    p.stem for p in (CONFIG_DIR / "data").glob("*.yaml") if "sources: ???" not in p.read_text()
)
# commands whose config streams a `data` group (eval and export have none: tests/test_eval_run.py)
DATA_COMMANDS = sorted(
    c for c, (name, _) in COMMANDS.items() if name and "- data:" in (CONFIG_DIR / f"{name}.yaml").read_text()
)


def compose_command(config_name: str, overrides: list[str]):
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose(config_name=config_name, overrides=overrides)


@pytest.mark.parametrize("command", DATA_COMMANDS)
@pytest.mark.parametrize("data", DATA_CONFIGS)
def test_every_command_and_data_config_composes_and_builds(command, data):
    cfg = compose_command(COMMANDS[command][0], [f"data={data}"])
    OmegaConf.resolve(cfg)  # every interpolation resolves
    pipeline = build_pipeline_config(OmegaConf.to_container(cfg.data.train))
    assert pipeline.sources and all(s.kind for s in pipeline.sources)
    assert pipeline.seed == cfg.seed


def test_unknown_data_field_is_a_clear_error():
    cfg = compose_command("data_report", ["+data.train.shufle_buffer=3"])
    with pytest.raises(ValueError, match="shufle_buffer"):
        build_pipeline_config(OmegaConf.to_container(cfg.data.train, resolve=True))


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "granite_train.cli", *args],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=Path(__file__).resolve().parents[1],
    )


def test_cli_help_and_unknown_command():
    assert "data-report" in run_cli("--help").stdout
    bad = run_cli("no-such-command")
    assert bad.returncode == 2 and "unknown command" in bad.stderr


def test_cli_cfg_job_shows_overridden_value():
    out = run_cli("data-report", "data.train.alpha=0.25", "--cfg", "job")
    assert out.returncode == 0, out.stderr
    assert OmegaConf.create(out.stdout).data.train.alpha == 0.25


def test_cli_data_report_on_real_speech(fsdd_dir, tmp_path):
    out = run_cli("data-report", "report.max_batches=2", "data.num_workers=0", f"hydra.run.dir={tmp_path}")
    assert out.returncode == 0, out.stderr
    assert "== data pipeline report ==" in out.stdout
    assert "fixed_resampled" in out.stdout  # FSDD is 8 kHz


# what a recipe asks the user for: the fine-tuning recipe has no default data (the user's audio)
USER_INPUT = {"speech_llm_finetune": ["data.train.sources=[{name: mine, path: my_audio, kind: audiofolder}]"]}


def test_the_finetuning_recipe_asks_for_your_data():
    from granite_train.recipes import MissingRecipeValueError

    with pytest.raises(MissingRecipeValueError, match="set data.train.sources"):
        load_recipe("speech_llm_finetune")


@pytest.mark.parametrize("recipe", available_recipes())
def test_every_recipe_composes_with_a_known_stage(recipe):
    cfg = load_recipe(recipe, USER_INPUT.get(recipe, []))
    assert cfg["stage"] in ("ctc", "speech_llm")
    assert cfg["name"] == recipe
    for group in ("model", "data", "optim", "trainer"):
        assert cfg[group], f"{recipe}: empty {group}"
    if cfg["stage"] == "speech_llm":  # stage 2 trains on text: no CTC targets or CTC length filter
        assert cfg["data"]["train"]["prepare"]["ctc_targets"] is False
        assert cfg["model"].get("init") or (cfg["model"]["encoder"] and cfg["model"]["llm"])
