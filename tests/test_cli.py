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
USER_INPUT = {
    "speech_llm_finetune": ["data.train.sources=[{name: mine, path: my_audio, kind: audiofolder}]"],
    "turboctc_finetune": ["data.train.sources=[{name: mine, path: my_audio, kind: audiofolder}]"],
    "turboctc_tiny_en": ["model.init=work/turboctc/init_4x128"],
}


def test_the_finetuning_recipe_asks_for_your_data():
    from granite_train.recipes import MissingRecipeValueError

    with pytest.raises(MissingRecipeValueError, match="set data.train.sources"):
        load_recipe("speech_llm_finetune")


@pytest.mark.parametrize("recipe", available_recipes())
def test_every_recipe_composes_with_a_known_stage(recipe):
    cfg = load_recipe(recipe, USER_INPUT.get(recipe, []))
    assert cfg["stage"] in ("ctc", "speech_llm", "turboctc")
    assert cfg["name"] == recipe
    for group in ("model", "data", "optim", "trainer"):
        assert cfg[group], f"{recipe}: empty {group}"
    if cfg["stage"] in ("speech_llm", "turboctc"):  # trained on the text: no character CTC targets
        assert cfg["data"]["train"]["prepare"]["ctc_targets"] is False
    if cfg["stage"] == "speech_llm":
        assert cfg["model"].get("init") or (cfg["model"]["encoder"] and cfg["model"]["llm"])
    if cfg["stage"] == "turboctc":  # a 5.0 folder to start from, named by the user or the release
        assert cfg["model"]["init"]


# --------------------------------------------------------------------------------------------------
# the workflow commands' typed configs: a misspelt key or a refused value stops before anything runs
# --------------------------------------------------------------------------------------------------
def test_a_misspelt_key_on_the_command_line_exits_2_naming_it(tmp_path):
    out = run_cli("finetune", "model=m", "data=d", "stpes=6", f"hydra.run.dir={tmp_path}")
    assert out.returncode == 2, out.stderr
    assert (
        "granite-train finetune: unknown config key 'stpes' in command-line override 'stpes=6'" in out.stderr
    )
    assert (
        "(did you mean 'steps'?)" in out.stderr
        and "valid keys there: audio_column, check, ctc_lowercase, " in out.stderr
    )
    nested = run_cli(
        "add-language", "language=el", "encoder=e", "stage1.stpes=6", f"hydra.run.dir={tmp_path}"
    )
    assert nested.returncode == 2, nested.stderr
    assert "unknown config key 'stage1.stpes' in command-line override 'stage1.stpes=6'" in nested.stderr
    assert (
        "valid keys there: head_only_steps, lr, old_layers_lr_scale, overrides, recipe, steps"
        in nested.stderr
    )


def test_a_misspelt_key_in_the_config_file_exits_2_naming_the_file(tmp_path):
    from granite_train.recipes import CONFIG_DIR

    config = tmp_path / "my_demo.yaml"
    config.write_text((CONFIG_DIR / "demo.yaml").read_text() + "sed: 1\n")
    out = run_cli(
        "demo", f"hydra.run.dir={tmp_path}", "--config-dir", str(tmp_path), "--config-name", "my_demo"
    )
    assert out.returncode == 2, out.stderr
    assert (
        f"granite-train demo: unknown config key 'sed' in config file {config} (did you mean 'seed'?)"
        in out.stderr
    )


def test_refused_values_and_missing_fields_exit_2_with_what_is_valid(tmp_path):
    zero = run_cli(
        "add-language",
        "language=el",
        "encoder=e",
        "stage1.old_layers_lr_scale=0",
        f"hydra.run.dir={tmp_path}",
    )
    assert zero.returncode == 2 and "stage1.old_layers_lr_scale must be > 0" in zero.stderr, zero.stderr
    top = run_cli(
        "finetune",
        "model=m",
        "data=d",
        "trains=encoder_top",
        "encoder_ctc_weight=0",
        f"hydra.run.dir={tmp_path}",
    )
    assert top.returncode == 2 and "encoder_ctc_weight must be > 0 with trains=encoder_top" in top.stderr
    missing = run_cli("finetune", "data=d", f"hydra.run.dir={tmp_path}")
    assert missing.returncode == 2 and "granite-train finetune: set model_path" in missing.stderr


def test_workflow_help_lists_every_key_and_cfg_job_shows_a_set_default():
    out = run_cli("finetune", "--help")
    assert out.returncode == 0 and "encoder_ctc_weight: 0.2" in out.stdout and "FinetuneConfig:" in out.stdout
    job = run_cli("demo", "demo.llm.pretrain_steps=0", "seed=3", "--cfg", "job")
    assert job.returncode == 0, job.stderr
    composed = OmegaConf.create(job.stdout)
    assert composed.seed == 3 and composed.demo.llm.pretrain_steps == 0
