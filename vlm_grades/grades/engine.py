"""GradES: watch every monitored matrix, freeze the converged ones for good, signal the stop.

    grades = GradES(model, registry, config, optimizer=opt, total_steps=T, writer=run.append)
    for step in 1..T:                      # step = optimizer steps done once this one is taken (1-based)
        backward; clip
        grades.observe(step)               # gradient statistics (grad_change / grad), before opt.step()
        opt.step(); opt.zero_grad()
        grades.update(step)                # weight_change statistic, freeze decisions, finalization, stop
        if grades.should_stop: break

A check happens at steps divisible by `interval`. grad_change compares the gradient with the one of the step
before (kept from step - 1), as in the paper; weight_change compares the weights with those of the last check,
as the official code does. Freezing is permanent and by module reference: requires_grad False, grad None,
optimizer state released; the learning-rate schedule is not touched. A NaN/Inf statistic never freezes.
Beside the freezes the engine says when each modality, and the whole model, has converged (`converged`,
`converged_step`: its pooled statistic stopped falling, grades/plateau.py); it never stops on that itself,
the stopping policy turns it into the start of a cooldown (training/stopping.py, Cooldown).
"""
from __future__ import annotations

import math
from collections import deque
from typing import Any, Callable, Iterable

import torch
from torch import nn

from vlm_grades.components import MODALITIES, Component, Registry
from vlm_grades.errors import UserError
from vlm_grades.grades.config import GradESConfig
from vlm_grades.grades.plateau import Plateau
from vlm_grades.grades.statistics import Entry, StatBank, sketch_index, sketch_size

Writer = Callable[[str, dict], None]
STATE_VERSION = 1


