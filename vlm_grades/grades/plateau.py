"""Has a noisy series stopped falling? The convergence test behind GradES's "converged" signal.

`Plateau` fits a straight line to the last `window` values of log(x) (least squares) and calls the series
converged once the line's fall over the whole window is less than `tolerance` (in log units: 0.1 is a fall
of about 10% per window) on `patience` consecutive checks. It compares the series with its own recent
history only, so it needs no threshold in the statistic's units, no grace-period level and no planned
length: a series that keeps falling slowly (by more than `tolerance` per window) never converges, a flat
one converges once a window of it has been seen, whatever its noise. Noise only blurs the fitted fall
(its standard error over W points is about sd * sqrt(12 / W)), which is why the window is long and the
input is pooled (the mean over a modality's matrices of log statistic).
"""
from __future__ import annotations

import math
from collections import deque


class Plateau:
    def __init__(self, window: int, tolerance: float, patience: int = 1):
        self.window, self.tolerance, self.patience = int(window), float(tolerance), int(patience)
        self.values: deque[float] = deque(maxlen=self.window)
        self.hits = 0
        self.fall: float | None = None          # the fitted fall over the window at the last check (log units)

    def add(self, value: float) -> bool:
        """One check's value (> 0); True when the series counts as converged at this check."""
        if not (math.isfinite(value) and value > 0):
            return False                           # non-finite or zero values are not evidence either way
        self.values.append(math.log(value))
        if len(self.values) < self.window:
            return False
        self.fall = -slope(self.values) * (self.window - 1)
        self.hits = self.hits + 1 if self.fall < self.tolerance else 0
        return self.hits >= self.patience

    def state_dict(self) -> dict:
        return {"values": list(self.values), "hits": self.hits, "fall": self.fall}

    def load_state_dict(self, state: dict) -> None:
        self.values = deque(state["values"], maxlen=self.window)
        self.hits, self.fall = state["hits"], state["fall"]


def slope(ys) -> float:
    """Least-squares slope of ys against 0..n-1."""
    n = len(ys)
    mx = (n - 1) / 2
    my = sum(ys) / n
    sxx = n * (n * n - 1) / 12
    return sum((i - mx) * (y - my) for i, y in enumerate(ys)) / sxx
