"""Replay the GradES rule on a run's logged statistics: what another setting (rho, smoothing, grace period,
patience, thresholds) would have frozen, when, and where it would have stopped, without training again.

The run's convergence.jsonl holds every check's raw statistic per matrix; the replay feeds them, step by
step, to a GradES engine with the other setting (`GradES.check`), watching a stand-in model of one
meta-device parameter per logged matrix. The decisions are the engine's own, so a replay with the run's own
setting reproduces its freeze steps exactly. With another setting it assumes the statistics the run logged:
freezing earlier or later would have changed what the other matrices saw. A matrix the run froze has no
statistic after that step; if the replay has not frozen it by then, it cannot follow it ("unfollowed").
Most useful on a run that monitors without freezing (thresholds nothing falls below, e.g. `--tau 1e-30`).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from vlm_grades.components import MODALITIES, Component, Registry
from vlm_grades.errors import UserError
from vlm_grades.report.run_data import RunData, num

# settings that change the statistic itself, not the rule applied to it: a replay cannot change them
STATISTIC_KEYS = ("metric", "normalization", "interval")


class _StandIn(nn.Module):
    """One meta-device parameter per logged matrix: what the engine freezes during a replay."""

    def __init__(self, numels: list[int]):
        super().__init__()
        for i, n in enumerate(numels):
            self.register_parameter(f"m{i}", nn.Parameter(torch.empty(max(n, 1), device="meta")))


def _stand_in(data: RunData, watched: set[str]) -> tuple[nn.Module, Registry]:
    model = _StandIn([c.numel for c in data.components])
    comps, param_modality, param_numel = [], {}, {}
    for i, (c, (name, p)) in enumerate(zip(data.components, model.named_parameters())):
        p.requires_grad_(c.name in watched)          # matrices the run did not watch stay unwatched
        comps.append(Component(c.name, c.modality, c.layer, c.kind, model, [("weight", p)]))
        param_modality[name], param_numel[name] = c.modality, p.numel()
    return model, Registry(data.architecture, "replay", comps, param_modality, param_numel, [])


def replay(run: str | Path, overrides: dict[str, Any] | None = None, steps: int | None = None) -> dict[str, Any]:
    """Replays `run`'s logged statistics under its GradES settings updated with `overrides` (GradESConfig
    keys), as a run capped at `steps` (default: the run's --steps) would have seen them. Returns the rule used,
    freeze steps, convergence steps, stop step and the components it could not follow."""
    from vlm_grades.grades import GradES, GradESConfig
    from vlm_grades.grades.config import layer_tau

    data = RunData.load(run)
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    if data.config.get("stopping", "grades") != "grades" or not data.checks:
        raise UserError(f"{data.path}: no GradES statistics to replay (convergence.jsonl is empty; "
                        f"stopping: {data.config.get('stopping', 'grades')})")
    saved = dict(data.config.get("grades") or {})
    for key in STATISTIC_KEYS:
        if key in overrides and overrides[key] != GradESConfig.from_dict(saved).to_dict()[key]:
            raise UserError(f"--{key.replace('_', '-')}: the run logged its statistic with {key}="
                            f"{GradESConfig.from_dict(saved).to_dict()[key]!r}; a replay changes the rule, "
                            f"not the statistic")
    settings = {**saved, **overrides}
    if "tau" in overrides:   # a --tau-<modality> flag changes that modality's threshold only
        settings["tau"] = layer_tau(settings.get("preset") or "default",
                                    *[t for t in (saved.get("tau"), overrides["tau"]) if t is not None])
    config = GradESConfig.from_dict({**settings, "sketch": "off"})   # decisions do not depend on storage
    steps = steps or int(data.config.get("steps") or 0) or None

    watched = {n for chk in data.checks for n in (chk.get("values") or {})} | set(data.freeze_steps)
    model, registry = _stand_in(data, watched)
    engine = GradES(model, registry, config, total_steps=steps)
    for chk in data.checks:
        if steps is not None and int(chk["step"]) > steps:
            break
        engine.check(int(chk["step"]), {name: num(v) for name, v in (chk.get("values") or {}).items()})
        if engine.should_stop:
            break
    monitored = {c.name for c in engine.components}
    unfollowed = {name: step for name, step in data.freeze_steps.items()
                  if name not in engine.frozen and name in monitored}
    by_modality = {m: [c.name for c in engine.components if c.modality == m] for m in MODALITIES}
    return {
        "run": str(data.path), "settings": {k: v for k, v in config.to_dict().items() if k != "sketch"},
        "overrides": overrides, "checks": len(data.checks), "last_check": int(data.checks[-1]["step"]),
        "planned_steps": steps, "grace": engine.grace, "frozen": dict(engine.frozen),
        "finalized": dict(engine.finalized), "converged": dict(engine.converged),
        "converged_step": engine.converged_step, "cooldown_end": _cooldown_end(data.config, engine.converged_step),
        "stop_step": engine.stop_step, "stop_reason": engine.stop_reason,
        "unfollowed": unfollowed, "monitored": by_modality,
        "run_frozen": dict(data.freeze_steps),
        "run_stop": (data.last_event("stop") or {}).get("step"),
    }


def _cooldown_end(config: dict[str, Any], converged: int | None) -> int | None:
    """Under --schedule wsd (without --decay-at): where the cooldown that convergence starts would end."""
    from vlm_grades.training.schedule import cooldown_steps

    if config.get("schedule") != "wsd" or config.get("decay_at") is not None or converged is None:
        return None
    # config.yaml has no cooldown only in runs from before it became a setting, which ran with 0.2
    return converged + cooldown_steps(converged, float(config.get("cooldown", 0.2)))


def replay_table(result: dict[str, Any]) -> str:
    """Per modality: matrices frozen and the first / last freeze step, the replay beside the run."""
    def span(frozen: dict[str, int], names: list[str]) -> str:
        steps = [frozen[n] for n in names if n in frozen]
        first_last = f"{min(steps)}-{max(steps)}" if steps else "-"
        return f"{len(steps)}/{len(names)} {first_last}"

    overrides = ", ".join(f"{k}={v}" for k, v in result["overrides"].items()) or "the run's own settings"
    lines = [f"replay of {result['run']} ({result['checks']} checks to step {result['last_check']}, grace period "
             f"{result['grace']} steps) with {overrides}",
             f"{'modality':<10} {'replay: frozen, steps':<24} run: frozen, steps"]
    for m, names in result["monitored"].items():
        if names:
            lines.append(f"{m:<10} {span(result['frozen'], names):<24} {span(result['run_frozen'], names)}")
    stop = (f"step {result['stop_step']} ({result['stop_reason']})" if result["stop_step"] is not None
            else "does not stop within the logged checks")
    run_stop = (f"the run stopped at step {result['run_stop']}" if result["run_stop"] is not None
                else f"the run has not stopped (log ends at step {result['last_check']})")
    conv = result.get("converged") or {}
    if conv:
        model = (f"model at step {result['converged_step']}" if result.get("converged_step") is not None
                 else "not the whole model")
        lines.append("converged: " + ", ".join(f"{m} at step {s}" for m, s in conv.items()) + f"; {model}")
        if result.get("cooldown_end") is not None:
            lines.append(f"--schedule wsd: the cooldown would start after step {result['converged_step']} and the "
                         f"run end at step {result['cooldown_end']} (if nothing stopped it earlier)")
    else:
        lines.append("converged: nothing within the logged checks")
    lines.append(f"stop: {stop}; {run_stop}")
    if result["unfollowed"]:
        lines.append(f"unfollowed: {len(result['unfollowed'])} matrices the run froze before this rule would "
                     f"have (no statistic after their freeze step); replay a run that froze nothing to see them")
    return "\n".join(lines)