def broadcast_from_rank0(flags: list[bool], device: torch.device) -> list[bool]:
    """Decision agreement: every process takes rank 0's freeze vector (a no-op without torch.distributed)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1 or not flags:
        return flags
    backend = dist.get_backend()
    dev = device if backend == "nccl" else torch.device("cpu")
    t = torch.tensor([int(f) for f in flags], dtype=torch.uint8, device=dev)
    dist.broadcast(t, src=0)
    return [bool(v) for v in t.tolist()]


def unwrap_optimizer(opt: Any) -> Any:
    """The torch optimizer holding per-parameter state (accelerate and others wrap it in `.optimizer`)."""
    seen = 0
    while opt is not None and hasattr(opt, "optimizer") and seen < 8:
        opt, seen = opt.optimizer, seen + 1
    return opt


class GradES:
    def __init__(self, model: nn.Module, registry: Registry, config: GradESConfig | dict | None = None,
                 optimizer: Any = None, total_steps: int | None = None, writer: Writer | None = None,
                 stop_events: bool = False, agree: Callable[[list[bool], torch.device], list[bool]] | None = None):
        self.config = config if isinstance(config, GradESConfig) else GradESConfig.from_dict(config)
        self.grace = self.config.validate(total_steps)
        self.model, self.registry, self.writer = model, registry, writer
        self.total_steps = total_steps
        self.stop_events = stop_events          # the training loop writes its own stop event
        self.agree = agree or broadcast_from_rank0
        self.optimizer = None
        cfg = self.config

        tau = cfg.tau
        # matrices frozen before the run (a modality the user froze) are not watched; they count as frozen
        self.untrainable = {c.name for c in registry.components if not any(p.requires_grad for _, p in c.params)}
        self.components: list[Component] = [c for c in registry.components
                                            if tau[c.modality] is not None and c.name not in self.untrainable]
        if not self.components:
            raise UserError(f"grades.tau: no trainable monitored matrix in the modalities switched on "
                            f"({', '.join(cfg.monitored_modalities())})")
        self._index = {c.name: i for i, c in enumerate(self.components)}
        self._device = self.components[0].params[0][1].device

        # per-component decision state
        self.frozen: dict[str, int] = {}              # name -> step frozen
        self.finalized: dict[str, int] = {}           # modality -> step finalized
        self.smoothed: dict[str, float] = {}
        self.below: dict[str, int] = {}
        self.calibration: dict[str, deque] = {}
        self.auto_tau: dict[str, float] = {}
        self.nonfinite: dict[str, int] = {}
        self.last_values: dict[str, float] = {}
        self._snap_step: int | None = None            # grad_change: step whose gradient is stored
        self._checked: bool = False                   # weight_change: the first check only stores weights
        self._pending: tuple[int, list[float]] | None = None
        self.stop_reason: str | None = None
        self.stop_step: int | None = None
        # "converged": per modality, the step its pooled statistic stopped falling (or it was finalized)
        self.plateaus = {m: Plateau(cfg.converge_window, cfg.converge_tolerance, cfg.converge_patience)
                         for m in MODALITIES if any(c.modality == m for c in self.components)}
        self.converged: dict[str, int] = {}

        entries = []
        for i, c in enumerate(self.components):
            for suffix, p in c.params:
                key = f"{c.name}:{suffix}"
                index = None
                if cfg.metric != "grad":
                    k = sketch_size(p.numel(), cfg.sketch, cfg.sketch_fraction, cfg.sketch_min, cfg.sketch_max)
                    if k is not None:
                        index = sketch_index(p.numel(), k, cfg.sketch_seed, key, p.device)
                entries.append(Entry(key, i, p, index))
        self.bank = StatBank(entries, len(self.components), cfg.normalization)
        if optimizer is not None:
            self.attach_optimizer(optimizer)

    # ------------------------------------------------------------------ public API
    def attach_optimizer(self, optimizer: Any) -> None:
        self.optimizer = optimizer
        for name in self.frozen:
            self._release(p for _, p in self.components[self._index[name]].params)

    @property
    def should_stop(self) -> bool:
        return self.stop_reason is not None

    @property
    def converged_step(self) -> int | None:
        """The step at which every watched modality had converged (None: not yet). The stopping policy
        turns it into the start of the cooldown; the engine itself never stops on it."""
        if not self.plateaus or any(m not in self.converged for m in self.plateaus):
            return None
        return max(self.converged[m] for m in self.plateaus)

    def frozen_fraction(self) -> dict[str, float]:
        out = {}
        for m in MODALITIES:
            comps = [c for c in self.registry.components if c.modality == m]
            done = sum(c.name in self.frozen or c.name in self.untrainable for c in comps)
            out[m] = done / len(comps) if comps else 0.0
        return out

    def freeze(self, names: Iterable[str], step: int = 0) -> None:
        """Freeze the named components now, exactly as if the rule had chosen them at `step`
        (fixed-freeze experiments, hand overrides); finalizes modalities when the config says so."""
        names = list(names)
        unknown = [n for n in names if n not in self._index]
        if unknown:
            raise UserError(f"GradES.freeze: {unknown[0]!r} is not a monitored component")
        new = [self.components[self._index[n]] for n in names if n not in self.frozen]
        for c in new:
            self._freeze(c, step, None, None)
        if new:
            self.bank.keep({self._index[c.name] for c in self.active()})
            if self.config.finalize_modalities:
                self._finalize(step)
        self._check_stop(step)

    def active(self) -> list[Component]:
        return [c for c in self.components if c.name not in self.frozen]

    def memory_bytes(self) -> int:
        """Bytes the engine keeps between steps (stored gradients/weights, sketch indices)."""
        return self.bank.nbytes()

    def monitored_bytes(self) -> int:
        return sum(p.numel() * p.element_size() for c in self.components for _, p in c.params)

    def observe(self, step: int) -> None:
        """After backward (and gradient sync / clipping), before optimizer.step()."""
        cfg = self.config
        if self.should_stop or not self.bank.entries or cfg.metric == "weight_change":
            return
        if cfg.metric in ("grad", "grad_snr"):
            if step % cfg.interval == 0:
                self._pending = (step, self.bank.magnitude("grad") if cfg.metric == "grad"
                                 else self.bank.snr(1.0 - 1.0 / cfg.snr_window))
            return
        if step % cfg.interval == 0 and self._snap_step == step - 1 and self.bank.has_prev():
            self._pending = (step, self.bank.change("grad"))   # also stores g(step) as the previous
            self._snap_step = step
        elif (step + 1) % cfg.interval == 0:
            self.bank.snapshot("grad")
            self._snap_step = step

    def update(self, step: int) -> None:
        """After optimizer.step(): weight_change statistic, freeze decisions, finalization, stop signal."""
        cfg = self.config
        if self.should_stop:
            return
        values = None
        if cfg.metric == "weight_change":
            if step % cfg.interval == 0 and self.bank.entries:
                if self._checked and self.bank.has_prev():
                    values = self.bank.change("weight")
                else:
                    self.bank.snapshot("weight")    # the first check only stores the weights
                    self._checked = True
        elif self._pending is not None and self._pending[0] == step:
            values = self._pending[1]
        self._pending = None
        if values is not None:
            self._decide(step, values)
        self._check_stop(step)

    def check(self, step: int, values: dict[str, float | None]) -> None:
        """One check on statistics computed elsewhere (a replay of a run's convergence log): the same
        smoothing, thresholds, patience, freezing and stop signal as a live check. A component missing from
        `values` is left as it is at this step."""
        self._decide(step, [values.get(c.name) for c in self.components])
        self._check_stop(step)

    # ------------------------------------------------------------------ decisions
    def _tau_for(self, c: Component, value: float) -> float | None:
        t = self.config.tau[c.modality]
        if t != "auto":
            return float(t)
        if c.name not in self.auto_tau:
            window = self.calibration.get(c.name)
            level = sum(window) / len(window) if window else value   # no check fell in the grace period
            self.auto_tau[c.name] = self.config.rho * level
            self.calibration.pop(c.name, None)
            if not window:
                return None                                          # this check only calibrates
        return self.auto_tau[c.name]

    def _decide(self, step: int, values: list[float]) -> None:
        cfg = self.config
        checked, taus, freeze = {}, {}, []
        beta = cfg.smoothing
        for c in self.active():
            v = values[self._index[c.name]]
            if v is None:                                           # not measured (replays only)
                continue
            checked[c.name] = v
            if not math.isfinite(v):
                self.nonfinite[c.name] = self.nonfinite.get(c.name, 0) + 1
                self.below[c.name] = 0
                self._emit("events", {"type": "nonfinite", "step": step, "component": c.name, "value": v})
                taus[c.name] = self._tau_in_force(c)
                continue
            prev = self.smoothed.get(c.name)
            s = v if (beta == 0 or prev is None) else beta * prev + (1 - beta) * v
            self.smoothed[c.name] = s
            if step < self.grace:
                if cfg.tau[c.modality] == "auto":
                    self.calibration.setdefault(c.name, deque(maxlen=cfg.auto_window)).append(s)
                taus[c.name] = self._tau_in_force(c)
                continue
            tau = self._tau_for(c, s)
            taus[c.name] = tau
            if tau is None:
                continue
            self.below[c.name] = self.below.get(c.name, 0) + 1 if s < tau else 0
            if self.below[c.name] >= cfg.patience:
                freeze.append(c)
        self.last_values = checked
        self._watch_convergence(step, checked)

        flags = self.agree([c in freeze for c in self.active()], self._device)
        freeze = [c for c, f in zip(self.active(), flags) if f]
        for c in freeze:
            self._freeze(c, step, checked.get(c.name), taus.get(c.name))
        if freeze:
            self.bank.keep({self._index[c.name] for c in self.active()})
            if cfg.finalize_modalities:
                self._finalize(step)
        record = {"step": step, "metric": cfg.metric, "normalization": cfg.normalization,
                  "values": checked, "tau": taus, "frozen": list(self.frozen)}
        if beta:
            record["smoothed"] = {n: self.smoothed.get(n) for n in checked}
        self._emit("convergence", record)

    def _watch_convergence(self, step: int, checked: dict[str, float]) -> None:
        """Per modality, the geometric mean of its active matrices' raw statistics goes to its plateau test;
        a modality counts as converged at the first check at which the test holds. The test sees only checks
        after the grace period, so that a plateau is a whole window of evidence gathered after it: a window that
        reached back into the grace period let a few checks after it decide (on easy-VQA the statistic is flat
        within its noise for the first few hundred steps, and one 2-thread run was called converged 55 steps
        after the grace period and lost 0.43 points). The earliest "converged" is grace + window checks."""
        if step < self.grace:
            return
        logs: dict[str, list[float]] = {}
        for name, v in checked.items():
            if math.isfinite(v) and v > 0:
                logs.setdefault(self.components[self._index[name]].modality, []).append(math.log(v))
        for m, xs in logs.items():
            fired = self.plateaus[m].add(math.exp(sum(xs) / len(xs)))
            if fired and m not in self.converged:
                self._converge(m, step, f"statistic fell {self.plateaus[m].fall:.3f} (log) over "
                                        f"{self.config.converge_window} checks")

    def _converge(self, modality: str, step: int, why: str) -> None:
        was = self.converged_step
        self.converged[modality] = step
        self._emit("events", {"type": "converged", "step": step, "modality": modality, "why": why})
        if was is None and self.converged_step is not None:
            self._emit("events", {"type": "converged", "step": step, "modality": "model",
                                  "why": "every watched modality has converged"})

    def _tau_in_force(self, c: Component) -> float | None:
        t = self.config.tau[c.modality]
        return float(t) if t != "auto" else self.auto_tau.get(c.name)

    def _check_stop(self, step: int) -> None:
        n, k = len(self.components), len(self.frozen)
        if self.stop_reason is None and k / n >= self.config.stop_fraction:
            self.stop_reason = ("all components frozen" if k == n else
                                f"{k}/{n} components frozen (stop fraction {self.config.stop_fraction})")
            self.stop_step = step
            if self.stop_events:
                self._emit("events", {"type": "stop", "step": step, "reason": self.stop_reason})

    # ------------------------------------------------------------------ freezing
    def _release(self, params) -> None:
        opt = unwrap_optimizer(self.optimizer)
        state = getattr(opt, "state", None)
        for p in params:
            p.requires_grad_(False)
            p.grad = None
            if state is not None and p in state:
                del state[p]                        # the optimizer's moments for p are freed

    def _freeze(self, c: Component, step: int, value: float | None, tau: float | None) -> None:
        self._release(p for _, p in c.params)
        self.frozen[c.name] = step
        for d in (self.smoothed, self.below):
            d.pop(c.name, None)
        self._emit("events", {"type": "freeze", "step": step, "component": c.name, "modality": c.modality,
                              "value": value, "tau": tau})

    def _finalize(self, step: int) -> None:
        """A modality whose matrices are all frozen also freezes its norms and embeddings: with nothing
        before it needing gradients, autograd then skips its backward entirely."""
        by_mod = self.registry.by_modality()
        params = None
        for m in self.config.monitored_modalities():
            if m in self.finalized or not by_mod[m]:
                continue
            watched = [c for c in by_mod[m] if c.name in self._index]
            if watched and all(c.name in self.frozen for c in watched):
                params = params or self.registry.modality_parameters(self.model)
                rest = [p for _, p in params[m] if p.requires_grad]
                self._release(rest)
                self.finalized[m] = step
                self._emit("events", {"type": "finalize", "step": step, "modality": m,
                                      "parameters": sum(p.numel() for p in rest)})
                if m not in self.converged and m in self.plateaus:
                    self._converge(m, step, "every matrix frozen")

    def _emit(self, kind: str, record: dict) -> None:
        if self.writer is not None:
            self.writer(kind, record)

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict:
        return {
            "version": STATE_VERSION, "config": self.config.to_dict(), "grace": self.grace,
            "total_steps": self.total_steps, "components": [c.name for c in self.components],
            "frozen": dict(self.frozen), "finalized": dict(self.finalized), "smoothed": dict(self.smoothed),
            "below": dict(self.below), "calibration": {k: list(v) for k, v in self.calibration.items()},
            "auto_tau": dict(self.auto_tau), "nonfinite": dict(self.nonfinite), "snap_step": self._snap_step,
            "checked": self._checked, "stop_reason": self.stop_reason, "stop_step": self.stop_step,
            "bank": self.bank.state_dict(), "converged": dict(self.converged),
            "plateaus": {m: p.state_dict() for m, p in self.plateaus.items()},
        }

    def load_state_dict(self, state: dict) -> None:
        if state.get("version") != STATE_VERSION:
            raise UserError(f"GradES state: version {state.get('version')} is not {STATE_VERSION}")
        unknown = [n for n in state["frozen"] if n not in self._index]
        if unknown or state.get("components", [c.name for c in self.components]) != [c.name for c in self.components]:
            raise UserError(f"GradES state: monitored components differ from this model's "
                            f"(e.g. {(unknown or state.get('components', ['?']))[0]}); was it saved with "
                            f"another model or another tau setting?")
        keys = ("metric", "normalization", "interval") + (("snr_window",) if self.config.metric == "grad_snr" else ())
        for key in keys:
            if state["config"].get(key) != getattr(self.config, key):
                raise UserError(f"GradES state: saved with {key}={state['config'].get(key)!r}, "
                                f"configured {getattr(self.config, key)!r}")
        self.frozen = dict(state["frozen"])
        self.finalized = dict(state["finalized"])
        self.smoothed = dict(state["smoothed"])
        self.below = dict(state["below"])
        self.calibration = {k: deque(v, maxlen=self.config.auto_window) for k, v in state["calibration"].items()}
        self.auto_tau = dict(state["auto_tau"])
        self.nonfinite = dict(state["nonfinite"])
        self._snap_step, self._checked = state["snap_step"], state["checked"]
        self.stop_reason, self.stop_step = state["stop_reason"], state["stop_step"]
        self._pending = None
        self.converged = dict(state.get("converged", {}))        # absent in checkpoints before issue 23
        for m, p in state.get("plateaus", {}).items():
            self.plateaus[m].load_state_dict(p)
        for name in self.frozen:
            self._release(p for _, p in self.components[self._index[name]].params)
        if self.finalized:
            params = self.registry.modality_parameters(self.model)
            for m in self.finalized:
                self._release(p for _, p in params[m])
        self.bank.keep({self._index[c.name] for c in self.active()})
        self.bank.load_state_dict(state["bank"])
