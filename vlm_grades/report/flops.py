"""Training FLOPs saved by freezing, against the same run without freezing.

The model (also printed in every report, see FLOP_MODEL):
- a matrix with n parameters processing r rows per step costs 2nr forward, 2nr input-gradient and 2nr
  weight-gradient FLOPs, plus ~10n for its AdamW update;
- a modality's baseline cost per step is 6 P r + 10 P, with P all of its parameters (norms and embeddings
  counted like matrices) and r its rows that step (metrics.jsonl `tokens`);
- a matrix frozen at step f saves 2nr + 10n on every later step (f+1 on);
- a modality finalized at step g skips its weight gradients and update, 2 P r + 10 P, on every later step,
  and its input gradients too, 4 P r + 10 P, on the steps when no modality upstream of it (vision before
  projector before language) still trains: autograd must carry gradients through a frozen language model to
  a vision tower that trains. This replaces (never adds to) the savings of its frozen matrices; a modality
  frozen for the whole run (config `freeze`) or without monitored matrices (LoRA without adapters on it)
  does not train; while none upstream trains, the projector's first matrix, which takes the vision
  features, skips its input gradient (2nr), frozen or not;
- an image whose projector output came from the feature cache skips the vision and projector forward, 2Pr
  for the rows it would have cost (metrics.jsonl `cached_rows`);
- a run that stopped before its planned steps (`total_steps` of the start event) also saves the baseline
  cost of the steps it never ran, at the mean rows per step it did run.
Steps without a metrics line take the rows of the next logged step (the line stands for the steps since the
previous one), or of the last one.
"""
from __future__ import annotations

import numpy as np

from vlm_grades.report.run_data import MODALITIES, RunData, num

FWD, BWD_INPUT, BWD_WEIGHT, OPTIMIZER = 2, 2, 2, 10

FLOP_MODEL = (
    "FLOP model: a matrix of n parameters processing r rows costs 2nr forward + 2nr input-gradient + "
    "2nr weight-gradient FLOPs per step, plus ~10n for its AdamW update; the baseline (no freezing) costs "
    "6Pr + 10P per step for a modality of P parameters (every parameter counted as a matrix) and r rows "
    "(metrics.jsonl tokens). A matrix frozen at step f saves 2nr + 10n from step f+1; a modality finalized "
    "at step g saves its weight gradients and update, 2Pr + 10P, from step g+1, and its input gradients too "
    "(4Pr + 10P) on the steps when no modality upstream of it (vision, then projector, then language) still "
    "trains, since autograd must carry gradients through it to them (each matrix counted once); likewise "
    "the projector's first matrix skips its input gradient, 2nr, while nothing upstream of it trains. "
    "Images whose features came from the frozen-tower feature cache save the forward too, 2Pr for their rows "
    "(metrics.jsonl cached_rows). "
    "'vs. planned' adds the baseline cost of the planned steps (start event total_steps) never run, at the "
    "mean rows per step of the steps run."
)


def rows_per_step(run: RunData, modality: str, last_step: int, field: str = "tokens") -> np.ndarray:
    """rows[s-1] = rows processed by `modality` at optimizer step s, for s = 1..last_step (field "cached_rows":
    the rows the feature cache spared it)."""
    rows = np.zeros(last_step, dtype=np.float64)
    logged = [(int(m["step"]), num((m.get(field) or {}).get(modality, 0))) for m in run.metrics
              if 1 <= int(m["step"]) <= last_step]
    logged = [(s, r if np.isfinite(r) else 0.0) for s, r in logged]
    prev = 0
    for step, r in logged:
        rows[prev:step] = r
        prev = step
    if logged and prev < last_step:
        rows[prev:] = logged[-1][1]
    return rows


def finalized_saving(parameters: int, rows, upstream_trains):
    """What a step of a finalized modality no longer costs: its weight gradients and update, and its input
    gradients unless a modality upstream of it still trains (elementwise over steps for arrays)."""
    return (BWD_WEIGHT + BWD_INPUT * (1 - np.asarray(upstream_trains, dtype=np.float64))) * parameters * rows \
        + OPTIMIZER * parameters


