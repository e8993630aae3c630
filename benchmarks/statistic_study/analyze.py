"""Compute every candidate on one recording and cache it; print per-modality median tables and freeze sweeps.

    python analyze.py RUN_DIR [--out FILE.md]
"""
from __future__ import annotations

import argparse
import pickle
import sys
from pathlib import Path

import numpy as np

import stats

MODS = ("vision", "projector", "language")


def candidates(d) -> dict[str, np.ndarray]:
    U = stats.updates(d)
    c = {}
    c["grad_change_s (paper, beta .99)"] = d["grad_change_s"]
    for n in (100, 300, 1000):
        c[f"grad_snr{n}"] = stats.grad_snr(d, n)
    for L in (50, 100, 200, 400):
        c[f"R{L}"] = stats.disp_ratio(d, L, U)
    for n in (100, 300, 1000):
        c[f"upd_snr{n}"] = stats.update_snr(d, n, U)
    lrm = d["lr"][:, [2 if m == "language" else (1 if m == "projector" else 0) for m in d["mod"]]]
    lr_used = np.concatenate([lrm[:1], lrm[:-1]])            # the logged lr is the next step's (after scheduler.step)
    Ul = U / lr_used[:, :, None].astype(np.float32)
    for n in (100, 300, 1000):
        c[f"upd_snr_lr{n}"] = stats.snr_of(Ul, n)
    for L in (200, 400):
        c[f"R_lr{L}"] = stats.disp_ratio({"W": np.concatenate([np.zeros_like(Ul[:1]), np.cumsum(Ul, 0)])}, L, Ul)
    for n in (100, 300, 1000):
        b = 1 - 1 / n
        m = np.zeros(U.shape[1:]); q = np.zeros(U.shape[1]); out = np.full(U.shape[:2], np.nan)
        qq = np.full(U.shape[:2], np.nan)
        for t in range(U.shape[0]):
            g = np.asarray(d["G"][t], float)
            m = b * m + (1 - b) * g; q = b * q + (1 - b) * (g * g).sum(1)
            nn = t + 1; f = stats.floor(b, nn)
            mc = (m * m).sum(1) / (1 - b ** nn) ** 2; qc = q / (1 - b ** nn)
            out[t] = (mc - f * qc) / (1 - f) * d["numel"] / d["k"] / d["numel"]   # signal power per entry
            qq[t] = qc / d["k"]                                                  # gradient power per entry
        c[f"gsig{n}"] = out
        if n == 100:
            c["gpow100"] = qq
    p = stats.progress(d, U)
    for n in (100, 300):
        c[f"progress{n}"] = stats.ema(p, 1 - 1 / n)
        c[f"progress{n}/lr"] = c[f"progress{n}"] / d["lr"][:, [2 if m == "language" else 0 for m in d["mod"]]]
        c[f"pcos{n}"] = stats.progress_cos(d, n, U)
    return c


def get(run: Path):
    cache = run / "cands.pkl"
    d = stats.load(run)
    if cache.exists():
        c = pickle.loads(cache.read_bytes())
    else:
        c = candidates(d)
        cache.write_bytes(pickle.dumps(c))
    return d, c


def med_table(d, S, every=100) -> str:
    T = d["T"]
    loss = d["loss"]
    lines = ["| step | loss (mean of 100) | vision | projector | language |", "|---|---|---|---|---|"]
    for t in range(every, T + 1, every):
        row = [f"{t}", f"{np.mean(loss[max(0, t - 100):t]):.4f}"]
        for m in MODS:
            v = S[t - 2 if t == T else t - 1, d["mod"] == m]      # last row of progress is NaN: use T-1
            row.append(f"{np.nanmedian(v):.3g}" if np.isfinite(v).any() else "nan")
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("run")
    args = ap.parse_args()
    run = Path(args.run)
    d, c = get(run)
    print(f"# {run}: {d['T']} steps, {len(d['names'])} matrices")
    for name, S in c.items():
        print(f"\n## {name}\n")
        print(med_table(d, S))


if __name__ == "__main__":
    sys.exit(main())
