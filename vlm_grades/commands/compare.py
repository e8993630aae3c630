"""`vlm-grades compare RUN_A RUN_B ...`: side-by-side table of runs, speedups vs. a baseline, plots."""
from __future__ import annotations

import argparse
import os
from pathlib import Path

from vlm_grades.errors import UserError
from vlm_grades.training.run_folder import write_json_atomic


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "compare", help="compare runs side by side (steps, wall time, FLOPs, loss, scores, speedups)",
        description="Print a side-by-side table of run folders with speedup ratios against the first run or "
                    "--baseline; with --out, also write compare.json, compare.md and compare.png (loss and "
                    "score against wall time).")
    p.add_argument("runs", nargs="+", metavar="RUN", help="run folders written by `vlm-grades train`")
    p.add_argument("--baseline", metavar="RUN", default=None,
                   help="run the ratios are taken against (default: the first RUN); added if not among RUN")
    p.add_argument("--out", metavar="DIR", default=None, help="folder for compare.json, compare.md and compare.png")
    p.add_argument("--json", action="store_true", help="print the comparison as JSON instead of a table")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from vlm_grades.report import table
    from vlm_grades.report.compare import compare, plot, table_rows
    from vlm_grades.report.run_data import RunData

    paths = [Path(p) for p in args.runs]
    baseline = 0
    if args.baseline:
        b = Path(args.baseline)
        same = [i for i, p in enumerate(paths) if p.exists() and b.exists() and os.path.samefile(p, b)]
        if same:
            baseline = same[0]
        else:
            paths.insert(0, b)
    runs = [RunData.load(p) for p in paths]
    result = compare(runs, baseline)
    headers, rows = table_rows(result)
    if args.json:
        import json
        print(json.dumps(result, indent=2, default=str))
    else:
        print(table.text(headers, rows))
    if args.out:
        out = Path(args.out)
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise UserError(f"--out: cannot create {out} ({e.strerror})") from None
        write_json_atomic(out / "compare.json", result)
        (out / "compare.md").write_text("# Run comparison\n\n" + table.markdown(headers, rows) + "\n\n"
                                        + result["notes"] + "\n\n![loss and score vs. wall time](compare.png)\n")
        (out / "compare.png").write_bytes(plot(runs))
        print(f"\nwrote compare.json, compare.md and compare.png to {out}")
    return 0
