"""Number formatting and the summary table as plain text (terminal), Markdown or rows (HTML)."""
from __future__ import annotations

import math
from typing import Any


def fmt_count(n: Any) -> str:
    if n is None:
        return "-"
    n = float(n)
    for div, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= div:
            return f"{n / div:.3g}{suffix}"
    return f"{n:.0f}"


def fmt_flops(x: Any) -> str:
    if x is None or not math.isfinite(float(x)):
        return "-"
    x = float(x)
    for div, suffix in ((1e18, "E"), (1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= div:
            return f"{x / div:.3g} {suffix}FLOP"
    return f"{x:.3g} FLOP"


def fmt_pct(x: Any) -> str:
    return "-" if x is None else f"{100 * float(x):.1f}%"


def fmt_num(x: Any) -> str:
    if x is None:
        return "-"
    try:
        x = float(x)
    except (TypeError, ValueError):
        return str(x)
    return "-" if not math.isfinite(x) else f"{x:.3g}"


def fmt_step(x: Any) -> str:
    return "-" if x is None else str(int(x))


def fmt_seconds(x: Any) -> str:
    if x is None:
        return "-"
    x = float(x)
    return f"{x:.1f} s" if x < 120 else (f"{x / 60:.1f} min" if x < 7200 else f"{x / 3600:.2f} h")


SUMMARY_HEADERS = ["modality", "components", "parameters", "frozen", "frozen %", "first / median / last freeze",
                   "finalized", "statistic start -> end", "tau", "FLOPs saved (steps run)", "saved vs. planned"]


def summary_rows(modalities: dict[str, dict]) -> list[list[str]]:
    rows = []
    for m, s in modalities.items():
        rows.append([
            m, str(s["components"]), fmt_count(s["parameters"]), f"{s['frozen']}/{s['components']}",
            fmt_pct(s["frozen_fraction"]),
            " / ".join(fmt_step(s[k]) for k in ("first_freeze_step", "median_freeze_step", "last_freeze_step")),
            fmt_step(s["finalize_step"]),
            f"{fmt_num(s['statistic_start'])} -> {fmt_num(s['statistic_end'])}", fmt_num(s["tau_median"]),
            f"{fmt_flops(s['flops_saved'])} ({fmt_pct(s['flops_saved_fraction'])})",
            "-" if s["flops_saved_planned"] is None else
            f"{fmt_flops(s['flops_saved_planned'])} ({fmt_pct(s['flops_saved_planned_fraction'])})",
        ])
    return rows


def total_row(flop_total: dict, modalities: dict[str, dict]) -> list[str]:
    comps = sum(s["components"] for s in modalities.values())
    frozen = sum(s["frozen"] for s in modalities.values())
    planned = flop_total.get("saved_planned")
    return ["total", str(comps), fmt_count(sum(s["parameters"] for s in modalities.values())), f"{frozen}/{comps}",
            fmt_pct(frozen / comps if comps else None), "", "", "", "",
            f"{fmt_flops(flop_total['saved'])} ({fmt_pct(flop_total['saved_fraction'])})",
            "-" if planned is None else f"{fmt_flops(planned)} ({fmt_pct(flop_total['saved_planned_fraction'])})"]


def summary_with_total(report: dict) -> list[list[str]]:
    return summary_rows(report["modalities"]) + [total_row(report["flops"]["total"], report["modalities"])]


def text(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(r[i])) for r in [headers] + rows) for i in range(len(headers))]
    line = lambda r: "  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip()  # noqa: E731
    return "\n".join([line(headers), "  ".join("-" * w for w in widths)] + [line(r) for r in rows])


def markdown(headers: list[str], rows: list[list[str]]) -> str:
    esc = lambda c: str(c).replace("|", "\\|")  # noqa: E731
    out = ["| " + " | ".join(esc(h) for h in headers) + " |", "|" + "---|" * len(headers)]
    out += ["| " + " | ".join(esc(c) for c in r) + " |" for r in rows]
    return "\n".join(out)
