"""grad_snr: the gradient's consistency over a window, normalized by its pure-noise value (statistics.py)."""
from __future__ import annotations

import io

import pytest
import torch
from torch import nn

from vlm_grades.grades.statistics import Entry, StatBank, sketch_index

torch.set_num_threads(1)


def bank_of(numel: int, sketch_k: int | None = None) -> tuple[nn.Parameter, StatBank]:
    p = nn.Parameter(torch.zeros(numel))
    idx = None if sketch_k is None else sketch_index(numel, sketch_k, 0, "m:weight", p.device)
    return p, StatBank([Entry("m:weight", 0, p, idx)], 1, "mean")


def run(grads: list[torch.Tensor], window: int, sketch_k: int | None = None) -> list[float]:
    p, bank = bank_of(grads[0].numel(), sketch_k)
    out = []
    for g in grads:
        p.grad = g.clone()
        out.append(bank.snr(1.0 - 1.0 / window)[0])
    return out


def test_by_hand_on_two_steps():
    g1, g2 = torch.tensor([1.0, -2.0, 2.0]), torch.tensor([3.0, 0.0, -1.0])
    b = 0.5
    m1, q1 = (1 - b) * g1, (1 - b) * g1.square().sum()
    m2, q2 = b * m1 + (1 - b) * g2, b * q1 + (1 - b) * g2.square().sum()
    # ||m||^2 (1 + b) / (q (1 - b)(1 + b^n)): pure noise gives 1 after any number of steps
    want = [float(m1.square().sum() * (1 + b) / (q1 * (1 - b) * (1 + b))),
            float(m2.square().sum() * (1 + b) / (q2 * (1 - b) * (1 + b ** 2)))]
    got = run([g1, g2], window=2)
    assert got == pytest.approx(want, rel=1e-6)
    assert got[0] == pytest.approx(1.0)    # one gradient alone: nothing to tell signal from noise


def noisy(steps: int, drift: float, numel: int = 4096, seed: int = 0, scale: float = 1.0) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    direction = torch.randn(numel, generator=gen)
    return [scale * (drift * direction + torch.randn(numel, generator=gen)) for _ in range(steps)]


def test_pure_noise_is_near_one_and_a_drift_is_large():
    quiet = run(noisy(300, drift=0.0), window=50)
    moving = run(noisy(300, drift=0.3), window=50)
    assert 0.8 < sum(quiet[-100:]) / 100 < 1.2
    # ||mu||^2 / floor = 0.09 * 101 / 1 + 1: about 10
    assert sum(moving[-100:]) / 100 > 6
    sketched = run(noisy(300, drift=0.3), window=50, sketch_k=512)
    assert sum(sketched[-100:]) / 100 > 5 and max(run(noisy(300, 0.0), 50, 512)[-100:]) < 2


def test_scale_free_in_the_gradient():
    a = run(noisy(60, drift=0.2), window=20)
    b = run(noisy(60, drift=0.2, scale=10.0), window=20)
    assert a == pytest.approx(b, rel=1e-5)


def sgd_on_quadratic(start: torch.Tensor, target: torch.Tensor, lr: float, gen: torch.Generator,
                     steps: int = 200, window: int = 50) -> list[float]:
    """grad_snr of noisy gradients of 0.5 ||w - target||^2 along an SGD run from `start`."""
    p, bank = bank_of(start.numel())
    with torch.no_grad():
        p.copy_(start)
    values = []
    for _ in range(steps):
        p.grad = (p.detach() - target) + torch.randn(start.numel(), generator=gen)
        values.append(bank.snr(1 - 1 / window)[0])
        with torch.no_grad():
            p -= lr * p.grad
    return values


@pytest.mark.parametrize("lr", [1e-3, 1e-4])
def test_one_threshold_fits_any_learning_rate_on_a_quadratic(lr):
    """Far from the optimum the statistic is large whatever the learning rate; at the optimum (converged)
    it is about 1. So one threshold (2 here) tells them apart."""
    gen = torch.Generator().manual_seed(3)
    target = torch.randn(2048, generator=gen) * 0.5
    far = sgd_on_quadratic(torch.zeros(2048), target, lr, gen)
    at_optimum = sgd_on_quadratic(target.clone(), target, lr, gen)
    assert sum(far[-50:]) / 50 > 10
    assert sum(at_optimum[-50:]) / 50 < 2


def test_a_nonfinite_gradient_gives_nan_and_does_not_poison_the_mean():
    grads = noisy(20, drift=0.3, numel=256)
    clean = run(grads, window=10)
    broken = list(grads)
    bad = grads[5].clone()
    bad[3] = float("nan")
    broken.insert(5, bad)
    values = run(broken, window=10)
    assert values[5] != values[5]                       # NaN
    assert values[:5] + values[6:] == pytest.approx(clean, rel=1e-6)


def test_state_round_trip_continues_exactly():
    grads = noisy(30, drift=0.2, numel=2048)
    p, bank = bank_of(2048, sketch_k=256)
    full = []
    for g in grads:
        p.grad = g.clone()
        full.append(bank.snr(0.9)[0])
    p1, first = bank_of(2048, sketch_k=256)
    for g in grads[:12]:
        p1.grad = g.clone()
        first.snr(0.9)
    buf = io.BytesIO()
    torch.save(first.state_dict(), buf)
    buf.seek(0)
    p2, second = bank_of(2048, sketch_k=128)            # configured otherwise: the saved sketch wins
    second.load_state_dict(torch.load(buf))
    rest = []
    for g in grads[12:]:
        p2.grad = g.clone()
        rest.append(second.snr(0.9)[0])
    assert rest == full[12:]
