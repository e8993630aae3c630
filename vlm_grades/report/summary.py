"""The report's numbers: per-modality summary, per-component detail and run facts (report.json)."""
from __future__ import annotations

import math
from typing import Any

from vlm_grades.report import flops
from vlm_grades.report.run_data import RunData, median


def _step(value: float) -> int | None:
    return None if not math.isfinite(value) else int(round(value))


def _float(value: float) -> float | None:
    return value if math.isfinite(value) else None


def components(run: RunData) -> list[dict]:
    rows = []
    for c in run.components:
        start, end = run.levels(c.name)
        rows.append({"name": c.name, "modality": c.modality, "layer": c.layer, "kind": c.kind, "numel": c.numel,
                     "freeze_step": run.freeze_steps.get(c.name), "tau": _float(run.tau_of(c.name)),
                     "statistic_start": _float(start), "statistic_end": _float(end)})
    return rows


def modalities(run: RunData, flop: dict) -> dict[str, dict]:
    out = {}
    for m in run.modalities:
        comps = run.components_of(m)
        steps = sorted(run.freeze_steps[c.name] for c in comps if c.name in run.freeze_steps)
        frozen_numel = sum(c.numel for c in comps if c.name in run.freeze_steps)
        monitored = sum(c.numel for c in comps)
        levels = [run.levels(c.name) for c in comps]
        fm = flop["modalities"].get(m, {})
        out[m] = {
            "components": len(comps),
            "parameters": run.modality_parameters(m),
            "monitored_parameters": monitored,
            "frozen": len(steps),
            "frozen_fraction": len(steps) / len(comps) if comps else None,
            "frozen_parameter_fraction": frozen_numel / monitored if monitored else None,
            "first_freeze_step": steps[0] if steps else None,
            "median_freeze_step": _step(median([float(s) for s in steps])),
            "last_freeze_step": steps[-1] if steps else None,
            "finalize_step": run.finalize_steps.get(m),
            "tau_median": _float(median([run.tau_of(c.name) for c in comps])),
            "statistic_start": _float(median([a for a, _ in levels])),
            "statistic_end": _float(median([b for _, b in levels])),
            "flops_baseline": fm.get("baseline"),
            "flops_saved": fm.get("saved"),
            "flops_saved_fraction": fm.get("saved_fraction"),
            "flops_saved_planned": fm.get("saved_planned"),
            "flops_saved_planned_fraction": fm.get("saved_planned_fraction"),
        }
    return out


def run_facts(run: RunData) -> dict[str, Any]:
    last_loss = next((m["loss"] for m in reversed(run.metrics) if "loss" in m), None)
    return {
        "name": run.name, "path": str(run.path), "architecture": run.architecture,
        "metric": run.metric_name, "status": "finished" if run.ended else "running or interrupted",
        "steps_run": run.last_step, "planned_steps": run.total_steps, "stop_reason": run.stop_reason,
        "wall_time": run.wall_time, "final_loss": last_loss,
        "resumed": sum(1 for e in run.events if e["type"] == "start" and e.get("resumed_from") is not None),
        "evals": [{k: e.get(k) for k in ("step", "task", "split", "score")} for e in run.evals],
        "stops": [{k: e.get(k) for k in ("step", "reason")} for e in run.events if e["type"] == "stop"],
    }


def build(run: RunData) -> dict:
    """Everything report.json holds."""
    flop = flops.estimate(run)
    return {"run": run_facts(run), "modalities": modalities(run, flop), "flops": flop,
            "components": components(run)}
