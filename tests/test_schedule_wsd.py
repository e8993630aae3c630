"""Warmup-stable-decay (issue 23): its shape by hand, the convergence test on synthetic series, and the policy
that starts the cooldown on GradES's "converged" and stops the run at its end."""
from __future__ import annotations

import math
import random

import pytest
import torch

from vlm_grades.training.stopping import Cooldown
from vlm_grades.grades.plateau import Plateau
from vlm_grades.training.schedule import WSDFactor, build_wsd, cooldown_steps, latest_decay_start, wsd_factor


def lrs(factor: WSDFactor, steps: int) -> list[float]:
    """The rate factor of optimizer steps 1..steps, as LambdaLR applies it (step s uses factor(s - 1))."""
    return [factor(s - 1) for s in range(1, steps + 1)]


def test_shape_by_hand_warmup_stable_then_a_cooldown_of_a_fifth_of_the_steps_done():
    f = WSDFactor(warmup=10, cooldown=0.2, min_ratio=0.1, cap=1000)
    before = lrs(f, 300)
    assert before[:10] == pytest.approx([(i + 1) / 10 for i in range(10)])        # linear warm-up
    assert before[10:] == [1.0] * 290                                               # stable: no plan to follow
    assert f.start_decay(100, "test") and not f.start_decay(150, "again")          # started once, for good
    assert f.end == 120 and cooldown_steps(100, 0.2) == 20
    rates = lrs(f, 130)
    assert rates[:100] == before[:100]                                              # the past is unchanged
    assert rates[100] == 1.0                                                        # step 101: first of the cooldown
    assert rates[119] == pytest.approx(0.1)                                         # step 120: its last, min_ratio
    steps = [rates[i] - rates[i + 1] for i in range(100, 119)]
    assert steps == pytest.approx([0.9 / 19] * 19)                                  # linear in between


def test_sqrt_cooldown_by_hand_falls_as_one_minus_the_root_of_its_progress():
    f = WSDFactor(warmup=10, cooldown=0.2, min_ratio=0.1, cap=1000, decay_at=100, shape="sqrt")
    rates = lrs(f, 120)
    assert rates[:100] == lrs(WSDFactor(warmup=10, cooldown=0.2, min_ratio=0.1, cap=1000), 100)
    # step 100 + k (k = 1..20) is at progress (k - 1) / 19 of the cooldown
    assert rates[100:] == pytest.approx([1 - 0.9 * math.sqrt(k / 19) for k in range(20)])
    assert rates[104] < lrs(WSDFactor(10, 0.2, 0.1, 1000, decay_at=100), 120)[104]  # below the linear one
    with pytest.raises(ValueError, match="cooldown shape"):
        WSDFactor(10, 0.2, 0.1, 1000, shape="cosine")


def test_the_cap_starts_the_decay_so_that_the_cooldown_ends_exactly_at_the_cap():
    assert latest_decay_start(1000, 0.2) == 833 and 833 + cooldown_steps(833, 0.2) == 1000
    for cap in (50, 999, 1000, 4000):
        s = latest_decay_start(cap, 0.15)
        assert s + cooldown_steps(s, 0.15) <= cap < s + 1 + cooldown_steps(s + 1, 0.15)
    f = WSDFactor(warmup=5, cooldown=0.2, min_ratio=0.1, cap=1000, decay_at=400)
    assert f.decay_start == 400 and f.end == 480 and f.fixed


class FakeEngine:
    converged_step = None


class FakePolicy:
    """A stopping policy with a GradES engine whose "converged" the test sets."""

    def __init__(self):
        self.engine, self.stop_at = FakeEngine(), None

    def update(self, step):
        return "all components frozen" if step == self.stop_at else None


def drive(policy, steps):
    for step in range(1, steps + 1):
        reason = policy.update(step)
        if reason:
            return step, reason
    return None, None


def test_policy_starts_the_cooldown_on_convergence_and_stops_at_its_end():
    inner, events = FakePolicy(), []
    f = WSDFactor(warmup=5, cooldown=0.2, min_ratio=0.1, cap=4000)
    policy = Cooldown(inner, f, lambda kind, rec: events.append(rec))

    class Engine(FakeEngine):
        @property
        def converged_step(self):
            return 250 if step_now[0] >= 250 else None

    step_now = [0]
    inner.engine = Engine()
    for step in range(1, 4001):
        step_now[0] = step
        reason = policy.update(step)
        if reason:
            break
    assert (f.decay_start, f.end, step) == (250, 300, 300)
    assert "cooldown done (50 steps after step 250" in reason and "converged at step 250" in reason
    assert [e["type"] for e in events] == ["decay"] and events[0]["until"] == 300