def upstream_trains(run: RunData, modality: str, last_step: int) -> np.ndarray:
    """trains[s-1]: whether a modality before `modality` (vision, projector, language) trains at step s."""
    trains = np.zeros(last_step, dtype=bool)
    if modality not in MODALITIES:
        return trains
    frozen = set(run.config.get("freeze") or [])
    for m in MODALITIES[:MODALITIES.index(modality)]:
        if m in frozen or not run.components_of(m):
            continue
        fin = run.finalize_steps.get(m)
        trains[:last_step if fin is None else min(max(fin, 0), last_step)] = True
    return trains


def estimate(run: RunData) -> dict:
    last = run.last_step
    planned = run.total_steps
    finished = run.ended or run.last_event("stop") is not None
    remaining = max(planned - last, 0) if (planned and finished) else None  # unknown while running
    out: dict = {"model": FLOP_MODEL, "steps_run": last, "planned_steps": planned,
                 "remaining_steps": remaining, "modalities": {}}
    tot = {"baseline": 0.0, "saved": 0.0, "baseline_planned": 0.0, "saved_planned": 0.0}
    for modality in run.modalities:
        P = run.modality_parameters(modality)
        rows = rows_per_step(run, modality, last)
        baseline_step = (FWD + BWD_INPUT + BWD_WEIGHT) * P * rows + OPTIMIZER * P
        fin = run.finalize_steps.get(modality)
        end = min(fin, last) if fin is not None else last  # matrix savings stop where finalization takes over
        saved = 0.0
        for c in run.components_of(modality):
            f = run.freeze_steps.get(c.name)
            if f is None or f >= end:
                continue
            saved += float((BWD_WEIGHT * c.numel * rows[f:end] + OPTIMIZER * c.numel).sum())
        first = run.components_of(modality)[:1]
        if modality == "projector" and first:
            # its first matrix takes the vision features: no input gradient while no modality upstream trains
            # (the language model's input also holds its own token embeddings, which train with it)
            idle = ~upstream_trains(run, modality, last)[:end]
            saved += float((BWD_INPUT * first[0].numel * rows[:end] * idle).sum())
        if fin is not None and fin < last:
            after = slice(max(fin, 0), last)   # finalized at g: saves from step g+1
            saved += float(finalized_saving(P, rows[after], upstream_trains(run, modality, last)[after]).sum())
        saved += float((FWD * P * rows_per_step(run, modality, last, "cached_rows")).sum())
        baseline = float(baseline_step.sum())
        entry = {"parameters": P, "rows": float(rows.sum()), "baseline": baseline, "saved": saved,
                 "actual": baseline - saved, "saved_fraction": saved / baseline if baseline else None}
        if remaining is not None:
            mean_step = baseline / last if last else 0.0
            entry["baseline_planned"] = baseline + remaining * mean_step
            entry["saved_planned"] = saved + remaining * mean_step
            entry["saved_planned_fraction"] = (entry["saved_planned"] / entry["baseline_planned"]
                                               if entry["baseline_planned"] else None)
            tot["baseline_planned"] += entry["baseline_planned"]
            tot["saved_planned"] += entry["saved_planned"]
        else:
            entry.update(baseline_planned=None, saved_planned=None, saved_planned_fraction=None)
        tot["baseline"] += baseline
        tot["saved"] += saved
        out["modalities"][modality] = entry
    total = {"baseline": tot["baseline"], "saved": tot["saved"], "actual": tot["baseline"] - tot["saved"],
             "saved_fraction": tot["saved"] / tot["baseline"] if tot["baseline"] else None}
    if remaining is not None:
        total.update(baseline_planned=tot["baseline_planned"], saved_planned=tot["saved_planned"],
                     saved_planned_fraction=(tot["saved_planned"] / tot["baseline_planned"]
                                             if tot["baseline_planned"] else None))
    else:
        total.update(baseline_planned=None, saved_planned=None, saved_planned_fraction=None)
    out["total"] = total
    return out
