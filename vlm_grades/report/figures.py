"""All report figures, rendered to PNG bytes keyed by file name."""
from __future__ import annotations

from vlm_grades.report import fig_freeze_map, fig_kinds, fig_progress, fig_statistics
from vlm_grades.report.run_data import RunData

FIGURES = {
    "statistics.png": ("GradES statistic per component (as compared with τ)", fig_statistics.render),
    "freeze_map.png": ("Freeze map", fig_freeze_map.render),
    "progress.png": ("Frozen fraction, loss and learning rate", fig_progress.render),
    "kinds.png": ("Statistic by component kind", fig_kinds.render),
}


def render_all(run: RunData) -> dict[str, bytes]:
    return {name: render(run) for name, (_, render) in FIGURES.items()}
