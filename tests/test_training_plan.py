"""The cost planner: its analytic FLOP count against torch's FlopCounterMode on the tiny presets
(forward and forward + backward, stage 1 and stage 2 with what trains varied), against parameter
counts of the published models built on ``meta``, the plan's arithmetic, measuring and the CLI.

The analytic count and the torch counter count the same operations (matmuls and convolutions, 2
FLOPs per multiply-add), so they agree exactly where both see the same kernels; the tolerance
(0.1%) only absorbs float rounding. Two settings make the kernels countable on CPU: the explicit
attention paths (the encoder's ``attn_impl=math``, the LLM's ``eager``), because the fused CPU
kernel ``_scaled_dot_product_flash_attention_for_cpu`` has no formula in torch's counter (it
would count 0), and :func:`_conv_backward_flops`, because torch's convolution-backward formula
ignores ``groups`` in the weight gradient (a depthwise conv's counted E times over; checked below).
"""

from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path

import pytest
import torch
import yaml
from torch.utils.flop_counter import FlopCounterMode, conv_flop_count

from granite_train.models.config import CTCModelConfig
from granite_train.models.encoder import CTCEncoder, encoder_config
from granite_train.models.export import export_hf_encoder
from granite_train.models.speech_llm import build_speech_llm
from granite_train.models.tiny_llm import build_tiny_llm
from granite_train.recipes import CONFIG_DIR, load_recipe
from granite_train.speech_format import IGNORE_INDEX
from granite_train.training.config import load_recipe_config
from granite_train.training.plan import (
    GPU_PEAK_FLOPS,
    KNOWN_LLMS,
    EncoderShape,
    LLMShape,
    MicroBatch,
    ModelShape,
    PlanOptions,
    Trainable,
    count_flops,
    llm_matmuls,
    micro_batch,
    model_shape,
    plan_recipe,
)
from tests.corpus import make_corpus

RTOL = 1e-3
aten = torch.ops.aten


def _conv_backward_flops(
    grad_out_shape,
    x_shape,
    w_shape,
    _bias,
    _stride,
    _padding,
    _dilation,
    transposed,
    _output_padding,
    _groups,
    output_mask,
    out_shape,
    **_,
):
    """convolution_backward: each gradient asked for costs what the forward costs (the forward's
    formula reads ``groups`` from the weight's shape; torch's backward formula forgets it)."""
    forward = conv_flop_count(x_shape, w_shape, grad_out_shape, transposed)
    return forward * (int(output_mask[0]) + int(output_mask[1]))


def torch_flops(step) -> tuple[int, int]:
    """(forward, backward) FLOPs torch counts for ``step()`` (a loss) and its ``backward()``."""
    mapping = {aten.convolution_backward: _conv_backward_flops}
    with FlopCounterMode(display=False, custom_mapping=mapping) as forward:
        loss = step()
    with FlopCounterMode(display=False, custom_mapping=mapping) as backward:
        loss.backward()
    return forward.get_total_flops(), backward.get_total_flops()


def tiny_encoder_config():
    model = CTCModelConfig(**yaml.safe_load((CONFIG_DIR / "model" / "ctc_tiny.yaml").read_text()))
    return encoder_config(model.preset, **model.encoder)


