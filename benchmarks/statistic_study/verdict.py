"""Freeze sweeps of every candidate on both recordings (offline replay of the engine's rule: grace 30% of the
planned steps, patience 2, permanent freeze; relative: tau = rho x the mean of the last 100 grace-period values).

    python verdict.py FT_DIR FS_DIR [--late 1800]
"""
import argparse
from pathlib import Path

import numpy as np

import stats
from analyze import get

ABS = {"grad_snr": [0.5, 1, 2, 3, 5], "R": [5, 10, 19, 30, 50], "upd_snr": [5, 10, 19, 30, 50],
       "pcos": [0.002, 0.005, 0.01, 0.02, 0.05]}
REL = [0.1, 0.2, 0.3, 0.4, 0.5, 0.7]


def fmt(x):
    return "never" if not np.isfinite(x) else f"{int(x)}"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("ft")
    ap.add_argument("fs")
    ap.add_argument("--late", type=int, default=1800, help="step by which the from-scratch late phase is learned")
    ap.add_argument("--only", default=None)
    args = ap.parse_args()
    dft, cft = get(Path(args.ft))
    dfs, cfs = get(Path(args.fs))
    gft, gfs = int(0.3 * dft["T"]), int(0.3 * dfs["T"])
    lang = dfs["mod"] == "language"
    print("| candidate | rule | FT: all frozen at | FT: median freeze | FS: first language freeze | "
          f"FS: language frozen before {args.late} (of {lang.sum()}) | FS: all frozen at |")
    print("|---|---|---|---|---|---|---|")
    for name in cft:
        if args.only and args.only not in name:
            continue
        fam = next((f for f in ("grad_snr", "upd_snr", "pcos", "R") if "gsig" not in name and name.startswith(f)), None)
        rules = [("rel", r) for r in REL] + ([("abs", a) for a in ABS[fam]] if fam else [])
        for mode, thr in rules:
            a = stats.freeze_steps(cft[name], gft, thr, mode == "rel")
            b = stats.freeze_steps(cfs[name], gfs, thr, mode == "rel")
            rule = f"rho {thr}" if mode == "rel" else f"tau {thr}"
            print(f"| {name} | {rule} | {fmt(a.max())} | {fmt(np.median(a))} | {fmt(b[lang].min())} | "
                  f"{int((b[lang] < args.late).sum())} | {fmt(b.max())} |")


if __name__ == "__main__":
    main()
