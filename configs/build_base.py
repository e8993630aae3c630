"""Rebuild the shipped nanoVLM base (nanovlm/base) with the project's own command.

    python configs/build_base.py [--out runs/base-build] [--dest nanovlm/base] [--threads 1]

Stage 1a, `vlm-grades train --config configs/nanovlm-base-prior.yaml` (the tiny preset from random weights on
the scenes corpus, yes/no questions named at random), then stage 1b, `vlm-grades train --config
configs/nanovlm-base.yaml --model-path <1a>/final` (balanced yes/no questions); then copies stage 1b's final/
model to --dest with BUILD.json: the commands, the thread count, the commit and the held-out scenes score per
answer kind (tests/test_base.py checks the shipped base
against it). The result depends on the thread count (the order of floating-point sums): the shipped base
was built with one thread. `vlm-grades train --model nanovlm` fine-tunes it.
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
FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "vlm_grades_adapter.json")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(ROOT / "runs" / "base-build"),
                    help="folder for the two stage-1 run folders (prior/, balanced/)")
    ap.add_argument("--dest", default=str(ROOT / "nanovlm" / "base"), help="folder for the base model")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (OMP_NUM_THREADS)")
    ap.add_argument("--from-runs", nargs=2, metavar=("PRIOR_RUN", "BALANCED_RUN"), default=None,
                    help="copy two existing stage-1 run folders instead of training")
    args = ap.parse_args(argv)
    prior, run = map(Path, args.from_runs or (Path(args.out) / "prior", Path(args.out) / "balanced"))
    stages = [["vlm-grades", "train", "--config", "configs/nanovlm-base-prior.yaml", "--out", str(prior)],
              ["vlm-grades", "train", "--config", "configs/nanovlm-base.yaml", "--model-path", str(prior / "final"),
               "--out", str(run)]]
    if not args.from_runs:
        env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
        for command in stages:
            subprocess.run(command + ["--no-progress"], cwd=ROOT, env=env, check=True)
    scores = json.loads((run / "eval" / "scenes_scores.json").read_text())
    base = Path(args.dest)
    base.mkdir(parents=True, exist_ok=True)
    for name in FILES:
        shutil.copy2(run / "final" / name, base / name)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout
    build = {"commands": [f"OMP_NUM_THREADS={args.threads} " + " ".join(c) for c in stages],
             "threads": args.threads, "commit": commit.strip(),
             "scenes_test": {"accuracy": scores["score"], "per_kind": scores["metrics"]["per_kind"], "n": scores["n"]}}
    (base / "BUILD.json").write_text(json.dumps(build, indent=2) + "\n")
    print(f"{base}: scenes test {scores['score']:.2f} ({scores['n']} samples), per kind "
          f"{ {k: round(v, 1) for k, v in scores['metrics']['per_kind'].items()} }")
    return 0


if __name__ == "__main__":
    sys.exit(main())
