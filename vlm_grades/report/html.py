"""report.html: one self-contained page (figures inline as base64, no external resource, no URL)."""
from __future__ import annotations

import base64
import html

from vlm_grades.report import table
from vlm_grades.report.figures import FIGURES

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Helvetica,Arial,sans-serif;margin:2em auto;max-width:1200px;
color:#222;line-height:1.45;padding:0 1em}
h1{font-size:1.6em;margin-bottom:.2em}
h2{font-size:1.25em;border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.6em}
table{border-collapse:collapse;margin:.6em 0;font-size:.92em}
th,td{border:1px solid #ddd;padding:.3em .6em;text-align:left}
th{background:#f3f3f3}tr:nth-child(even) td{background:#fafafa}
td.num{text-align:right;font-variant-numeric:tabular-nums}
figure{margin:1em 0}figure img{max-width:100%;border:1px solid #eee}figcaption{color:#555;font-size:.9em}
pre{background:#f6f6f6;padding:.8em;overflow-x:auto;font-size:.85em}.note{color:#555;font-size:.9em}
"""


def esc(value) -> str:
    """HTML-escaped text in which no URL survives as one (the page must reference nothing outside itself)."""
    return html.escape(str(value)).replace("://", "&#58;//")


def html_table(headers: list[str], rows: list[list], numeric_from: int = 1) -> str:
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    body = "".join(
        "<tr>" + "".join(f'<td{" class=num" if i >= numeric_from else ""}>{esc(c)}</td>' for i, c in enumerate(r))
        + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def run_rows(facts: dict) -> list[list[str]]:
    evals = ", ".join(f"{e.get('task')}/{e.get('split')} {table.fmt_num(e.get('score'))} @ {e.get('step')}"
                      for e in facts["evals"]) or "-"
    return [["architecture", facts["architecture"]], ["statistic", facts["metric"] or "-"],
            ["status", facts["status"]],
            ["steps run / planned", f"{facts['steps_run']} / {facts['planned_steps'] or '-'}"],
            ["stop reason", facts["stop_reason"] or "-"], ["wall time", table.fmt_seconds(facts["wall_time"])],
            ["final training loss", table.fmt_num(facts["final_loss"])],
            ["resumed", str(facts["resumed"]) + " time(s)"], ["evaluations", evals]]


def flops_rows(flop: dict) -> list[list[str]]:
    rows = []
    for name, f in list(flop["modalities"].items()) + [("total", flop["total"])]:
        rows.append([name, table.fmt_flops(f["baseline"]), table.fmt_flops(f["saved"]),
                     table.fmt_pct(f["saved_fraction"]),
                     table.fmt_flops(f["baseline_planned"]), table.fmt_flops(f["saved_planned"]),
                     table.fmt_pct(f["saved_planned_fraction"])])
    return rows


FLOPS_HEADERS = ["modality", "baseline (steps run)", "saved (steps run)", "saved %", "baseline (planned steps)",
                 "saved vs. planned", "saved % vs. planned"]
COMPONENT_HEADERS = ["component", "modality", "layer", "kind", "parameters", "freeze step", "tau",
                     "statistic start", "statistic end"]


def component_rows(components: list[dict]) -> list[list[str]]:
    return [[c["name"], c["modality"], str(c["layer"]), c["kind"], table.fmt_count(c["numel"]),
             table.fmt_step(c["freeze_step"]), table.fmt_num(c["tau"]), table.fmt_num(c["statistic_start"]),
             table.fmt_num(c["statistic_end"])] for c in components]


def render(report: dict, figures: dict[str, bytes], config_text: str) -> str:
    facts = report["run"]
    summary = table.summary_with_total(report)
    parts = [f"<h1>GradES report: {esc(facts['name'])}</h1>",
             f"<p class=note>{esc(facts['path'])}</p>",
             "<h2>Run</h2>", html_table(["", ""], run_rows(facts), numeric_from=99),
             "<h2>Convergence per modality</h2>", html_table(table.SUMMARY_HEADERS, summary),
             "<p class=note>Statistic start: first non-zero value of each component; end: its last value; "
             "both the median over the modality's components. Frozen % counts components.</p>",
             "<h2>Training FLOPs saved (estimate)</h2>", html_table(FLOPS_HEADERS, flops_rows(report["flops"])),
             f"<p class=note>{esc(report['flops']['model'])}</p>", "<h2>Figures</h2>"]
    for name, png in figures.items():
        caption = FIGURES.get(name, (name,))[0]
        data = base64.b64encode(png).decode("ascii")
        parts.append(f'<figure><img alt="{esc(caption)}" src="data:image/png;base64,{data}">'
                     f"<figcaption>{esc(caption)} ({esc(name)})</figcaption></figure>")
    parts += ["<h2>Components</h2>", "<details><summary>every monitored component</summary>",
              html_table(COMPONENT_HEADERS, component_rows(report["components"]), numeric_from=2), "</details>",
              "<h2>Configuration (config.yaml)</h2>", f"<pre>{esc(config_text)}</pre>"]
    return ("<!DOCTYPE html>\n<html lang=en><head><meta charset=utf-8>"
            f"<title>GradES report: {esc(facts['name'])}</title><style>{CSS}</style></head><body>\n"
            + "\n".join(parts) + "\n</body></html>\n")