# ------------------------------------------------------------------------------------------------
# the counter's own correction
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("groups", [1, 8])
def test_conv_backward_formula_equals_torchs_without_groups_and_fixes_them(groups):
    conv = torch.nn.Conv1d(8, 8, 5, groups=groups)
    x = torch.randn(2, 8, 30, requires_grad=True)

    def count(mapping):
        with FlopCounterMode(display=False, custom_mapping=mapping) as fc:
            conv(x).sum().backward()
        return fc.get_total_flops()

    ours, torchs = count({aten.convolution_backward: _conv_backward_flops}), count({})
    forward = 2 * 2 * 26 * 8 * (8 // groups) * 5  # 2 x batch x out positions x C_out x C_in/groups x K
    assert ours == 3 * forward  # forward + input gradient + weight gradient
    assert torchs == ours if groups == 1 else torchs == 2 * forward + groups * forward


# ------------------------------------------------------------------------------------------------
# stage 1: the tiny conformer
# ------------------------------------------------------------------------------------------------
def test_stage1_encoder_matches_torch_forward_and_backward():
    config = tiny_encoder_config()
    torch.manual_seed(0)
    encoder = CTCEncoder(config, attn_impl="math").train()
    batch = MicroBatch(utterances=2, frames=250)  # 250 frames: the last attention block is padded
    x = torch.randn(batch.utterances, batch.frames, config.input_dim)

    def step():
        out = encoder(x, torch.full((batch.utterances,), batch.frames))
        return out.logits.sum() + out.mid_logits.sum()  # both CTC heads feed the loss

    analytic = count_flops(ModelShape(EncoderShape.of(config), Trainable(config.num_layers)), batch)
    forward, backward = torch_flops(step)
    assert analytic.total_forward == pytest.approx(forward, rel=RTOL)
    assert analytic.total_backward == pytest.approx(backward, rel=RTOL)
    # backward = 2x forward, less the features' gradient that input_linear never computes
    input_linear = 2 * batch.utterances * batch.frames * config.input_dim * config.hidden_dim
    assert analytic.total_backward == pytest.approx(2 * analytic.total_forward - input_linear, rel=1e-12)


def test_half_precision_shaw_bias_is_one_gemm_over_all_distances():
    config = tiny_encoder_config()
    encoder = CTCEncoder(config, attn_impl="math").to(torch.bfloat16).eval()
    batch = MicroBatch(utterances=1, frames=200)
    x = torch.randn(1, batch.frames, config.input_dim, dtype=torch.bfloat16)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        encoder(x)
    counted = counter.get_total_flops()
    shape = EncoderShape.of(config)
    half = count_flops(ModelShape(shape, Trainable(0), half_precision=True), batch).total_forward
    full = count_flops(ModelShape(shape, Trainable(0)), batch).total_forward
    assert half == pytest.approx(counted, rel=RTOL)
    c = config.context_size  # (2C-1) distance columns instead of C, per block, head and layer
    extra = config.num_layers * config.num_heads * 2 * c * config.dim_head * (c - 1)
    assert half - full == pytest.approx(extra, rel=1e-12)


# ------------------------------------------------------------------------------------------------
# stage 2: encoder + Q-Former + tiny LLM, built from the composed recipe
# ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def stage2_parts(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("plan_stage2")
    torch.manual_seed(0)
    encoder = export_hf_encoder(CTCEncoder(tiny_encoder_config()).eval(), root / "encoder_hf")
    words = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel"]
    texts = [" ".join(words[i:] + words[:i]) for i in range(8)] * 3
    llm = build_tiny_llm(root / "llm", texts, preset="tiny", vocab_size=300)
    return {"encoder": encoder, "llm": llm}


STAGE2_CASES = {
    # the published layout: frozen encoder, Q-Former + LoRA on q / v, frozen LLM
    "projector+lora": [
        "model.lora={rank: 8, alpha: 16.0, dropout: 0.0}",
        "model.train={projector: true, lora: true, llm: false, encoder: false}",
    ],
    # the tiny recipe's: Q-Former + the whole LLM
    "projector+llm": [],
    # the top conformer layer, its CTC head (with the encoder CTC loss) and the Q-Former
    "encoder_top+projector": [
        "model.train={projector: true, llm: false, encoder_layers: 1}",
        "model.loss.encoder_ctc_weight=0.2",
    ],
}


@pytest.mark.parametrize("case", list(STAGE2_CASES))
def test_stage2_matches_torch_forward_and_backward(stage2_parts, case):
    values = load_recipe(
        "speech_llm_tiny_en",
        [
            f"model.encoder={stage2_parts['encoder']}",
            f"model.llm={stage2_parts['llm']}",
            "model.attn_impl=math",
            "model.encoder_cache_gb=0",
            "data.train.max_frames=200",
            *STAGE2_CASES[case],
        ],
    )
    cfg = load_recipe_config(values)
    batch = micro_batch(cfg, PlanOptions(utterance_seconds=2.0, prompt_tokens=12))
    assert (batch.utterances, batch.frames, batch.target_tokens) == (2, 100, 9)  # 200 // 100; 8 + EOS
    analytic = count_flops(model_shape(cfg), batch)

    torch.manual_seed(0)
    speech = build_speech_llm(cfg.model).train()
    speech.language_model.set_attn_implementation("eager")
    window, rate = cfg.model.window_size, cfg.model.downsample_rate
    audio = math.ceil(batch.frames / window) * (window // rate)
    length = batch.prompt_tokens + audio + batch.target_tokens
    ids = torch.randint(2, 250, (batch.utterances, length))
    ids[:, 3 : 3 + audio] = speech.audio_token_id  # the audio placeholders inside the prompt
    labels = torch.full_like(ids, IGNORE_INDEX)
    labels[:, -batch.target_tokens :] = ids[:, -batch.target_tokens :]
    features = torch.randn(batch.utterances, batch.frames, 160)
    lengths = torch.full((batch.utterances,), batch.frames)

    def step():
        out = speech(ids, torch.ones_like(ids), features, lengths, labels)
        if out.encoder is not None and cfg.model.loss.encoder_ctc_weight > 0:  # the encoder's own CTC
            return out.loss + out.encoder.logits.float().mean() + out.encoder.mid_logits.float().mean()
        return out.loss

    forward, backward = torch_flops(step)
    assert analytic.total_forward == pytest.approx(forward, rel=RTOL)
    assert analytic.total_backward == pytest.approx(backward, rel=RTOL)
    if case == "projector+lora":  # frozen encoder: no backward at all; frozen LLM: ~1x forward
        assert analytic.backward["encoder"] == 0
        assert 1.0 < analytic.backward["llm"] / analytic.forward["llm"] < 1.3
    if case == "projector+llm":
        assert 1.9 < analytic.backward["llm"] / analytic.forward["llm"] <= 2.0


# ------------------------------------------------------------------------------------------------
# the published shapes, by hand from parameter counts (built on meta: no memory)
# ------------------------------------------------------------------------------------------------
def _weights(module: torch.nn.Module) -> int:
    return sum(m.weight.numel() for m in module.modules() if isinstance(m, torch.nn.Linear | torch.nn.Conv1d))


def test_published_encoder_forward_is_twice_its_weights_plus_block_attention():
    config = encoder_config("granite_4_0_1b")
    with torch.device("meta"):
        encoder = CTCEncoder(config)
    frames, c = 4 * config.context_size, config.context_size  # whole blocks: no padding
    per_frame = 2 * (_weights(encoder) + _weights(encoder.out))  # the CTC head runs twice (mid + final)
    inner = config.num_heads * config.dim_head
    # per layer and frame: scores + context (C keys each), and the Shaw bias GEMM over 2C-1 distances
    per_frame += config.num_layers * (2 * 2 * c * inner + 2 * (2 * c - 1) * inner)
    shape = ModelShape(EncoderShape.of(config), Trainable(0), half_precision=True)
    assert count_flops(shape, MicroBatch(1, frames)).total_forward == pytest.approx(
        frames * per_frame, rel=1e-12
    )
    assert 4.2e8 < sum(p.numel() for p in encoder.parameters()) < 4.5e8  # ~430-440M (RECIPE.md)


def test_published_llm_forward_is_twice_its_weights_plus_attention_plus_labelled_head():
    from transformers import GraniteConfig, GraniteModel

    config = GraniteConfig(**KNOWN_LLMS["ibm-granite/granite-4.0-1b-base"])
    with torch.device("meta"):
        body = GraniteModel(config)
    batch, seq = MicroBatch(utterances=3, frames=750, prompt_tokens=24, target_tokens=61), 235
    tokens = batch.utterances * seq
    attention = config.num_hidden_layers * 2 * 2 * batch.utterances * seq * seq * config.hidden_size
    head = 2 * batch.utterances * batch.target_tokens * config.hidden_size * config.vocab_size
    frozen = Trainable(0)
    counted = sum(m.flops for m in llm_matmuls(LLMShape.of(config), seq, batch, frozen))
    assert counted == pytest.approx(2 * tokens * _weights(body) + attention + head, rel=1e-12)


# ------------------------------------------------------------------------------------------------
# the plan of the published recipes (nothing built)
# ------------------------------------------------------------------------------------------------
@pytest.fixture
def no_model_built(monkeypatch):
    def refuse(*_, **__):
        raise AssertionError("the plan built a model")

    monkeypatch.setattr(CTCEncoder, "__init__", refuse)


def test_published_stage1_plan_by_hand(no_model_built):
    plan = plan_recipe(load_recipe("ctc_granite_4_0_1b"), PlanOptions())
    # 24000 frames per GPU = 32 utterances of 15 s (750 frames); 8 GPUs (devices auto); 1.5M steps
    assert (plan.batch.utterances, plan.batch.frames, plan.num_gpus, plan.steps) == (32, 750, 8, 1_500_000)
    assert plan.global_utterances == 256  # the published batch
    assert plan.audio_hours == pytest.approx(1_500_000 * 8 * 24_000 * 0.95 / 50 / 3600)
    assert plan.total_flops == pytest.approx(plan.flops.total * 8 * 1_500_000)
    assert plan.days == pytest.approx(plan.total_flops / (8 * 989e12 * 0.4) / 86400)
    # IBM's 26 days on the same 8 H100s: the MFU that makes the analytic time match
    assert plan.implied_mfu == pytest.approx(0.4 * plan.days / 26.0)
    assert 0.01 < plan.implied_mfu < 0.2
    assert plan.flops.backward["encoder"] == pytest.approx(2 * plan.flops.forward["encoder"], rel=1e-3)


def test_loader_demand_per_gpu_by_hand(no_model_built):
    plan = plan_recipe(load_recipe("ctc_granite_4_0_1b"), PlanOptions(loader_x_real_time=1000.0))
    # each of the 8 GPUs takes 32 utterances of 15 s (95% audio) per step, in days * 86400 / steps seconds
    step = plan.days * 86400 / 1_500_000
    assert plan.step_seconds == pytest.approx(step)
    assert plan.loader_demand_per_gpu == pytest.approx(32 * 15 * 0.95 / step)
    assert plan.loader_cores_per_gpu == pytest.approx(32 * 15 * 0.95 / step / 1000.0)
    assert f"{plan.loader_cores_per_gpu:.2f} cores per device" in plan.format()
    assert plan.to_dict()["loader"]["cores_per_gpu"] == plan.loader_cores_per_gpu
    half = plan_recipe(load_recipe("ctc_granite_4_0_1b"), PlanOptions(loader_x_real_time=500.0))
    assert half.loader_cores_per_gpu == pytest.approx(2 * plan.loader_cores_per_gpu)
    with pytest.raises(ValueError, match="loader_x_real_time must be > 0"):
        PlanOptions(loader_x_real_time=0.0)


def test_published_stage2_plan_frozen_encoder_and_known_llm(no_model_built):
    plan = plan_recipe(
        load_recipe("speech_llm_granite_4_0_1b"),
        PlanOptions(num_gpus=16, gpu="a100", mfu=0.3),
        stage1=load_recipe,
    )
    assert plan.stage == "speech_llm" and plan.num_gpus == 16
    assert plan.global_utterances == 16 * 16  # 16 x 15 s per GPU: 128 on the published 8 GPUs
    assert plan.flops.backward["encoder"] == 0  # frozen: no graph
    assert plan.flops.forward.keys() == {"encoder", "projector", "llm"}
    assert plan.sequence_tokens == 24 + 150 + 61  # 150 audio tokens for 15 s (10 Hz); 60 + EOS
    assert plan.days == pytest.approx(plan.total_flops / (16 * GPU_PEAK_FLOPS["a100"] * 0.3) / 86400)
    assert plan.implied_mfu == pytest.approx(plan.total_flops / (8 * 989e12 * 4 * 86400))
    assert any("ctc_granite_4_0_1b" in n for n in plan.notes)  # the encoder's shape: its stage-1 recipe


def test_unknown_llm_is_a_clear_error():
    values = load_recipe("speech_llm_granite_4_0_1b", ["model.llm=/nowhere/llm"])
    with pytest.raises(ValueError, match="nowhere"):
        plan_recipe(values, stage1=load_recipe)


# ------------------------------------------------------------------------------------------------
# measuring, and the command line
# ------------------------------------------------------------------------------------------------
def test_measure_runs_real_steps_of_a_tiny_recipe(tmp_path):
    make_corpus(tmp_path / "tts_en", "train", n=24, durations=(0.5, 1.5), seed=1)
    overrides = [
        "model.encoder.num_layers=2",
        "model.encoder.hidden_dim=48",
        "model.encoder.num_heads=2",
        "model.encoder.dim_head=24",
        "data.train.max_frames=600",
        "data.train.shuffle_buffer=8",
        "data.train.num_buckets=2",
        "data.num_workers=0",
        "logger=csv",
        "trainer.threads=1",
        "trainer.precision=32-true",
        f"data.train.sources=[{{name: tr, path: '{tmp_path}/tts_en/train', kind: parquet}}]",
    ]
    before = set(Path(tempfile.gettempdir()).glob("granite-plan-*"))
    plan = plan_recipe(
        load_recipe("ctc_tiny_en", overrides), PlanOptions(measure=True, measure_steps=2, measure_warmup=1)
    )
    m = plan.measured
    assert m is not None and m.device == "cpu" and m.steps == 2
    assert 0 < m.seconds_per_step < 30 and 0 < m.audio_seconds_per_step <= 600 / 50
    assert plan.measured_days == pytest.approx(2400 * m.seconds_per_step / 86400)
    assert set(Path(tempfile.gettempdir()).glob("granite-plan-*")) == before  # the run kept nothing


def test_plan_yaml_defaults_are_the_options_defaults():
    values = yaml.safe_load((CONFIG_DIR / "plan.yaml").read_text())
    options = {k: v for k, v in values.items() if k not in ("defaults", "hydra", "recipe", "output")}
    assert options == {k: getattr(PlanOptions(), k) for k in PlanOptions.__dataclass_fields__}


def test_cli_plan_splits_arguments_prints_and_writes_json(tmp_path, capsys, no_model_built):
    from granite_train import cli

    own, recipe = cli._plan_arguments(
        ["recipe=x", "--measure", "mfu=0.3", "trainer.max_steps=10", "--cfg", "job"]
    )
    assert own == ["recipe=x", "measure=true", "mfu=0.3", "--cfg", "job"] and recipe == [
        "trainer.max_steps=10"
    ]

    out = tmp_path / "plan.json"
    cli.main(
        [
            "plan",
            "recipe=ctc_granite_4_0_1b",
            "trainer.max_steps=1000",
            "gpu=h200",
            f"output={out}",
            f"hydra.run.dir={tmp_path}/run",
        ]
    )
    printed = capsys.readouterr().out
    assert "implied MFU" in printed and "1,000 (trainer.max_steps)" in printed
    written = json.loads(out.read_text())
    assert written["steps"] == 1000 and written["gpu"] == "h200" and written["published"]["days"] == 26.0
    with pytest.raises(SystemExit) as exc:
        cli.main(
            ["plan", "recipe=ctc_granite_4_0_1b", "trainer.max_stepz=3", f"hydra.run.dir={tmp_path}/run"]
        )
    assert exc.value.code == 2 and "max_stepz" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------
# granite-speech-5.0 TurboCTC: subsampling blocks change the frame rate inside the stack
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("top", [None, 2])
def test_turboctc_matches_torch_forward_and_backward(top):
    from transformers import GraniteSpeech5ForCTC

    from granite_train.models.turboctc import tiny_turboctc_config
    from granite_train.training.plan import TurboCTCShape

    config = tiny_turboctc_config(vocab_size=50, num_hidden_layers=4, context_size=64)
    config._attn_implementation = "eager"  # plain matmuls, which FlopCounterMode counts exactly
    torch.manual_seed(0)
    model = GraniteSpeech5ForCTC(config).train()
    layers = config.encoder_config.num_hidden_layers if top is None else top
    if top is not None:  # the top layers and the (tied) CTC head train
        model.requires_grad_(False)
        for layer in model.encoder.layers[-top:]:
            layer.requires_grad_(True)
        model.encoder.out.requires_grad_(True)
    batch = MicroBatch(utterances=2, frames=301)  # odd, and not whole 64-frame blocks at any rate
    x = torch.randn(batch.utterances, batch.frames, 4 * config.encoder_config.num_mel_bins)
    mask = torch.ones(batch.utterances, batch.frames, dtype=torch.long)

    def step():
        return model(input_features=x, attention_mask=mask).logits.sum()

    shape = ModelShape(TurboCTCShape.of(config), Trainable(layers))
    analytic = count_flops(shape, batch)
    forward, backward = torch_flops(step)
    assert analytic.total_forward == pytest.approx(forward, rel=RTOL)
    assert analytic.total_backward == pytest.approx(backward, rel=RTOL)


def test_turboctc_recipe_plans_from_its_folder(tmp_path):
    from granite_train.models.turboctc_new import new_turboctc_folder

    init = new_turboctc_folder(["a b c d"] * 4, tmp_path / "init", vocab_size=12, hidden_size=32,
                               intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                               num_key_value_heads=2, head_dim=16)  # fmt: skip
    recipe = load_recipe("turboctc_tiny_en", [f"model.init={init}"])
    plan = plan_recipe(recipe, PlanOptions(utterance_seconds=8.0))
    assert plan.stage == "turboctc" and plan.flops.total > 0
    assert "(a 5.0 TurboCTC model: turboctc)" in plan.format()
    # the release's own shape when its hub id is not cached: transformers' defaults
    released = load_recipe(
        "turboctc_finetune", ["trainer=cpu", "data.train.sources=[{name: mine, path: /data/x}]"]
    )
    big = plan_recipe(released, PlanOptions(utterance_seconds=8.0))
    assert big.flops.total > 1000 * plan.flops.total
