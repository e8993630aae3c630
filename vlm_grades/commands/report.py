"""`vlm-grades report RUN`: per-modality convergence report of a run folder (tables, figures, HTML)."""
from __future__ import annotations

import argparse

# vlm_grades.report's submodules import matplotlib: they are imported when the command runs, so that
# building the CLI parser (every command) stays fast.
from vlm_grades.report import FORMATS


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "report", help="per-modality convergence report of a run folder",
        description="Read a run folder and write report.json, PNG figures, report.md and a self-contained "
                    "report.html; print the per-modality summary. statistics.png draws, per component, the "
                    "value the GradES rule compared with tau (the smoothed statistic when smoothing is on), the "
                    "raw per-check statistic faint behind it. With --live, refresh the summary while the run "
                    "trains.")
    p.add_argument("run", metavar="RUN", help="run folder written by `vlm-grades train`")
    p.add_argument("--out", metavar="DIR", default=None, help="output folder (default: RUN/report)")
    p.add_argument("--format", default=",".join(FORMATS), metavar="LIST",
                   help=f"comma-separated outputs among {','.join(FORMATS)} (default: all) and csv "
                        "(components.csv, per-component table)")
    p.add_argument("--live", action="store_true",
                   help="print the summary table repeatedly until the run's end event (or Ctrl-C); writes no files")
    p.add_argument("--interval", type=float, default=5.0, metavar="SECONDS",
                   help="refresh period of --live in seconds (default 5)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.live:
        from vlm_grades.report.live import watch
        return watch(args.run, interval=args.interval)
    from vlm_grades.report.build import parse_formats, summary_text, write_report

    formats = parse_formats(args.format)
    report, written = write_report(args.run, args.out, formats)
    print(summary_text(report))
    if written:
        print(f"\nwrote {len(written)} file(s) to {written[0].parent}: " + ", ".join(p.name for p in written))
    return 0
