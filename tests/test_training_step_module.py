"""The shared stage base: optimizer parameter groups (weight decay, per-module LR factors)."""

from __future__ import annotations

import logging

import pytest
import torch

from granite_train.training.step_module import StepSkippingModule


class _TwoParts(StepSkippingModule):
    def __init__(self, optim):
        super().__init__(optim, total_steps=10)
        self.projector = torch.nn.Linear(4, 4)
        self.llm = torch.nn.Linear(4, 4)
        self.frozen = torch.nn.Linear(4, 4).requires_grad_(False)


OPTIM = {"lr": 1e-3, "weight_decay": 0.1, "schedule": {"name": "cosine", "warmup_steps": 2}}


def _groups(module):
    configured = module.configure_optimizers()
    optimizer = configured["optimizer"]
    by_param = {}
    for group in optimizer.param_groups:
        for p in group["params"]:
            by_param[id(p)] = (group["lr"], group["weight_decay"])
    scheduler = configured["lr_scheduler"]["scheduler"]
    return optimizer, scheduler, {n: by_param.get(id(p)) for n, p in module.named_parameters()}


def test_lr_scale_puts_matching_parameters_in_their_own_groups():
    module = _TwoParts({**OPTIM, "lr_scale": {"projector": 3.0}})
    optimizer, scheduler, groups = _groups(module)
    # the schedule's warm-up factor is applied at construction: compare ratios and decay
    lr = groups["llm.weight"][0]
    assert groups["projector.weight"] == (pytest.approx(3 * lr), 0.1)
    assert groups["projector.bias"] == (pytest.approx(3 * lr), 0.0)
    assert groups["llm.weight"][1] == 0.1 and groups["llm.bias"] == (lr, 0.0)
    assert groups["frozen.weight"] is None  # frozen parameters are not optimised
    for _ in range(5):
        optimizer.step()
        scheduler.step()
    lrs = sorted({g["lr"] for g in optimizer.param_groups})
    assert lrs[1] == pytest.approx(3 * lrs[0])  # the factor holds through the schedule


def test_without_lr_scale_everything_shares_the_lr():
    _, _, groups = _groups(_TwoParts(OPTIM))
    assert len({lr for lr, _ in filter(None, groups.values())}) == 1


@pytest.mark.parametrize(
    "option, value, message",
    [("lr_scale", {"llm": 0.0}, "must be > 0"), ("start_step", {"llm": -1}, "must be >= 0")],
)
def test_bad_group_settings_are_rejected(option, value, message):
    with pytest.raises(ValueError, match=message):
        _TwoParts({**OPTIM, option: value}).configure_optimizers()


def test_pattern_without_a_trainable_match_is_logged_not_applied(caplog):
    module = _TwoParts({**OPTIM, "lr_scale": {"decoder": 2.0, "frozen": 5.0}})
    with caplog.at_level(logging.WARNING, logger="granite_train.training.step_module"):
        _, _, groups = _groups(module)
    assert "lr_scale.decoder" in caplog.text and "lr_scale.frozen" in caplog.text
    assert len({lr for lr, _ in filter(None, groups.values())}) == 1


def test_start_step_holds_a_part_at_zero_lr_then_follows_the_schedule():
    module = _TwoParts({**OPTIM, "lr_scale": {"projector": 2.0}, "start_step": {"llm": 3}})
    optimizer, scheduler, _ = _groups(module)
    llm_weight = module.llm.weight.detach().clone()
    proj_weight = module.projector.weight.detach().clone()
    seen = []
    for _ in range(5):
        module.zero_grad()
        (module.projector(torch.ones(1, 4)).sum() + module.llm(torch.ones(1, 4)).sum()).backward()
        optimizer.step()
        scheduler.step()
        seen.append(torch.equal(module.llm.weight, llm_weight))
    # steps 0-2 leave the LLM alone (not even weight decay), steps 3-4 train it
    assert seen == [True, True, True, False, False]
    assert not torch.equal(module.projector.weight, proj_weight)
    base = module._schedule(scheduler.last_epoch)
    lrs = {round(g["lr"] / (OPTIM["lr"] * base), 6) for g in optimizer.param_groups}
    assert lrs == {1.0, 2.0}


def test_fused_adamw_by_default_and_the_same_update_as_the_loop():
    torch.manual_seed(0)
    fused, loop = _TwoParts(OPTIM), _TwoParts({**OPTIM, "fused": False})
    loop.load_state_dict(fused.state_dict())
    start = {n: p.detach().clone() for n, p in fused.named_parameters()}
    opt_fused = fused.configure_optimizers()["optimizer"]
    opt_loop = loop.configure_optimizers()["optimizer"]
    assert opt_fused.defaults["fused"] is True and not opt_loop.defaults["fused"]
    x = torch.randn(8, 4)
    for _ in range(3):
        for module, opt in ((fused, opt_fused), (loop, opt_loop)):
            opt.zero_grad()
            (module.llm(module.projector(x)) ** 2).mean().backward()
            opt.step()
    for (name, a), b in zip(fused.named_parameters(), loop.parameters()):
        assert torch.allclose(a, b, atol=1e-6), name
    assert not torch.allclose(fused.llm.weight, start["llm.weight"])  # it did train
    assert torch.equal(fused.frozen.weight, start["frozen.weight"])
