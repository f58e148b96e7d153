"""Typed recipe sections: unknown keys fail before any data is read, naming the key, where it came
from and the valid keys; each default is written once; ``precision: auto`` follows the hardware."""

from __future__ import annotations

import dataclasses

import pytest
import yaml

from granite_train.models.config import CTCModelConfig, SpeechLLMModelConfig, TurboCTCModelConfig
from granite_train.recipes import CONFIG_DIR, available_recipes, load_recipe
from granite_train.training.config import OptimConfig, RecipeConfig, TrainerConfig, load_recipe_config
from granite_train.training.precision import cpu_has_native_bf16, resolve_precision
from granite_train.typed_config import ConfigKeyError, from_mapping, to_plain


@pytest.mark.parametrize(
    "override, key, suggestion",
    [
        ("trainer.chekpoint_every_n_steps=5", "trainer.chekpoint_every_n_steps", "checkpoint_every_n_steps"),
        ("optim.schedule.warmup=3", "optim.schedule.warmup", "warmup_steps"),
        ("optim.weight_decai=0.1", "optim.weight_decai", "weight_decay"),
        ("model.encoder.dropot=0.0", "model.encoder.dropot", "dropout"),
        ("model.los.final_weight=1.0", "model.los", "loss"),
        ("data.train.shufle_buffer=4", "data.train.shufle_buffer", "shuffle_buffer"),
        ("data.augment.spec_augment.freq_mask=1", "data.augment.spec_augment.freq_mask", "freq_masks"),
    ],
)
def test_a_misspelt_override_names_the_key_its_origin_and_the_valid_keys(override, key, suggestion):
    with pytest.raises(ConfigKeyError) as err:
        load_recipe("ctc_tiny_en", [override])
    assert err.value.key == key
    assert suggestion in err.value.valid
    message = str(err.value)
    assert f"command-line override {override!r}" in message and f"did you mean {suggestion!r}" in message


def test_a_misspelt_stage2_model_key_is_caught_in_its_nested_section():
    with pytest.raises(ConfigKeyError, match=r"model\.train\.projecter") as err:
        load_recipe("speech_llm_tiny_en", ["model.train.projecter=false"])
    assert "projector" in err.value.valid


def _recipe_file(tmp_path, body: dict, name: str = "mine") -> str:
    recipe = {"defaults": ["_base", {"model": "ctc_tiny"}, {"data": "tts_en_ctc"},
                           {"optim": "adamw_triangular"}, {"trainer": "cpu"}, "_self_"],
              "name": name, "stage": "ctc", **body}  # fmt: skip
    # a recipe anywhere extends recipes/_base.yaml (on the search path)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return str(path)


@pytest.mark.parametrize(
    "section, body",
    [
        ("trainer", {"trainer": {"max_step": 10}}),
        ("optim", {"optim": {"lr": 1e-3, "gradclip": 1.0}}),
        ("model", {"model": {"attn_implementation": "math"}}),
        ("data", {"data": {"train": {"max_frame": 100}}}),
        ("top level", {"sead": 3}),
    ],
)
def test_a_misspelt_key_in_a_recipe_file_names_the_file(tmp_path, section, body):
    path = _recipe_file(tmp_path, body)
    with pytest.raises(ConfigKeyError) as err:
        load_recipe(path)
    assert f"in recipe {path}" in str(err.value), section


def test_a_misspelt_key_in_a_config_group_file_names_that_file(tmp_path, monkeypatch):
    import granite_train.recipes as recipes

    groups = tmp_path / "configs"
    for group in ("paths", "logger", "model", "data", "optim", "trainer"):
        (groups / group).mkdir(parents=True)
        for src in (CONFIG_DIR / group).glob("*.yaml"):
            (groups / group / src.name).write_text(src.read_text())
    (groups / "trainer" / "cpu.yaml").write_text("accelerator: cpu\nlog_every_n_step: 5\n")
    monkeypatch.setattr(recipes, "CONFIG_DIR", groups)
    with pytest.raises(ConfigKeyError) as err:
        load_recipe("ctc_tiny_en")
    assert err.value.key == "trainer.log_every_n_step"
    assert f"config group file {groups / 'trainer' / 'cpu.yaml'}" in str(err.value)


