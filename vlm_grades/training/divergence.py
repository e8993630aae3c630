"""A diverged run: non-finite training loss or weights. Its weights are never checkpointed or saved; its result
is the newest checkpoint whose weights are all finite, or no model at all."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from vlm_grades.training.checkpoint import complete_checkpoints, load_checkpoint
from vlm_grades.training.run_folder import RunFolder


def nonfinite_parameter(module: torch.nn.Module) -> str | None:
    """The name of the first parameter holding NaN or Inf; None when all are finite (one device sync)."""
    named = [(n, p) for n, p in module.named_parameters() if p.is_floating_point()]
    if not named:
        return None
    finite = torch.stack([torch.isfinite(p).all() for _, p in named])
    if bool(finite.all()):
        return None
    return named[int((~finite).nonzero()[0, 0])][0]


def _all_finite(weights: dict[str, torch.Tensor]) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in weights.values() if t.is_floating_point())


def restore_last_finite(module: torch.nn.Module, checkpoints: Path) -> Path | None:
    """Loads into `module` the weights of the newest checkpoint whose weights are finite (classic stopping: the
    best weights it kept, which a finished run would have saved); None when no checkpoint qualifies."""
    for path in complete_checkpoints(checkpoints):
        parts, _ = load_checkpoint(path, names=("model", "classic_best"))
        weights = parts.get("classic_best") or parts["model"]
        if _all_finite(weights):
            module.load_state_dict(weights)
            return path
    return None


def keep_last_finite(run: RunFolder, adapter, step: int, reason: str) -> dict[str, Any]:
    """Saves final/ from the last finite checkpoint (if any), logs a `diverged` event; returns the summary's
    `diverged` (one line for the user) and `result` (the checkpoint final/ holds, or None)."""
    return report_diverged(run, adapter, step, reason, restore_last_finite(adapter.model, run.checkpoints))


def report_diverged(run: RunFolder, adapter, step: int, reason: str, checkpoint: Path | None) -> dict[str, Any]:
    """The adapter already holds the weights of `checkpoint` (None: no finite checkpoint): saves and logs."""
    result = str(checkpoint.relative_to(run.path)) if checkpoint is not None else None
    if checkpoint is not None:
        adapter.save(run.final)
    run.append("events", {"type": "diverged", "step": step, "reason": reason, "result": result})
    kept = f"final/ holds {result}, the last finite checkpoint (not evaluated)" if result else \
        "no checkpoint was written before it, so no model is saved"
    return {"diverged": f"run diverged: {reason}; {kept}", "result": result}
