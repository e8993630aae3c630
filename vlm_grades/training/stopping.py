"""What ends a run, as a policy the training loop calls at fixed points of each step:

    observe(step)   after clipping, before the optimizer step (gradient statistics)
    update(step)    after the optimizer step: freezes; returns a stop reason or None
    check(step)     after the step is logged: validation passes; returns a stop reason or None
    finish(step)    once the loop is over (classic: back to the best weights)

`none` runs the planned steps, `grades` is the GradES engine, `classic` is validation-loss early stopping.
Under `--schedule wsd` the policy is wrapped in `Cooldown`: GradES's "converged" starts the schedule's cooldown
and the end of the cooldown ends the run.
"""
from __future__ import annotations

import copy
import dataclasses
import math
from typing import Any, Callable

import torch

from vlm_grades.components import MODALITIES
from vlm_grades.errors import UserError
from vlm_grades.training.schedule import wsd_factor


class NoStopping:
    frozen: dict[str, int] = {}

    def observe(self, step: int) -> None:
        pass

    def update(self, step: int) -> str | None:
        return None

    def check(self, step: int) -> str | None:
        return None

    def finish(self, step: int) -> None:
        pass

    def frozen_fraction(self) -> dict[str, float]:
        return {m: 0.0 for m in MODALITIES}

    def summary(self) -> dict[str, Any]:
        return {}

    def checkpoint_parts(self) -> dict[str, Any]:
        return {"grades": None, "classic_best": None}

    def load_state(self, parts: dict[str, Any]) -> None:
        pass

    def resolved(self, cfg):
        """The configuration as it ran, for config.yaml."""
        return cfg


class GradESStopping(NoStopping):
    def __init__(self, cfg, module, registry, optimizer, writer):
        from vlm_grades.grades import GradES, GradESConfig

        self.engine = GradES(module, registry, GradESConfig.from_dict(cfg.grades), optimizer=optimizer,
                             total_steps=cfg.steps, writer=writer)

    @property
    def frozen(self) -> dict[str, int]:
        return self.engine.frozen

    def observe(self, step: int) -> None:
        self.engine.observe(step)

    def update(self, step: int) -> str | None:
        self.engine.update(step)
        return (self.engine.stop_reason or "all components frozen") if self.engine.should_stop else None

    def frozen_fraction(self) -> dict[str, float]:
        return self.engine.frozen_fraction()

    def summary(self) -> dict[str, Any]:
        return {"frozen": self.engine.frozen_fraction()}

    def checkpoint_parts(self) -> dict[str, Any]:
        return {"grades": self.engine.state_dict(), "classic_best": None}

    def load_state(self, parts: dict[str, Any]) -> None:
        if parts.get("grades") is not None:
            self.engine.load_state_dict(parts["grades"])   # re-freezes before the optimizer state comes back

    def resolved(self, cfg):
        # every GradES setting, not only those given: a replay or report must see the rule the run used
        return dataclasses.replace(cfg, grades=self.engine.config.to_dict())


