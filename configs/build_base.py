"""Build a stage-1 nanoVLM base for fine-tuning with the project's own command.

    python configs/build_base.py [--out runs/base-build] [--dest runs/nanovlm-base] [--threads 1]

Runs `vlm-grades train --config configs/nanovlm-base.yaml` (stage 1: the tiny preset from random weights on
the scenes corpus), then copies the run's final/ model to --dest with BUILD.json: the command, the thread
count, the commit and the held-out scenes score per answer kind. Fine-tune it with
`vlm-grades train --model nanovlm --model-path DEST --mix-fraction 0 ...`. The result depends on the thread
count (the order of floating-point sums). No base ships yet: see docs/GRADES.md ("A fine-tuning base").
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
    ap.add_argument("--out", default=str(ROOT / "runs" / "base-build"), help="run folder of the stage-1 run")
    ap.add_argument("--dest", default=str(ROOT / "runs" / "nanovlm-base"), help="folder for the base model")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (OMP_NUM_THREADS)")
    ap.add_argument("--from-run", default=None, help="copy an existing stage-1 run folder instead of training")
    args = ap.parse_args(argv)
    run = Path(args.from_run or args.out)
    command = ["vlm-grades", "train", "--config", "configs/nanovlm-base.yaml", "--out", str(run), "--no-progress"]
    if not args.from_run:
        env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
        subprocess.run(command, cwd=ROOT, env=env, check=True)
    scores = json.loads((run / "eval" / "scenes_scores.json").read_text())
    base = Path(args.dest)
    base.mkdir(parents=True, exist_ok=True)
    for name in FILES:
        shutil.copy2(run / "final" / name, base / name)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout
    build = {"command": f"OMP_NUM_THREADS={args.threads} " + " ".join(command[:-1]), "threads": args.threads,
             "commit": commit.strip(),
             "scenes_test": {"accuracy": scores["score"], "per_kind": scores["metrics"]["per_kind"], "n": scores["n"]}}
    (base / "BUILD.json").write_text(json.dumps(build, indent=2) + "\n")
    print(f"{base}: scenes test {scores['score']:.2f} ({scores['n']} samples), per kind "
          f"{ {k: round(v, 1) for k, v in scores['metrics']['per_kind'].items()} }")
    return 0


if __name__ == "__main__":
    sys.exit(main())