def test_train_refuses_an_unknown_key_before_reading_any_data(tmp_path):
    from granite_train.training.run import train

    cfg = load_recipe("ctc_tiny_en", ["trainer.max_steps=1", f"output_dir={tmp_path / 'run'}"])
    cfg["data"]["train"]["sources"] = [
        {"name": "missing", "path": str(tmp_path / "nowhere"), "split": "train"}
    ]
    cfg["trainer"]["max_step"] = 2
    with pytest.raises(ConfigKeyError, match="trainer.max_step"):
        train(cfg)
    assert not (tmp_path / "run").exists()  # nothing built, nothing written


def test_every_recipe_builds_its_typed_config():
    from tests.test_cli import USER_INPUT

    for name in available_recipes():
        cfg = load_recipe_config(load_recipe(name, USER_INPUT.get(name, [])))
        expected = {
            "ctc": CTCModelConfig,
            "speech_llm": SpeechLLMModelConfig,
            "turboctc": TurboCTCModelConfig,
        }
        assert isinstance(cfg.model, expected[cfg.stage]), name


def _dataclass_defaults(cls) -> dict:
    return to_plain(cls()) if cls is not SpeechLLMModelConfig else to_plain(SpeechLLMModelConfig())


@pytest.mark.parametrize(
    "group, cls",
    [("trainer", TrainerConfig), ("optim", OptimConfig), ("model", None)],
)
def test_config_group_files_do_not_repeat_a_default(group, cls):
    """One place per default: a group file sets only what differs from the dataclass."""
    repeated = []
    for path in sorted((CONFIG_DIR / group).glob("*.yaml")):
        values = yaml.safe_load(path.read_text()) or {}
        klass = cls or (CTCModelConfig if path.stem.startswith("ctc") else SpeechLLMModelConfig)
        defaults = to_plain(klass())
        for key, value in values.items():
            if key in defaults and not isinstance(value, dict) and defaults[key] == value:
                repeated.append(f"{path.name}: {key}")
            if isinstance(value, dict) and isinstance(defaults.get(key), dict):
                repeated += [f"{path.name}: {key}.{k}" for k, v in value.items() if defaults[key].get(k) == v]
    assert repeated == []


def test_from_mapping_builds_nested_sections_and_keeps_defaults():
    cfg = from_mapping(OptimConfig, {"lr": 3e-4, "schedule": {"name": "cosine", "warmup_steps": 7}})
    assert cfg.lr == 3e-4 and cfg.weight_decay == 0.01 and cfg.betas == (0.9, 0.98)
    assert cfg.schedule.arguments() == {"warmup_steps": 7}
    assert dataclasses.asdict(from_mapping(OptimConfig, None)) == dataclasses.asdict(OptimConfig())


def test_a_value_check_names_the_field():
    with pytest.raises(ValueError, match="trainer.precision"):
        TrainerConfig(precision="bf17")
    with pytest.raises(ValueError, match="stage"):
        RecipeConfig(stage="ctc2")


def test_cpu_bf16_is_read_from_the_cpu_flags(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor : 0\nflags : fpu sse2 avx2 avx512f\n\nprocessor : 1\nflags : fpu avx2\n")
    assert cpu_has_native_bf16(str(cpuinfo)) is False
    cpuinfo.write_text("processor : 0\nflags : fpu avx2 avx512f avx512_bf16\n")
    assert cpu_has_native_bf16(str(cpuinfo)) is True
    assert cpu_has_native_bf16(str(tmp_path / "absent")) is False


def test_precision_auto_follows_the_cpu(monkeypatch):
    import granite_train.training.precision as precision

    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: False)
    assert resolve_precision("auto", "cpu") == "32-true"
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: True)
    assert resolve_precision("auto", "cpu") == "bf16-mixed"
    assert resolve_precision("32-true", "cpu") == "32-true"  # an explicit choice is kept


def test_override_values_round_trip_through_hydra():
    from granite_train.recipes import override_value

    sources = [{"name": "mine", "path": "/data/it's here, [1]", "weight": 0.75, "size": 2,
                "holdout": None, "holdout_speakers": ["carol"], "task": "asr"}]  # fmt: skip
    cfg = load_recipe("speech_llm_tiny_en", [f"data.train.sources={override_value(sources)}"])
    assert cfg["data"]["train"]["sources"] == sources
