"""The learning-rate schedules and the optimizer's parameter groups, by hand."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from vlm_grades.training.optim import build_optimizer
from vlm_grades.training.schedule import build_scheduler, lr_lambda


def factors(total, warmup, schedule, min_ratio=0.1, upto=None):
    f = lr_lambda(total, warmup, schedule, min_ratio)
    return [f(s) for s in range(upto if upto is not None else total + 1)]


def test_warmup_then_cosine_down_to_the_floor():
    # 10 steps, warm-up 0.2 -> 2 steps: 1/2, 2/2; then 0.1 + 0.9 * (1 + cos(pi * (s - 2) / 8)) / 2
    got = factors(10, 0.2, "cosine", upto=13)
    cosine = [0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * k / 8)) for k in range(9)]
    assert got == pytest.approx([0.5, 1.0] + cosine + [0.1, 0.1])
    assert got[6] == pytest.approx(0.55)                     # half way: half way down to the floor
    assert got[10] == pytest.approx(0.1)                     # the last planned step is at the floor


def test_linear_and_constant():
    assert factors(10, 0.2, "linear") == pytest.approx([0.5, 1.0] + [0.1 + 0.9 * (1 - k / 8) for k in range(9)])
    assert factors(10, 0.2, "constant", upto=14) == [0.5, 1.0] + [1.0] * 12


@pytest.mark.parametrize("warmup,steps,warm", [(3, 10, 3), (3.0, 1000, 3), (0.05, 1000, 50), (0.15, 10, 2),
                                                (0, 10, 0)])
def test_warmup_is_a_fraction_or_a_step_count(warmup, steps, warm):
    got = factors(steps, warmup, "cosine", upto=60)
    assert got[:warm] == pytest.approx([(s + 1) / warm for s in range(warm)])   # linear, reaching 1 at warm - 1
    assert got[warm] == pytest.approx(1.0) and got[warm + 1] < 1.0               # then the decay starts


@pytest.mark.parametrize("min_ratio", [0.0, 0.25, 1.0])
def test_min_lr_ratio_is_the_floor(min_ratio):
    for schedule in ("cosine", "linear"):
        got = factors(20, 0, schedule, min_ratio=min_ratio, upto=25)
        assert got[0] == pytest.approx(1.0) and got[20] == pytest.approx(min_ratio)
        assert min(got) == pytest.approx(min_ratio) and got[24] == pytest.approx(min_ratio)


def test_scheduler_scales_each_modality_rate():
    model = nn.ModuleDict({"v": nn.Linear(4, 4), "l": nn.Linear(4, 4)})
    params = {"vision": list(model["v"].named_parameters()), "projector": [],
              "language": list(model["l"].named_parameters())}
    opt = build_optimizer(params, {"vision": 1e-3, "projector": 5e-4, "language": 2e-3}, 0.01)
    sched = build_scheduler(opt, 10, 0.2, "cosine", 0.1)
    seen = []
    for _ in range(11):
        seen.append({g["modality"]: g["lr"] for g in opt.param_groups})
        opt.step()
        sched.step()
    expected = factors(10, 0.2, "cosine")
    assert [s["vision"] for s in seen] == pytest.approx([1e-3 * f for f in expected])
    assert [s["language"] for s in seen] == pytest.approx([2e-3 * f for f in expected])


def test_one_dimensional_parameters_are_not_decayed_and_frozen_ones_not_optimized():
    model = nn.Sequential(nn.Linear(3, 3), nn.LayerNorm(3), nn.Linear(3, 3))
    model[2].weight.requires_grad_(False)
    named = list(model.named_parameters())
    opt = build_optimizer({"vision": named, "projector": [], "language": []},
                          {"vision": 0.1, "projector": 0.1, "language": 0.1}, weight_decay=0.5)
    assert sum(len(g["params"]) for g in opt.param_groups) == len(named) - 1
    before = {n: p.detach().clone() for n, p in named}
    for p in model.parameters():
        p.grad = torch.zeros_like(p) if p.requires_grad else None
    opt.step()                                               # zero gradients: only weight decay moves a weight
    after = dict(model.named_parameters())
    assert torch.allclose(after["0.weight"], before["0.weight"] * (1 - 0.1 * 0.5))
    for n in ("0.bias", "1.weight", "1.bias", "2.bias", "2.weight"):
        assert torch.equal(after[n], before[n]), n
