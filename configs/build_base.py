"""Rebuild the shipped nanoVLM base (nanovlm/base) with the project's own command.

    python configs/build_base.py [--out runs/base-build] [--threads 2]

Runs `vlm-grades train --config configs/nanovlm-base.yaml` (stage 1: the tiny preset from random weights on
the scenes corpus), then copies the run's final/ model into nanovlm/base with BUILD.json: the command, the
thread count, the commit and the held-out scenes score the test of the shipped base checks against.
The result depends on the thread count (the order of floating-point sums): the shipped base used 2.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BASE = ROOT / "nanovlm" / "base"
FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "vlm_grades_adapter.json")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(ROOT / "runs" / "base-build"), help="run folder of the stage-1 run")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads (OMP_NUM_THREADS)")
    ap.add_argument("--from-run", default=None, help="copy an existing stage-1 run folder instead of training")
    args = ap.parse_args(argv)
    run = Path(args.from_run or args.out)
    command = ["vlm-grades", "train", "--config", "configs/nanovlm-base.yaml", "--out", str(run), "--no-progress"]
    if not args.from_run:
        env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
        subprocess.run(command, cwd=ROOT, env=env, check=True)
    scores = json.loads((run / "eval" / "scenes_scores.json").read_text())
    BASE.mkdir(parents=True, exist_ok=True)
    for name in FILES:
        shutil.copy2(run / "final" / name, BASE / name)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout
    build = {"command": f"OMP_NUM_THREADS={args.threads} " + " ".join(command[:-1]), "threads": args.threads,
             "commit": commit.strip(), "scenes_test": {"accuracy": scores["score"], "per_kind": scores["metrics"]["per_kind"],
                             "n": scores["n"]}}
    (BASE / "BUILD.json").write_text(json.dumps(build, indent=2) + "\n")
    print(f"nanovlm/base: scenes test {scores['score']:.2f} ({scores['n']} samples); {BASE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
