"""What the workflow commands share (granite_train.workflows): typed configs that agree with their
YAML files, the score -> train -> score core, its results files and their data report, and the
coverage report's files."""

from __future__ import annotations

import json

import pytest
import yaml
from hydra import compose, initialize_config_dir

from granite_train.eval.report import EvalResult
from granite_train.recipes import CONFIG_DIR
from granite_train.typed_config import ConfigKeyError, from_mapping
from granite_train.workflows.add_language_config import AddLanguageConfig
from granite_train.workflows.before_after import (
    ScoreRow,
    Scoring,
    compare,
    comparison_table,
    score_before_after,
    write_results,
)
from granite_train.workflows.command_config import describe, field_defaults, load_command_config
from granite_train.workflows.demo_config import DemoConfig
from granite_train.workflows.finetune_config import FinetuneConfig

# each command's config file, its dataclass, and what a user must give
COMMAND_CONFIGS = {
    "finetune": (FinetuneConfig, ["model_path=m", "data_path=d"]),
    "add_language": (AddLanguageConfig, ["language=el", "encoder=e"]),
    "demo": (DemoConfig, []),
}


def _result(name: str, wer: float, cer: float) -> EvalResult:
    return EvalResult(name, 10, wer, cer, "basic", None, audio_seconds=20.0, wall_seconds=2.0)


