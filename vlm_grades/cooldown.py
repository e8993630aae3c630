"""Under --schedule wsd, what ends the run: the stopping policy's "converged" starts the cooldown, the end of
the cooldown stops the run.

`Cooldown` wraps any stopping policy (GradES, classic, none). After each step it asks, in this order: did the
policy stop the run (GradES: every matrix frozen)? Has the cooldown begun? If not: has GradES judged the model
converged (its engine's `converged_step`), or has the cap come so close that a cooldown starting now just ends
at --steps? Then it starts the decay. Has the cooldown ended? Then the run stops. The decay start lives in the
schedule (WSDFactor), which checkpoints carry; this object has no state of its own.
"""
from __future__ import annotations

from typing import Any, Callable


class Cooldown:
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
                self._start(step, f"cap: a cooldown starting later would not end by --steps {f.cap}")
        if f.end is not None and step >= f.end:
            return f"cooldown done ({f.end - f.decay_start} steps after step {f.decay_start}: {f.decay_reason})"
        return None

    def _start(self, step: int, reason: str) -> None:
        if self.factor.start_decay(step, reason) and self.emit is not None:
            self.emit("events", {"type": "decay", "step": step, "until": self.factor.end, "reason": reason})

    # everything else is the wrapped policy's
    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)
