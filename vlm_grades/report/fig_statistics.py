"""Figure: the GradES statistic of every component over steps, one panel per modality, log scale."""
from __future__ import annotations

import math
import statistics

import matplotlib.pyplot as plt
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from vlm_grades.report.run_data import RunData
from vlm_grades.report.style import RC, color, empty_figure, shade, to_png


def _layer_legend(modality: str, layers: list[int]) -> list[Line2D]:
    if len(layers) <= 1:
        return [Line2D([], [], color=shade(modality, 0, 1), lw=1.5, label="component")]
    picks = layers if len(layers) <= 5 else [layers[0], layers[len(layers) // 2], layers[-1]]
    n = max(layers) + 1
    return [Line2D([], [], color=shade(modality, layer, n), lw=1.5, label=f"layer {layer}") for layer in picks]


def render(run: RunData) -> bytes:
    title = f"GradES statistic per component: {run.name}"
    mods = [m for m in run.modalities if any(run.series(c.name)[0] for c in run.components_of(m))]
    if not mods:
        return empty_figure(title, "no convergence checks logged yet")
    metric = run.metric_name or "statistic"
    with plt.rc_context(RC):
        fig, axes = plt.subplots(len(mods), 1, figsize=(9, 2.9 * len(mods) + 0.6), sharex=True, squeeze=False)
        for ax, m in zip(axes[:, 0], mods):
            comps = run.components_of(m)
            layers = sorted({c.layer for c in comps})
            n_layers = max(layers) + 1
            taus = set()
            fx, fy = [], []
            for c in comps:
                steps, values = run.series(c.name)
                pts = [(s, v) for s, v in zip(steps, values) if math.isfinite(v) and v > 0]
                if not pts:
                    continue
                ax.plot([p[0] for p in pts], [p[1] for p in pts], color=shade(m, c.layer, n_layers),
                        lw=0.9, alpha=0.8)
                tau = run.tau_of(c.name)
                if math.isfinite(tau) and tau > 0:
                    taus.add(round(tau, 12))
                f = run.freeze_steps.get(c.name)
                if f is not None:
                    at = [v for s, v in pts if s <= f]
                    fx.append(f)
                    fy.append(at[-1] if at else pts[-1][1])
            handles = _layer_legend(m, layers)
            if len(comps) > 1:
                by_step: dict[int, list[float]] = {}
                for c in comps:
                    for s, v in zip(*run.series(c.name)):
                        if math.isfinite(v) and v > 0:
                            by_step.setdefault(s, []).append(v)
                xs = sorted(by_step)
                ax.plot(xs, [statistics.median(by_step[x]) for x in xs], color="black", lw=2.0, zorder=3)
                handles.append(Line2D([], [], color="black", lw=2.0, label="median of monitored"))
            if run.grace_end:
                ax.axvspan(0, run.grace_end, color="#e8e8e8", zorder=0)
                handles.append(Patch(color="#e8e8e8", label="grace period"))
            if taus:
                ordered = sorted(taus)
                if len(ordered) <= 3:
                    for t in ordered:
                        ax.axhline(t, color="crimson", ls="--", lw=1.4, zorder=3)
                    label = "τ = " + ", ".join(f"{t:.3g}" for t in ordered)
                else:  # per-component thresholds (auto-calibrated): their range and median
                    ax.axhspan(ordered[0], ordered[-1], color="crimson", alpha=0.08, zorder=0)
                    ax.axhline(statistics.median(ordered), color="crimson", ls="--", lw=1.4, zorder=3)
                    handles.append(Patch(color="crimson", alpha=0.15, label="τ range over components"))
                    label = f"τ median ({statistics.median(ordered):.3g})"
                handles.append(Line2D([], [], color="crimson", ls="--", lw=1.4, label=label))
            if fx:
                ax.scatter(fx, fy, marker="X", s=46, color=color(m), edgecolors="black", linewidths=0.7, zorder=4)
                handles.append(Line2D([], [], marker="X", ls="", color=color(m), markeredgecolor="black",
                                      markersize=7, label=f"frozen ({len(fx)}/{len(comps)})"))
            fin = run.finalize_steps.get(m)
            if fin is not None:
                ax.axvline(fin, color=color(m), ls=":", lw=1.5)
                handles.append(Line2D([], [], color=color(m), ls=":", lw=1.5, label=f"finalized (step {fin})"))
            ax.set_yscale("log")
            ax.set_ylabel(metric)
            plural = "s" if len(comps) != 1 else ""
            ax.set_title(f"{m} ({len(comps)} component{plural})", color=color(m), loc="left", fontweight="bold")
            ax.legend(handles=handles, loc="upper right", framealpha=0.9, ncol=2 if len(handles) > 4 else 1)
        axes[-1, 0].set_xlabel("optimizer step")
        fig.suptitle(title, fontsize=13)
        fig.tight_layout()
        return to_png(fig)