def test_policy_without_convergence_decays_so_as_to_end_at_the_cap():
    f = WSDFactor(warmup=5, cooldown=0.2, min_ratio=0.1, cap=600)
    step, reason = drive(Cooldown(FakePolicy(), f), 10_000)
    assert step == 600 and f.decay_start == latest_decay_start(600, 0.2) and "cap" in f.decay_reason
    # where 0.4 x the start rounds short of the cap, the cap-forced cooldown still ends at the cap, the rate at
    # min_ratio on its last step: a run uses all of its --steps (cap 4: start after step 2, cooldown 3-4)
    for cap in (4, 45, 1000):
        f = WSDFactor(warmup=1, cooldown=0.4, min_ratio=0.1, cap=cap)
        step, _ = drive(Cooldown(FakePolicy(), f), 10_000)
        assert step == f.end == cap and lrs(f, cap)[-1] == pytest.approx(0.1)
    assert latest_decay_start(4, 0.4) + cooldown_steps(latest_decay_start(4, 0.4), 0.4) == 3   # the rounding


def test_policy_stops_when_the_wrapped_policy_does_and_decay_at_ignores_convergence():
    inner = FakePolicy()
    inner.stop_at = 77
    assert drive(Cooldown(inner, WSDFactor(5, 0.2, 0.1, 1000)), 1000) == (77, "all components frozen")
    inner = FakePolicy()
    inner.engine.converged_step = 10                      # converged early, but the decay is fixed at 300
    f = WSDFactor(5, 0.2, 0.1, 1000, decay_at=300)
    assert drive(Cooldown(inner, f), 1000)[0] == 360 and f.decay_start == 300


def test_decay_start_is_scheduler_state_that_a_checkpoint_carries():
    p = torch.nn.Parameter(torch.zeros(3))
    opt = torch.optim.AdamW([p], lr=1.0)
    sched = build_wsd(opt, cap=1000, warmup=4, min_ratio=0.1, cooldown=0.2)
    for _ in range(30):
        opt.step()
        sched.step()
    wsd_factor(sched).start_decay(30, "converged")
    state = sched.state_dict()
    opt2 = torch.optim.AdamW([p], lr=1.0)
    sched2 = build_wsd(opt2, cap=1000, warmup=4, min_ratio=0.1, cooldown=0.2)
    sched2.load_state_dict(state)
    f2 = wsd_factor(sched2)
    assert (f2.decay_start, f2.decay_reason, f2.end) == (30, "converged", 36)
    assert wsd_factor(torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)) is None


# ------------------------------------------------------------------ the convergence test
def noisy(level, rng, sd=0.4):
    return level * math.exp(rng.gauss(0.0, sd))           # multiplicative noise, as the pooled statistic has


def first_hit(series, window=200, tolerance=0.1, patience=10):      # the engine's defaults
    p = Plateau(window, tolerance, patience)
    return next((i for i, v in enumerate(series) if p.add(v)), None)


@pytest.mark.parametrize("seed", range(5))
def test_a_noisy_plateau_converges_within_a_window_and_a_slow_descent_never_does(seed):
    rng = random.Random(seed)
    plateau = [noisy(1e-4, rng) for _ in range(1500)]
    hit = first_hit(plateau)
    assert hit is not None and 200 <= hit < 400             # a whole window seen, then the patience
    # falling by 40% per window (what the fine-tuning default's pooled statistic does before its plateau, with
    # a per-check noise of the same size) never counts as converged
    descent = [noisy(1e-4 * math.exp(-0.5 * i / 200), rng) for i in range(1500)]
    assert first_hit(descent) is None
    # nor does a window that is only partly flat: a descent that levels off converges once the flat part fills
    # most of the window
    bend = [noisy(1e-4 * math.exp(-0.5 * min(i, 600) / 200), rng) for i in range(1500)]
    assert 650 <= first_hit(bend) < 1000


def test_plateau_ignores_non_finite_values_and_resumes_exactly():
    rng = random.Random(0)
    series = [noisy(1.0, rng) for _ in range(300)]
    a = Plateau(100, 0.1)
    hits_a = [a.add(v) for v in series]
    b = Plateau(100, 0.1)
    hits_b = [b.add(v) for v in series[:150]]
    c = Plateau(100, 0.1)
    c.load_state_dict(b.state_dict())
    hits_b += [c.add(v) for v in series[150:]]
    assert hits_a == hits_b
    assert not Plateau(2, 0.1).add(float("nan")) and not Plateau(2, 0.1).add(0.0)