def _leaves(values: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in values.items():
        if isinstance(value, dict):
            out.update(_leaves(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


@pytest.mark.parametrize("name", sorted(COMMAND_CONFIGS))
def test_each_yaml_composes_into_its_dataclass_and_never_disagrees_with_it(name):
    cls, given = COMMAND_CONFIGS[name]
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(config_name=name, overrides=given)
    config = load_command_config(cls, cfg, CONFIG_DIR / f"{name}.yaml")
    assert isinstance(config, cls)
    # a value the YAML spells out (not a path interpolation, not `???`) is the dataclass's default
    written = yaml.safe_load((CONFIG_DIR / f"{name}.yaml").read_text())
    written = {k: v for k, v in written.items() if k not in ("defaults", "hydra")}
    defaults = _leaves(field_defaults(cls))
    for key, value in _leaves(written).items():
        assert key in defaults, f"{name}.yaml sets {key!r}, which {cls.__name__} does not have"
        if value != "???" and "${" not in str(value):
            assert value == defaults[key], f"{name}.yaml: {key}={value!r}, {cls.__name__}: {defaults[key]!r}"


def test_describe_lists_every_key_default_and_meaning():
    text = describe(AddLanguageConfig)
    assert "replay_share: 0.5" in text and "  old_layers_lr_scale: 1.0" in text and "language: ???" in text
    assert "AddLanguageStage1: The continued stage 1" in text and "head_only_steps: the layers below" in text


def test_a_key_from_the_config_file_names_the_file(tmp_path):
    config_file = tmp_path / "finetune.yaml"
    config_file.write_text((CONFIG_DIR / "finetune.yaml").read_text() + "lora_rnak: 8\n")
    with initialize_config_dir(config_dir=str(tmp_path), version_base="1.3"):
        cfg = compose(config_name="finetune", overrides=[f"hydra.searchpath=[file://{CONFIG_DIR}]", "model_path=m",
                                                          "data_path=d"])  # fmt: skip
    with pytest.raises(
        ValueError, match=rf"'lora_rnak' in config file {config_file} \(did you mean 'lora_rank'\?\)"
    ):
        load_command_config(FinetuneConfig, cfg, config_file, ["model_path=m", "data_path=d"])


def test_comparison_rows_and_table():
    before, after = (
        [_result("a", 0.5, 0.2), _result("b", 0.4, 0.1)],
        [_result("a", 0.25, 0.1), _result("b", 0.5, 0.2)],
    )
    rows = compare("encoder", before, after)
    assert [(r.test_set, r.wer_before, r.wer_after, r.rtfx_after) for r in rows] == [
        ("a", 0.5, 0.25, 10.0),
        ("b", 0.4, 0.5, 10.0),
    ]
    table = comparison_table(rows, model_column=True)
    assert table.splitlines()[0].startswith("| model | test set | utterances | WER before %")
    assert "| encoder | a | 10 | 50.00 | 25.00 | -25.00 | 20.00 | 10.00 |" in table
    assert "| encoder | b | 10 | 40.00 | 50.00 | +10.00 | 10.00 | 20.00 |" in table
    # nothing before (a model trained from scratch): dashes, no change
    (fresh,) = compare("encoder", None, [_result("a", 0.25, 0.1)])
    assert "| a | 10 | - | 25.00 | - | - | 10.00 |" in comparison_table([fresh])
    # rows survive a resumed run's done.json, and an older run's `utts`
    assert ScoreRow.from_json(rows[0].to_json()) == rows[0]
    old = {**rows[0].to_json(), "utts": 10}
    del old["utterances"]
    assert ScoreRow.from_json(old) == rows[0]


def test_score_before_after_scores_each_model_in_its_own_folders(tmp_path, monkeypatch):
    calls = []

    def run(self, model, tests, folder):
        calls.append((self.key, str(model), folder.relative_to(tmp_path).as_posix()))
        return [_result(t.name, 0.5 if "before" in folder.name else 0.25, 0.1) for t in tests]

    monkeypatch.setattr(Scoring, "run", run)
    from granite_train.data.sources import SourceSpec

    tests = [SourceSpec("old", "/o", split="test"), SourceSpec("new", "/n", split="test")]
    pairs = [(Scoring("encoder (greedy CTC)", "encoder", "ctc"), "enc", "enc2"),
             (Scoring("speech LLM", "speech", "generate"), "llm", "llm2")]  # fmt: skip
    rows = score_before_after(pairs, tests, tmp_path)
    assert calls == [("encoder", "enc", "encoder_before"), ("encoder", "enc2", "encoder_after"),
                     ("speech", "llm", "speech_before"), ("speech", "llm2", "speech_after")]  # fmt: skip
    assert [(r.model, r.test_set) for r in rows] == [
        ("encoder (greedy CTC)", "old"),
        ("encoder (greedy CTC)", "new"),
        ("speech LLM", "old"),
        ("speech LLM", "new"),
    ]
    with pytest.raises(ValueError, match="decoder must be one of"):
        Scoring("x", "x", "beam")


def test_results_files_carry_the_data_report_when_given(tmp_path):
    table = comparison_table(compare("m", None, [_result("a", 0.25, 0.1)]))
    write_results(tmp_path / "plain", "Title", "intro", table, {"rows": 1}, sections=["## Serving\n\n- x\n"])
    assert (
        tmp_path / "plain" / "results.md"
    ).read_text() == f"# Title\n\nintro\n\n{table}\n## Serving\n\n- x\n"
    assert json.loads((tmp_path / "plain" / "results.json").read_text()) == {"rows": 1}

    counts = {"mine": {"seen": 90, "skipped/too_long": 3}}
    report = "| source | seen | skipped |\n|---|---|---|\n| mine | 90 | 3 |"
    md, data = write_results(tmp_path / "data", "Title", "intro", table, {"rows": 1}, ["## Serving\n\n- x\n"],
                             data_report=report, data_counts=counts)  # fmt: skip
    assert md.read_text() == f"# Title\n\nintro\n\n{table}\n## Data\n\n{report}\n\n## Serving\n\n- x\n"
    assert json.loads(data.read_text()) == {"rows": 1, "data": counts}


def test_coverage_files_are_written_once_for_both_commands(tmp_path):
    from granite_train.text.coverage import coverage_report
    from granite_train.workflows.coverage_files import write_coverage_report

    report = coverage_report(["Καλημέρα κόσμε"], language="el", sample_name="el.txt")
    md, data = write_coverage_report(report, tmp_path / "new")
    assert md.read_text(encoding="utf-8") == report.to_markdown()
    assert json.loads(data.read_text(encoding="utf-8")) == json.loads(json.dumps(report.to_json()))
    assert "Κ" in data.read_text(encoding="utf-8")  # UTF-8, not \\u escapes


def test_demo_sections_are_typed_and_checked():
    demo = {"work_dir": "w", "texts": "t", "llm": {"preset": "micro", "pretrain_steps": 0}}
    config = from_mapping(DemoConfig, {"demo": demo})
    assert config.seed == 0 and config.demo.llm.pretrain_steps == 0 and config.demo.llm.vocab_size == 1024
    with pytest.raises(ConfigKeyError, match=r"'demo.llm.pretrain_step' \(did you mean 'pretrain_steps'\?\)"):
        from_mapping(DemoConfig, {"demo": {**demo, "llm": {"pretrain_step": 1}}})
    with pytest.raises(ValueError, match=r"demo.test_fraction must be in \(0, 1\), got 0"):
        from_mapping(DemoConfig, {"demo": {**demo, "test_fraction": 0}})
