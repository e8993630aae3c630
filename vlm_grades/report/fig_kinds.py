"""Figure: statistic levels by component kind (attention vs MLP vs projector) per modality:
median curves over steps (left) and the distribution of each component's median level (right)."""
from __future__ import annotations

import math
import statistics

import matplotlib.pyplot as plt

from vlm_grades.report.run_data import RunData
from vlm_grades.report.style import KIND_GROUPS, RC, color, empty_figure, kind_group, to_png

LINESTYLE = {"attention": "--", "MLP": "-", "projector": "-", "other": ":"}


def _label(modality: str, group: str, sep: str = " ") -> str:
    return modality if group == modality else f"{modality}{sep}{group}"


def groups(run: RunData) -> dict[tuple[str, str], list[str]]:
    out: dict[tuple[str, str], list[str]] = {}
    for m in run.modalities:
        for g in KIND_GROUPS:
            names = [c.name for c in run.components_of(m) if kind_group(m, c.kind) == g]
            if names:
                out[(m, g)] = names
    return out


def render(run: RunData) -> bytes:
    title = f"Statistic by component kind: {run.name}"
    grp = groups(run)
    curves, boxes = {}, {}
    for key, names in grp.items():
        by_step: dict[int, list[float]] = {}
        levels = []
        for n in names:
            steps, values = run.series(n)
            good = [(s, v) for s, v in zip(steps, values) if math.isfinite(v) and v > 0]
            for s, v in good:
                by_step.setdefault(s, []).append(v)
            if good:
                levels.append(statistics.median(v for _, v in good))
        if by_step:
            curves[key] = sorted((s, statistics.median(v)) for s, v in by_step.items())
            boxes[key] = levels
    if not curves:
        return empty_figure(title, "no convergence checks logged yet")
    with plt.rc_context(RC):
        fig, (a_cur, a_box) = plt.subplots(1, 2, figsize=(12, 4.6), sharey=True,
                                         gridspec_kw={"width_ratios": [1.5, 1]}, layout="constrained")
        for (m, g), pts in curves.items():
            a_cur.plot([s for s, _ in pts], [v for _, v in pts], color=color(m), ls=LINESTYLE[g], lw=2,
                       label=f"{_label(m, g)} ({len(grp[(m, g)])})")
        a_cur.set_yscale("log")
        a_cur.set_xlabel("optimizer step")
        a_cur.set_ylabel(f"median {run.metric_name or 'statistic'}")
        a_cur.set_title("Median over the components still monitored", loc="left")
        fig.legend(handles=a_cur.get_lines(), loc="outside lower center", ncol=min(len(curves), 5), frameon=False)
        keys = list(boxes)
        bp = a_box.boxplot([boxes[k] for k in keys], patch_artist=True, widths=0.6)
        for patch, (m, g) in zip(bp["boxes"], keys):
            patch.set_facecolor(color(m))
            patch.set_alpha(0.35 if g == "attention" else 0.75)
        for med in bp["medians"]:
            med.set_color("black")
        a_box.set_xticks(range(1, len(keys) + 1), [_label(m, g, "\n") for m, g in keys], fontsize=9)
        a_box.set_ylabel("median level of each component")
        a_box.yaxis.set_tick_params(labelleft=True)
        a_box.set_title("Distribution across components", loc="left")
        fig.suptitle(title, fontsize=13)
        return to_png(fig)
