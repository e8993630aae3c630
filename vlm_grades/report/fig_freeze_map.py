"""Figure: the freeze map, one panel per modality, rows = layers, columns = component kinds,
colour = freeze step; never-frozen components hatched grey (like the paper's architecture figure)."""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.colors import Normalize
from matplotlib.patches import Patch, Rectangle

from vlm_grades.report.run_data import RunData
from vlm_grades.report.style import RC, color, empty_figure, to_png

NEVER = "#c8c8c8"


def render(run: RunData) -> bytes:
    title = f"Freeze map: {run.name}"
    mods = [m for m in run.modalities if run.components_of(m)]
    if not mods:
        return empty_figure(title, "no components")
    steps = list(run.freeze_steps.values())
    norm = Normalize(vmin=min(steps) if steps else 0, vmax=max(max(steps) if steps else 1, run.last_step, 1))
    cmap = plt.get_cmap("viridis")
    grids = {}
    for m in mods:
        comps = run.components_of(m)
        kinds = list(dict.fromkeys(c.kind for c in comps))
        layers = sorted({c.layer for c in comps})
        grid = np.full((len(layers), len(kinds)), np.nan)
        present = np.zeros_like(grid, dtype=bool)
        for c in comps:
            i, j = layers.index(c.layer), kinds.index(c.kind)
            present[i, j] = True
            f = run.freeze_steps.get(c.name)
            if f is not None:
                grid[i, j] = f
        grids[m] = (kinds, layers, grid, present)
    max_rows = max(len(g[1]) for g in grids.values())
    with plt.rc_context(RC):
        widths = [max(len(grids[m][0]), 1.6) for m in mods]
        fig, axes = plt.subplots(1, len(mods), figsize=(1.2 + 0.85 * sum(widths) + 1.2, max(3.4, 0.3 * max_rows + 2.2)),
                                 gridspec_kw={"width_ratios": widths}, squeeze=False, layout="constrained")
        for ax, m in zip(axes[0], mods):
            kinds, layers, grid, present = grids[m]
            ax.grid(False)
            ax.imshow(np.ma.masked_invalid(grid), cmap=cmap, norm=norm, origin="lower", aspect="auto",
                      interpolation="nearest")
            annotate = grid.size <= 160
            for i in range(len(layers)):
                for j in range(len(kinds)):
                    if not present[i, j]:
                        continue
                    if np.isnan(grid[i, j]):
                        ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, facecolor=NEVER, edgecolor="#777777",
                                               hatch="///", lw=0.0))
                    elif annotate:
                        rgb = cmap(norm(grid[i, j]))[:3]
                        light = 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2] > 0.5
                        ax.text(j, i, f"{int(grid[i, j])}", ha="center", va="center", fontsize=8,
                                color="black" if light else "white")
            ax.set_xlim(-0.5, len(kinds) - 0.5)
            ax.set_ylim(-0.5, len(layers) - 0.5)
            ax.set_xticks(range(len(kinds)), kinds, rotation=45, ha="right")
            step = max(1, len(layers) // 12)
            ax.set_yticks(range(0, len(layers), step), [str(layers[k]) for k in range(0, len(layers), step)])
            ax.set_xticks(np.arange(len(kinds) + 1) - 0.5, minor=True)
            ax.set_yticks(np.arange(len(layers) + 1) - 0.5, minor=True)
            ax.grid(which="minor", color="white", lw=1.0)
            ax.tick_params(which="minor", length=0)
            frozen = int(np.sum(~np.isnan(grid)))
            fin = run.finalize_steps.get(m)
            sub = f"{frozen}/{int(present.sum())} frozen" + (f", finalized at {fin}" if fin is not None else "")
            ax.set_title(f"{m}\n{sub}", color=color(m), fontweight="bold", fontsize=11)
            ax.set_ylabel("layer" if m != "projector" else "")
            for side in ("top", "right"):
                ax.spines[side].set_visible(True)
        sm = plt.cm.ScalarMappable(norm=norm, cmap=cmap)
        cbar = fig.colorbar(sm, ax=axes[0].tolist(), fraction=0.04, pad=0.01, aspect=30)
        cbar.set_label("freeze step")
        fig.legend(handles=[Patch(facecolor=NEVER, edgecolor="#777777", hatch="///", label="never frozen")],
                   loc="outside lower right", framealpha=0.9)
        state = "run ended at" if run.ended else "run in progress or interrupted, at"
        fig.suptitle(f"{title} ({state} step {run.last_step})", fontsize=13)
        return to_png(fig)
