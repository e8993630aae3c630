"""Figure: frozen fraction per modality over steps, with the training loss and the learning rates."""
from __future__ import annotations

import math

import matplotlib.pyplot as plt

from vlm_grades.report.run_data import RunData, num
from vlm_grades.report.style import RC, color, empty_figure, line, to_png


def frozen_fraction(run: RunData, modality: str) -> tuple[list[int], list[float]]:
    """From metrics.jsonl `frozen`; from the freeze events when the metrics lack it."""
    logged = [(int(m["step"]), num((m.get("frozen") or {}).get(modality))) for m in run.metrics]
    logged = [(s, f) for s, f in logged if math.isfinite(f)]
    if logged:
        return [s for s, _ in logged], [f for _, f in logged]
    comps = run.components_of(modality)
    steps = sorted({0, run.last_step, *run.freeze_steps.values()})
    return steps, [sum(1 for c in comps if run.freeze_steps.get(c.name, math.inf) <= s) / max(len(comps), 1)
                   for s in steps]


def render(run: RunData) -> bytes:
    title = f"Training progress: {run.name}"
    if not run.metrics and not run.freeze_steps:
        return empty_figure(title, "no metrics logged yet")
    with plt.rc_context(RC):
        fig, (a_frz, a_loss, a_lr) = plt.subplots(3, 1, figsize=(9, 8.2), sharex=True,
                                                  gridspec_kw={"height_ratios": [1.2, 1, 0.8]})
        for m in run.modalities:
            steps, frac = frozen_fraction(run, m)
            if steps:
                a_frz.step(steps, [100 * f for f in frac], where="post", label=m, **line(m))
        a_frz.set_ylabel("components frozen (%)")
        a_frz.set_ylim(-3, 103)
        a_frz.set_title("Frozen fraction per modality", loc="left")
        loss = [(int(m["step"]), num(m.get("loss"))) for m in run.metrics]
        loss = [(s, v) for s, v in loss if math.isfinite(v)]
        if loss:
            a_loss.plot([s for s, _ in loss], [v for _, v in loss], color="#444444", lw=0.8, alpha=0.45, label="loss")
            k = max(1, len(loss) // 25)
            if k > 1:
                smooth = [sum(v for _, v in loss[max(0, i - k + 1):i + 1]) / len(loss[max(0, i - k + 1):i + 1])
                          for i in range(len(loss))]
                a_loss.plot([s for s, _ in loss], smooth, color="black", lw=1.8, label=f"loss (mean of {k})")
        a_loss.set_ylabel("training loss")
        a_loss.set_title("Training loss", loc="left")
        for m in run.modalities:
            lr = [(int(r["step"]), num((r.get("lr") or {}).get(m) if isinstance(r.get("lr"), dict) else r.get("lr")))
                  for r in run.metrics]
            lr = [(s, v) for s, v in lr if math.isfinite(v) and v > 0]
            if lr:
                a_lr.plot([s for s, _ in lr], [v for _, v in lr], label=m, **line(m))
        if a_lr.lines:
            a_lr.set_yscale("log")
        a_lr.set_ylabel("learning rate")
        a_lr.set_title("Learning rate", loc="left")
        a_lr.set_xlabel("optimizer step")
        for ax in (a_frz, a_loss, a_lr):
            for m, s in run.finalize_steps.items():
                ax.axvline(s, color=color(m), ls=":", lw=1.4, label=f"{m} finalized" if ax is a_frz else None)
            stop = run.last_event("stop")
            if stop and math.isfinite(num(stop.get("step"))):
                ax.axvline(num(stop["step"]), color="crimson", ls="--", lw=1.4,
                           label=f"stop: {stop.get('reason', '')}" if ax is a_frz else None)
            if run.total_steps and run.total_steps > run.last_step and ax is a_frz:
                ax.set_xlim(right=run.total_steps)
                ax.axvspan(run.last_step, run.total_steps, color="#eeeeee", zorder=0,
                           label="planned, not run" if run.ended else "planned, not reached yet")
            if ax.get_legend_handles_labels()[0]:
                ax.legend(loc="best", framealpha=0.9)
        fig.suptitle(title, fontsize=13)
        fig.tight_layout()
        return to_png(fig)
