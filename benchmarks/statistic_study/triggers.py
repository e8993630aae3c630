"""Offline: where would candidate convergence triggers fire on logged unfrozen runs (issue 23)?

    python benchmarks/statistic_study/triggers.py RUN [RUN ...] [--start 300] [--windows 100 200 300]
        [--tolerances 0.05 0.1 0.2] [--series stat smoothed loss]

RUN: run folders logged without freezing at a constant rate after warm-up, e.g.
`vlm-grades train --model nanovlm --tau 1e-30 --schedule constant --warmup 50 --steps 1200`.
Every candidate is `vlm_grades.grades.plateau.Plateau` (the engine's own test) on one series:
`stat`: per modality, the mean over its matrices of log(raw statistic) at each check; the model counts as
converged when every modality has (at the last modality's step); `smoothed`: the same on the engine's
smoothed statistic; `loss`: the training loss of every step. No check before --start counts (the grace
period). Prints the trigger step per run and candidate, and the fitted fall along the run for one.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from vlm_grades.grades.plateau import Plateau  # noqa: E402


def load(run: Path):
    comps = json.loads((run / "components.json").read_text())["components"]
    modality = {c["name"]: c["modality"] for c in comps}
    checks = [json.loads(line) for line in (run / "convergence.jsonl").read_text().splitlines() if line.strip()]
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return modality, checks, metrics


def pooled(record: dict, key: str, modality: dict[str, str]) -> dict[str, float]:
    out: dict[str, list[float]] = {}
    for name, v in (record.get(key) or {}).items():
        if v is not None and math.isfinite(float(v)) and float(v) > 0:
            out.setdefault(modality[name], []).append(math.log(float(v)))
    return {m: math.exp(sum(xs) / len(xs)) for m, xs in out.items()}


def trigger(series: str, run: Path, window: int, tolerance: float, start: int, patience: int = 1):
    modality, checks, metrics = load(run)
    if series == "loss":
        p = Plateau(window, tolerance, patience)
        for r in metrics:
            if p.add(float(r["loss"])) and r["step"] >= start:
                return r["step"], {}
        return None, {}
    key = "values" if series == "stat" else "smoothed"
    detectors: dict[str, Plateau] = {}
    done: dict[str, int] = {}
    for r in checks:
        for m, v in pooled(r, key, modality).items():
            d = detectors.setdefault(m, Plateau(window, tolerance, patience))
            if d.add(v) and r["step"] >= start and m not in done:
                done[m] = r["step"]
        if detectors and len(done) == len(detectors):
            return max(done.values()), done
    return None, done


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--start", type=int, default=300)
    ap.add_argument("--windows", type=int, nargs="+", default=[100, 200, 300])
    ap.add_argument("--tolerances", type=float, nargs="+", default=[0.05, 0.1, 0.2])
    ap.add_argument("--patience", type=int, default=1)
    ap.add_argument("--series", nargs="+", default=["stat", "smoothed", "loss"])
    args = ap.parse_args(argv)
    runs = [Path(r) for r in args.runs]
    print("| series | window | tolerance | " + " | ".join(r.name for r in runs) + " |")
    print("| --- | --- | --- | " + " | ".join("---" for _ in runs) + " |")
    for series in args.series:
        for w in args.windows:
            for t in args.tolerances:
                cells = []
                for run in runs:
                    step, per = trigger(series, run, w, t, args.start, args.patience)
                    detail = " (" + ", ".join(f"{m[0]} {s}" for m, s in sorted(per.items())) + ")" if per else ""
                    cells.append(f"{step if step is not None else '-'}{detail}")
                print(f"| {series} | {w} | {t} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
