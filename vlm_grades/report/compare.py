"""Side-by-side comparison of runs (e.g. GradES vs. a baseline): table, JSON and loss/score vs. wall time."""
from __future__ import annotations

import math

import matplotlib.pyplot as plt

from vlm_grades.report import flops, table
from vlm_grades.report.run_data import RunData, num
from vlm_grades.report.style import RC, to_png

RUN_COLORS = ["#222222", "#d4600b", "#1f5fa8", "#2a8a3e", "#8e44ad", "#b03a2e", "#7f8c8d"]


def wall_at(run: RunData, step: float) -> float | None:
    """Wall time at a step, interpolated from metrics.jsonl `wall`."""
    pts = [(int(m["step"]), num(m.get("wall"))) for m in run.metrics if math.isfinite(num(m.get("wall")))]
    if not pts:
        return None
    for (s0, w0), (s1, w1) in zip(pts, pts[1:]):
        if s0 <= step <= s1:
            return w0 + (w1 - w0) * (step - s0) / max(s1 - s0, 1)
    return pts[-1][1] if step > pts[-1][0] else pts[0][1] * step / max(pts[0][0], 1)


def final_scores(run: RunData) -> dict[str, float]:
    """The last score per task/split."""
    return {f"{e.get('task', '?')}/{e.get('split', '?')}": num(e["score"]) for e in run.evals}


def final_loss(run: RunData, window: int = 10) -> float | None:
    losses = [num(m.get("loss")) for m in run.metrics]
    losses = [v for v in losses if math.isfinite(v)][-window:]
    return sum(losses) / len(losses) if losses else None


def summarize(run: RunData) -> dict:
    f = flops.estimate(run)
    return {"name": run.name, "path": str(run.path), "status": "finished" if run.ended else "running or interrupted",
            "steps": run.last_step, "planned_steps": run.total_steps, "stop_reason": run.stop_reason,
            "wall_time": run.wall_time, "flops": f["total"]["actual"],
            "flops_saved_fraction": f["total"]["saved_fraction"],
            "frozen": len(run.freeze_steps), "components": len(run.components),
            "final_loss": final_loss(run), "scores": final_scores(run)}


def compare(runs: list[RunData], baseline: int = 0) -> dict:
    rows = [summarize(r) for r in runs]
    base = rows[baseline]
    ratio = lambda a, b: (a / b) if (a and b) else None  # noqa: E731
    for i, r in enumerate(rows):
        r["is_baseline"] = i == baseline
        r["speedup_wall"] = ratio(base["wall_time"], r["wall_time"])
        r["speedup_flops"] = ratio(base["flops"], r["flops"])
        r["step_ratio"] = ratio(base["steps"], r["steps"])
        r["score_delta"] = {k: v - base["scores"][k] for k, v in r["scores"].items() if k in base["scores"]}
    return {"baseline": base["name"], "runs": rows,
            "notes": "speedup = baseline / run (wall time, estimated training FLOPs); final loss = mean of the "
                     "last 10 logged losses; scores = last evaluation per task/split. " + flops.FLOP_MODEL}


def table_rows(result: dict) -> tuple[list[str], list[list[str]]]:
    tasks = list(dict.fromkeys(k for r in result["runs"] for k in r["scores"]))
    headers = ["run", "status", "steps", "stop reason", "wall time", "train FLOPs (est.)", "frozen", "final loss"]
    headers += [f"score {t}" for t in tasks] + ["speedup (wall)", "speedup (FLOPs)"]
    rows = []
    for r in result["runs"]:
        name = r["name"] + (" (baseline)" if r["is_baseline"] else "")
        row = [name, r["status"], f"{r['steps']}/{r['planned_steps'] or '?'}", r["stop_reason"] or "-",
               table.fmt_seconds(r["wall_time"]), table.fmt_flops(r["flops"]), f"{r['frozen']}/{r['components']}",
               table.fmt_num(r["final_loss"])]
        for t in tasks:
            s = r["scores"].get(t)
            d = r["score_delta"].get(t)
            delta = f" ({d:+.2f})" if d is not None and not r["is_baseline"] else ""
            row.append("-" if s is None else f"{s:.2f}{delta}")
        row += ["-" if r["speedup_wall"] is None else f"{r['speedup_wall']:.2f}x",
                "-" if r["speedup_flops"] is None else f"{r['speedup_flops']:.2f}x"]
        rows.append(row)
    return headers, rows


