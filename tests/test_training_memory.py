"""Stage-2 memory: activation checkpointing recomputes without changing gradients, and the memory
estimate's dry run on ``meta`` counts what the same forward really saves."""

from __future__ import annotations

import pytest
import torch

from granite_train.training.memory import (
    MemoryEstimate,
    estimate_step_memory,
    meta_twin,
    saved_activation_bytes,
    step_activation_bytes,
)
from tests.test_models_speech_llm import LORA, _assemble, _collate, _examples, _loss, parts  # noqa: F401


def _trainable_speech(parts):  # noqa: F811
    speech = _assemble(parts)
    speech.add_lora(LORA)
    speech.set_trainable(projector=True, lora=True, encoder_layers=1)
    return speech.train()


def _grads(speech, batch) -> tuple[float, dict[str, torch.Tensor]]:
    speech.zero_grad(set_to_none=True)
    loss = _loss(speech, batch).loss
    loss.backward()
    return loss.item(), {n: p.grad.clone() for n, p in speech.named_parameters() if p.requires_grad}


def _count_calls(module: torch.nn.Module) -> list[int]:
    calls = [0]
    # a pre-hook: recomputation stops early, once the last tensor backward needs is back, which
    # can be before a module's forward returns (torch.utils.checkpoint's early stop)
    module.register_forward_pre_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


def test_checkpointing_recomputes_llm_and_encoder_layers_with_the_same_gradients(parts):  # noqa: F811
    speech = _trainable_speech(parts)
    batch = _collate(speech, _examples())
    # a child of the layer: transformers checkpoints the layer's forward, past its own hooks
    llm_calls = _count_calls(speech.language_model.layers[0].self_attn)
    encoder_calls = _count_calls(speech.encoder.layers[-1])

    loss_plain, grads_plain = _grads(speech, batch)
    saved_plain = saved_activation_bytes(lambda: _loss(speech, batch).loss)
    assert (llm_calls[0], encoder_calls[0]) == (2, 2)  # one step + the measuring forward

    speech.set_gradient_checkpointing(llm=True, encoder=True)
    assert speech.llm_checkpointing and speech.encoder.gradient_checkpointing
    loss_ckpt, grads_ckpt = _grads(speech, batch)
    # the step ran each checkpointed layer twice: forward, and again in backward
    assert (llm_calls[0], encoder_calls[0]) == (4, 4)
    assert loss_ckpt == pytest.approx(loss_plain, abs=1e-6)
    assert grads_ckpt.keys() == grads_plain.keys()
    for name, grad in grads_plain.items():
        torch.testing.assert_close(grads_ckpt[name], grad, atol=1e-6, rtol=1e-5, msg=name)
    assert saved_activation_bytes(lambda: _loss(speech, batch).loss) < 0.8 * saved_plain

    speech.set_gradient_checkpointing(llm=False, encoder=False)
    assert not speech.llm_checkpointing and not speech.encoder.gradient_checkpointing


def test_saved_bytes_count_a_tensor_and_its_views_once():
    weight = torch.randn(8, 8, requires_grad=True)
    x = torch.randn(4, 8)

    def step():
        hidden = x @ weight  # saves x (4 x 8 floats); the weight is a parameter, not counted
        return (hidden.tanh() * hidden.view(-1).view(4, 8)).sum()  # tanh output, hidden (twice)

    # x, hidden, tanh(hidden): 3 x 32 floats x 4 bytes
    assert saved_activation_bytes(step) == 3 * 32 * 4


def test_dry_run_on_meta_counts_what_the_same_forward_saves_for_real(parts):  # noqa: F811
    speech = _trainable_speech(parts)
    for checkpointing in (False, True):
        speech.set_gradient_checkpointing(llm=checkpointing, encoder=checkpointing)
        twin = meta_twin(speech, torch.float32)
        assert next(twin.parameters()).device.type == "meta"
        real = step_activation_bytes(speech, 900, utterance_seconds=6.0)
        dry = step_activation_bytes(twin, 900, utterance_seconds=6.0)
        # within 5%: a few kernels differ between meta and the CPU (batch norm in training mode,
        # attention with broadcast learned queries); fused attention is modelled on meta
        assert dry == pytest.approx(real, rel=0.05), (checkpointing, dry, real)
    # activations grow by the same amount with each utterance (the position tables do not grow)
    one, two, three = (step_activation_bytes(twin, n * 300, utterance_seconds=6.0) for n in (1, 2, 3))
    assert three - two == pytest.approx(two - one, rel=0.01) and two - one > 0.3 * one


def test_estimate_counts_weights_gradients_and_adam_states_of_what_trains(parts):  # noqa: F811
    speech = _trainable_speech(parts)
    counts = speech.parameter_counts()
    fp32 = estimate_step_memory(speech, 600, "32-true")
    assert fp32.weights == 4 * counts["total"]
    assert fp32.gradients == 4 * counts["trainable"]
    assert fp32.optimizer == 2 * 4 * counts["trainable"]
    mixed = estimate_step_memory(speech, 600, "bf16-mixed")
    # mixed precision: the same fp32 weights and states, activations in bf16 (about half)
    assert (mixed.weights, mixed.optimizer) == (fp32.weights, fp32.optimizer)
    assert mixed.activation_dtype == "bfloat16" and mixed.activations < 0.75 * fp32.activations
    assert 0 < fp32.activation_bytes_per_frame * fp32.batch_frames < fp32.activations


def test_fits_and_the_batch_that_would():
    gib = 1024**3
    est = MemoryEstimate(
        weights=4 * gib, gradients=gib, optimizer=2 * gib, activations=20 * gib,
        batch_frames=8000, device="cuda:0", capacity=24 * gib, activation_dtype="bfloat16",
        activation_bytes_per_frame=2 * gib / 1000,
    )  # fmt: skip
    assert est.total == 27 * gib and est.fits() is False
    # 4 GiB of the activations do not grow with the batch (20 - 8000 x 2/1000 GiB): 0.9 x 24 - 7 - 4
    # = 10.6 GiB grow at 2 GiB per 1000 frames: 5300 frames
    assert est.frames_that_fit() == 5300
    assert "data.train.max_frames=5300" in est.report()
    roomy = MemoryEstimate(**{**vars(est), "capacity": 80 * gib})
    assert roomy.fits() is True and "fits" in roomy.report()
    tight = MemoryEstimate(**{**vars(est), "capacity": 7 * gib})
    assert tight.frames_that_fit() == 0 and "not even the weights" in tight.report()
    assert MemoryEstimate(**{**vars(est), "capacity": None}).fits() is None