class ClassicStopping(NoStopping):
    """Validation loss every `classic_every` steps; stops after `classic_patience` checks without improvement and
    ends with the best weights. Its counters live in the loop state (`state.classic`), so checkpoints carry them."""

    def __init__(self, cfg, state, module, adapter, val_samples, autocast, to_device: Callable, emit):
        self.cfg, self.state, self.module, self.adapter = cfg, state, module, adapter
        self.val_samples, self.autocast, self.to_device, self.emit = val_samples, autocast, to_device, emit
        self.best: dict[str, torch.Tensor] | None = None

    @torch.no_grad()
    def validation_loss(self) -> float:
        self.module.eval()
        total, count = 0.0, 0
        bs = self.cfg.eval_batch_size
        for start in range(0, len(self.val_samples), bs):
            items = [self.adapter.preprocess(s, train=True) for s in self.val_samples[start:start + bs]]
            batch = self.to_device(self.adapter.collate(items))
            with self.autocast():
                total += float(self.adapter.loss(batch)) * len(items)
            count += len(items)
        self.module.train()
        return total / max(1, count)

    def check(self, step: int) -> str | None:
        if self.state.diverged or step % self.cfg.classic_every:
            return None
        value = self.validation_loss()
        c, reason = self.state.classic, None
        improved = value < c["best"] - self.cfg.classic_min_delta
        if improved:
            c.update(best=value, bad=0, best_step=step)
            self.best = copy.deepcopy({k: v.detach().cpu() for k, v in self.module.state_dict().items()})
        else:
            c["bad"] += 1
            if c["bad"] >= self.cfg.classic_patience:
                reason = (f"validation loss did not improve for {c['bad']} checks "
                          f"(best {c['best']:.4f} at step {c['best_step']})")
        if self.emit:
            self.emit("events", {"type": "validation", "step": step, "loss": value, "best": c["best"],
                                 "improved": improved})
        return reason

    def finish(self, step: int) -> None:
        if self.best is None or self.state.diverged:
            return
        self.module.load_state_dict(self.best)
        if self.emit:
            self.emit("events", {"type": "restore", "step": step, "best_step": self.state.classic["best_step"]})

    def checkpoint_parts(self) -> dict[str, Any]:
        return {"grades": None, "classic_best": self.best}

    def load_state(self, parts: dict[str, Any]) -> None:
        self.best = parts.get("classic_best")


def validation_data(cfg, load_split) -> list:
    """The validation split, which only classic stopping reads."""
    if cfg.stopping != "classic":
        return []
    samples = load_split(cfg, cfg.val_split, cfg.val_max_samples, "validation") if cfg.val_split else []
    if not samples:
        raise UserError("--stopping classic: needs validation data (--val-split)")
    return samples


def initial_classic_state() -> dict[str, Any]:
    return {"best": math.inf, "bad": 0, "best_step": 0}


def build_stopping(cfg, state, module, registry, optimizer, adapter, val_samples, autocast, to_device,
                   emit, scheduler=None):
    """The policy of `--stopping`; `emit` writes run-folder events (None on processes other than the main one).
    With a warmup-stable-decay `scheduler` it is wrapped in Cooldown."""
    if cfg.stopping == "grades":
        policy = GradESStopping(cfg, module, registry, optimizer, emit)
    elif cfg.stopping == "classic":
        policy = ClassicStopping(cfg, state, module, adapter, val_samples, autocast, to_device, emit)
    else:
        policy = NoStopping()
    factor = wsd_factor(scheduler) if scheduler is not None else None
    return Cooldown(policy, factor, emit) if factor is not None else policy


class Cooldown:
    """Under --schedule wsd, what ends the run: the wrapped policy's "converged" starts the cooldown, the end of
    the cooldown stops the run. After each step, in this order: did the wrapped policy stop the run (GradES:
    every matrix frozen)? Has the cooldown begun? If not: has GradES judged the model converged (its engine's
    `converged_step`), or has the cap come so close that a cooldown starting now just ends at --steps? Then the
    decay starts. Has the cooldown ended? Then the run stops. The decay start lives in the schedule
    (WSDFactor), which checkpoints carry; this object has no state of its own."""

    def __init__(self, inner, factor, emit: Callable[[str, dict], None] | None = None):
        self.inner, self.factor, self.emit = inner, factor, emit

    def update(self, step: int) -> str | None:
        reason = self.inner.update(step)
        if reason:
            return reason
        f = self.factor
        if f.decay_start is None:
            engine = getattr(self.inner, "engine", None)
            converged = engine.converged_step if engine is not None else None
            if converged is not None:
                self._start(step, f"GradES: the model converged at step {converged}")
            elif f.due(step):
                self._start(step, f"cap: a cooldown starting later would not end by --steps {f.cap}", to_cap=True)
        if f.end is not None and step >= f.end:
            return f"cooldown done ({f.end - f.decay_start} steps after step {f.decay_start}: {f.decay_reason})"
        return None

    def _start(self, step: int, reason: str, to_cap: bool = False) -> None:
        if self.factor.start_decay(step, reason, to_cap) and self.emit is not None:
            self.emit("events", {"type": "decay", "step": step, "until": self.factor.end, "reason": reason})

    # everything else is the wrapped policy's
    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)
