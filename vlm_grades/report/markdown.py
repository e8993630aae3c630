"""report.md: the tables and links to the PNG figures written beside it."""
from __future__ import annotations

from vlm_grades.report import table
from vlm_grades.report.figures import FIGURES
from vlm_grades.report.html import COMPONENT_HEADERS, FLOPS_HEADERS, component_rows, flops_rows, run_rows


def render(report: dict, figure_names: list[str]) -> str:
    facts = report["run"]
    summary = table.summary_with_total(report)
    out = [f"# GradES report: {facts['name']}", "", table.markdown(["", ""], run_rows(facts)), "",
           "## Convergence per modality", "", table.markdown(table.SUMMARY_HEADERS, summary), "",
           "## Training FLOPs saved (estimate)", "", table.markdown(FLOPS_HEADERS, flops_rows(report["flops"])), "",
           report["flops"]["model"], ""]
    if figure_names:
        out += ["## Figures", ""]
        out += [f"![{FIGURES.get(n, (n,))[0]}]({n})" for n in figure_names]
        out.append("")
    out += ["## Components", "", table.markdown(COMPONENT_HEADERS, component_rows(report["components"])), ""]
    return "\n".join(out)
