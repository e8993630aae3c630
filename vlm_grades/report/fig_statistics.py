"""Figure: the GradES statistic of every component over steps, one panel per modality, log scale. The main
lines are what the rule compared with tau (the smoothed statistic when smoothing is on), the raw per-check
statistic faint behind them; the legend sits beside the panel, never over the curves."""
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
    fig = figure(run)
    return fig if isinstance(fig, bytes) else to_png(fig)


def figure(run: RunData):
    """The matplotlib figure (bytes of a placeholder PNG when nothing was logged)."""
    title = f"GradES statistic per component: {run.name}"
    mods = [m for m in run.modalities if any(run.series(c.name)[0] for c in run.components_of(m))]
    if not mods:
        return empty_figure(title, "no convergence checks logged yet")
    metric = run.metric_name or "statistic"
    beta = run.smoothing
    with plt.rc_context(RC):
        fig, axes = plt.subplots(len(mods), 1, figsize=(11.5, 2.9 * len(mods) + 0.6), sharex=True, squeeze=False)
        for ax, m in zip(axes[:, 0], mods):
            comps = run.components_of(m)
            layers = sorted({c.layer for c in comps})
            n_layers = max(layers) + 1
            taus = set()
            fx, fy = [], []
            for c in comps:
                pts = _positive(*run.compared_series(c.name))
                if not pts:
                    continue
                if beta is not None:   # the raw statistic, faint behind what the rule compared
                    raw = _positive(*run.series(c.name))
                    ax.plot([p[0] for p in raw], [p[1] for p in raw], color=shade(m, c.layer, n_layers),
                            lw=0.6, alpha=0.22, zorder=1)
                ax.plot([p[0] for p in pts], [p[1] for p in pts], color=shade(m, c.layer, n_layers),
                        lw=1.1, alpha=0.9, zorder=2)
                tau = run.tau_of(c.name)
                if math.isfinite(tau) and tau > 0:
                    taus.add(round(tau, 12))
                f = run.freeze_steps.get(c.name)
                if f is not None:
                    at = [v for s, v in pts if s <= f]
                    fx.append(f)
                    fy.append(at[-1] if at else pts[-1][1])
            handles = _layer_legend(m, layers)
            if beta is not None:
                handles.append(Line2D([], [], color=shade(m, 0, 1), lw=0.6, alpha=0.3, label="raw, per check"))
            if len(comps) > 1:
                by_step: dict[int, list[float]] = {}
                for c in comps:
                    for s, v in _positive(*run.compared_series(c.name)):
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
            ax.set_ylabel(f"{metric}\nsmoothed, β = {beta:g}" if beta is not None else metric)
            plural = "s" if len(comps) != 1 else ""
            ax.set_title(f"{m} ({len(comps)} component{plural})", color=color(m), loc="left", fontweight="bold")
            ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0,
                      framealpha=0.9, fontsize="small")
        axes[-1, 0].set_xlabel("optimizer step")
        what = "the smoothed statistic the rule compared with τ (raw faint)" if beta is not None else \
            "the statistic the rule compared with τ"
        fig.suptitle(f"{title}\n{what}", fontsize=12)
        fig.tight_layout()
        return fig


def _positive(steps: list[int], values: list[float]) -> list[tuple[int, float]]:
    return [(s, v) for s, v in zip(steps, values) if math.isfinite(v) and v > 0]
