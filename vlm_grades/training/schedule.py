"""The learning-rate schedule, as a factor of each group's rate: linear warm-up, then cosine, linear or
constant over the planned steps, or warmup-stable-decay (wsd), whose length is decided during the run.

Warmup-stable-decay: warm-up, a constant rate for as long as the model learns, then a cooldown and the end.
The decay starts when the stopping policy says so (`start_decay(step)`: GradES judged the model converged),
at a fixed step (`--decay-at`), or at the latest step whose cooldown still ends by the cap (`--steps`). The
cooldown lasts `cooldown` x the steps done when it starts and falls to `min_ratio`, linearly or as 1 - sqrt
of its progress (`shape`). Hägele et al. 2024 (arXiv 2405.18392) found 10-20% of the steps enough to match a
cosine schedule in pretraining, and 1-sqrt better than linear; on the fine-tuning default, branched off one
constant-rate run, 0.4 scored 0.07-0.19 points above 0.2, and neither 1-sqrt nor a final rate of 0 helped
(benchmarks/cooldown_branches.py), so the default is 0.4, linear. The run ends when the cooldown is over
(training/stopping.py, Cooldown). Nothing here depends on the cap except that last-resort start.
`WSDFactor` is a callable object, so torch's LambdaLR saves its attributes (the decay start among them) in
the scheduler's state_dict: a checkpoint taken in any phase resumes exactly.
"""
from __future__ import annotations

import math

import torch

from vlm_grades.config import COOLDOWN_SHAPES


def lr_lambda(total_steps: int, warmup: float, schedule: str, min_ratio: float):
    warm = int(warmup) if warmup >= 1 else int(round(warmup * total_steps))

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        if schedule == "constant":
            return 1.0
        progress = min(1.0, (step - warm) / max(1, total_steps - warm))
        shape = 0.5 * (1 + math.cos(math.pi * progress)) if schedule == "cosine" else 1 - progress
        return min_ratio + (1 - min_ratio) * shape

    return factor


def build_scheduler(optimizer, total_steps: int, warmup: float, schedule: str, min_ratio: float,
                    cooldown: float = 0.4, decay_at: int | None = None, cooldown_shape: str = "linear"):
    if schedule == "wsd":
        return build_wsd(optimizer, total_steps, warmup, min_ratio, cooldown, decay_at, cooldown_shape)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(total_steps, warmup, schedule, min_ratio))


def cooldown_steps(decay_start: int, cooldown: float) -> int:
    return max(1, math.ceil(cooldown * decay_start))


def latest_decay_start(cap: int, cooldown: float) -> int:
    """The last step at which a decay can start and still finish its cooldown by step `cap`."""
    start = int(cap / (1 + cooldown))
    while start + 1 + cooldown_steps(start + 1, cooldown) <= cap:
        start += 1
    while start > 0 and start + cooldown_steps(start, cooldown) > cap:
        start -= 1
    return start


class WSDFactor:
    """LambdaLR factor of warmup-stable-decay. `step` is LambdaLR's count of scheduler steps taken: the
    factor for optimizer step `step + 1` (1-based)."""

    def __init__(self, warmup: int, cooldown: float, min_ratio: float, cap: int, decay_at: int | None = None,
                 shape: str = "linear"):
        if shape not in COOLDOWN_SHAPES:
            raise ValueError(f"cooldown shape: expected one of {COOLDOWN_SHAPES}, got {shape!r}")
        self.warmup, self.cooldown, self.min_ratio = int(warmup), float(cooldown), float(min_ratio)
        self.shape = shape
        self.cap = int(cap)
        self.fixed = decay_at is not None            # --decay-at: the policy's trigger is ignored
        self.decay_start: int | None = None
        self.decay_reason: str | None = None
        self.decay_end: int | None = None            # set when the cap decides where the cooldown ends
        if decay_at is not None:
            latest = latest_decay_start(cap, cooldown)
            self.start_decay(min(int(decay_at), latest), f"--decay-at {decay_at}", to_cap=int(decay_at) >= latest)

    def start_decay(self, step: int, reason: str, to_cap: bool = False) -> bool:
        """Starts the cooldown after optimizer step `step` (the next step is the first one decayed). to_cap: the
        cap forced it, and the cooldown ends at the cap (its length rounds up to at most a step more than
        `cooldown` x step, so a run uses all of its --steps). False if it has started already."""
        if self.decay_start is not None:
            return False
        self.decay_start, self.decay_reason = int(step), reason
        self.decay_end = self.cap if to_cap else None
        return True

    def due(self, step: int) -> bool:
        """The cap forces the decay: started after `step`, the cooldown just ends at the cap."""
        return self.decay_start is None and step >= latest_decay_start(self.cap, self.cooldown)

    @property
    def end(self) -> int | None:
        """The optimizer step at which the cooldown ends (None: not started)."""
        if self.decay_start is None:
            return None
        if self.decay_end is not None:   # a checkpoint of an earlier version leaves the constructor's None
            return self.decay_end
        return self.decay_start + cooldown_steps(self.decay_start, self.cooldown)

    def __call__(self, step: int) -> float:
        warm = (step + 1) / self.warmup if step < self.warmup else 1.0
        if self.decay_start is None or step <= self.decay_start:
            return warm
        # optimizer steps decay_start+1 .. end: from 1.0 down to min_ratio at the last one
        span = self.end - self.decay_start - 1
        progress = min(1.0, (step - self.decay_start) / span) if span else 1.0
        fall = math.sqrt(progress) if self.shape == "sqrt" else progress
        return min(warm, 1.0 - (1.0 - self.min_ratio) * fall)     # a cap inside the warm-up: both apply


def build_wsd(optimizer, cap: int, warmup: float, min_ratio: float, cooldown: float, decay_at: int | None = None,
              shape: str = "linear"):
    return torch.optim.lr_scheduler.LambdaLR(optimizer, WSDFactor(int(warmup), cooldown, min_ratio, cap, decay_at,
                                                                  shape))


def wsd_factor(scheduler) -> WSDFactor | None:
    """The schedule's WSDFactor if it is warmup-stable-decay, else None."""
    fns = getattr(scheduler, "lr_lambdas", None) or []
    return fns[0] if fns and isinstance(fns[0], WSDFactor) else None
