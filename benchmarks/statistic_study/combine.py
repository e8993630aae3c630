"""Side-by-side per-modality median tables (fine-tuning | from scratch) for chosen candidates.

    python combine.py FT FS NAME [NAME ...]
"""
import sys
from pathlib import Path

import numpy as np

from analyze import get

MODS = ("vision", "projector", "language")


def col(d, S, t):
    r = t - 2 if t == d["T"] else t - 1
    return [np.nanmedian(S[r, d["mod"] == m]) for m in MODS]


def main():
    ft, fs, names = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3:]
    dft, cft = get(ft)
    dfs, cfs = get(fs)
    for name in names:
        print(f"\n**{name}** (median over matrices; loss = mean of the 100 steps up to the step)\n")
        print("| step | FT loss | FT V | FT P | FT L | FS loss | FS V | FS P | FS L |")
        print("|---|---|---|---|---|---|---|---|---|")
        for t in range(100, dfs["T"] + 1, 100):
            row = [str(t)]
            for d, c in ((dft, cft), (dfs, cfs)):
                if t <= d["T"]:
                    row.append(f"{np.mean(d['loss'][t - 100:t]):.4f}")
                    row += [f"{v:.3g}" for v in col(d, c[name], t)]
                else:
                    row += [""] * 4
            print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
