"""Write a run's report folder: report.json, the PNG figures, report.md and a self-contained report.html."""
from __future__ import annotations

import csv
from pathlib import Path

from vlm_grades.errors import UserError
from vlm_grades.report import EXTRA_FORMATS, FORMATS, html, markdown, summary, table
from vlm_grades.report.figures import render_all
from vlm_grades.report.run_data import RunData
from vlm_grades.training.run_folder import write_json_atomic


def parse_formats(text: str) -> list[str]:
    formats = [f.strip().lower() for f in text.split(",") if f.strip()]
    bad = [f for f in formats if f not in FORMATS + EXTRA_FORMATS]
    if bad or not formats:
        choices = ",".join(FORMATS + EXTRA_FORMATS)
        raise UserError(f"--format: unknown format {', '.join(bad) or '(none)'} (choose from {choices})")
    return formats


def summary_text(report: dict) -> str:
    facts = report["run"]
    rows = table.summary_with_total(report)
    head = (f"run {facts['name']}: {facts['status']}, step {facts['steps_run']}/{facts['planned_steps'] or '?'}"
            f", stop reason: {facts['stop_reason'] or '-'}, wall {table.fmt_seconds(facts['wall_time'])}"
            f", loss {table.fmt_num(facts['final_loss'])}")
    return (head + "\n" + table.text(table.SUMMARY_HEADERS, rows)
            + "\nFLOPs: estimated training FLOPs saved vs. the same run without freezing (model in report.json).")


def write_report(run_path: str | Path, out: str | Path | None = None,
                 formats: list[str] | tuple[str, ...] = FORMATS) -> tuple[dict, list[Path]]:
    run = RunData.load(run_path)
    out = Path(out) if out else run.path / "report"
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"{out}: cannot create the report folder ({e.strerror})") from None
    report = summary.build(run)
    written: list[Path] = []
    figures = render_all(run) if ("png" in formats or "html" in formats) else {}
    if "png" in formats:
        for name, png in figures.items():
            (out / name).write_bytes(png)
            written.append(out / name)
    if "json" in formats:
        write_json_atomic(out / "report.json", report)
        written.append(out / "report.json")
    if "md" in formats:
        (out / "report.md").write_text(markdown.render(report, list(figures) if "png" in formats else []))
        written.append(out / "report.md")
    if "csv" in formats:
        with open(out / "components.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(report["components"][0]) if report["components"] else ["name"])
            writer.writeheader()
            writer.writerows(report["components"])
        written.append(out / "components.csv")
    if "html" in formats:
        (out / "report.html").write_text(html.render(report, figures, run.config_text))
        written.append(out / "report.html")
    return report, written