def score_limits(scores: list[float], min_span: float = 10.0) -> tuple[float, float] | None:
    """Y range of the score panel: at least `min_span` points wide, so that runs a few tenths apart do not fill
    the panel as if they were far apart; kept inside 0-100 when the scores are percentages."""
    if not scores:
        return None
    lo, hi = min(scores), max(scores)
    pad = max(0.0, (min_span - (hi - lo)) / 2) + 0.05 * max(hi - lo, min_span)
    lo, hi = lo - pad, hi + pad
    if 0 <= min(scores) and max(scores) <= 100:
        if hi > 100:
            lo, hi = max(0.0, lo - (hi - 100)), 100.0
        if lo < 0:
            lo, hi = 0.0, min(100.0, hi - lo)
    return lo, hi


def plot(runs: list[RunData]) -> bytes:
    with plt.rc_context(RC):
        fig, (a_loss, a_score) = plt.subplots(1, 2, figsize=(12, 4.6), sharex=True)   # one time axis
        all_scores: list[float] = []
        for i, run in enumerate(runs):
            c = RUN_COLORS[i % len(RUN_COLORS)]
            pts = [(num(m.get("wall")), num(m.get("loss"))) for m in run.metrics]
            pts = [(w, v) for w, v in pts if math.isfinite(w) and math.isfinite(v)]
            if pts:
                k = max(1, len(pts) // 30)
                smooth = [sum(v for _, v in pts[max(0, j - k + 1):j + 1]) / len(pts[max(0, j - k + 1):j + 1])
                          for j in range(len(pts))]
                a_loss.plot([w for w, _ in pts], smooth, color=c, lw=1.8, label=run.name)
                a_loss.plot([pts[-1][0]], [smooth[-1]], "o", color=c)
            for j, (task, marker) in enumerate(zip(sorted({f"{e.get('task')}/{e.get('split')}" for e in run.evals}),
                                                   "osD^v")):
                ev = [(wall_at(run, num(e["step"])), num(e["score"])) for e in run.evals
                      if f"{e.get('task')}/{e.get('split')}" == task]
                ev = [(w, s) for w, s in ev if w is not None]
                if ev:
                    a_score.plot([w for w, _ in ev], [s for _, s in ev], marker=marker, color=c, lw=1.6,
                                 ls="-" if j == 0 else "--", label=f"{run.name}: {task}")
                    a_score.annotate(f"{ev[-1][1]:.2f}", ev[-1], textcoords="offset points", xytext=(0, 7),
                                     ha="center", fontsize=9, color=c)
                    all_scores += [s for _, s in ev]
        a_loss.set_xlabel("wall time (s)")
        a_loss.set_ylabel("training loss" + (" (smoothed)" if any(len(r.metrics) > 60 for r in runs) else ""))
        a_loss.set_title("Training loss vs. wall time", loc="left")
        limits = score_limits([v for v in all_scores if math.isfinite(v)])
        if limits:
            a_score.set_ylim(*limits)
        a_score.set_xlabel("wall time (s)")
        a_score.set_ylabel("evaluation score")
        a_score.set_title("Evaluation score vs. wall time", loc="left")
        for ax in (a_loss, a_score):
            if ax.get_legend_handles_labels()[0]:
                ax.legend(framealpha=0.9)
            else:
                ax.text(0.5, 0.5, "nothing logged", ha="center", va="center", transform=ax.transAxes, color="#555")
        fig.suptitle("Run comparison: " + " vs. ".join(r.name for r in runs), fontsize=13)
        fig.tight_layout()
        return to_png(fig)
