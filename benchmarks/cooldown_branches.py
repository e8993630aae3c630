"""Which wsd cooldown anneals best? Cooldowns branched off one constant-rate run, each scored on the test split.

A constant-rate run (`vlm-grades train --model nanovlm --schedule constant --tau 1e-30 --checkpoint-every 100
--eval-split= --seed S --out RUN`: GradES logs its statistic but never freezes) is trained once; each variant
resumes a copy of its checkpoint at step T with `--schedule wsd --decay-at T` and its cooldown (length as a
fraction of T, shape, final rate), trains to the cooldown's end and scores the test split. Every branch of a
seed shares the same first T steps, so the variants differ only in their cooldown.

    python benchmarks/cooldown_branches.py RUN_S0 RUN_S1 --variants 500:0.2:linear:0.1 500:0.4:linear:0.1 \
        --jobs 2 --out /tmp/branches --results benchmarks/results/cooldown_branches.jsonl

A variant is T:COOLDOWN:SHAPE:MIN_RATIO. One torch thread per branch; --jobs branches at a time.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import yaml


def branch(src: Path, step: int, cooldown: float, shape: str, min_ratio: float, out: Path) -> dict:
    """Copies `src`'s logs and its checkpoint at `step` to `out`, then resumes it there as a wsd cooldown."""
    from vlm_grades.training.run_folder import LOGS
    from vlm_grades.training.schedule import cooldown_steps

    if out.exists():
        shutil.rmtree(out)
    (out / "checkpoints").mkdir(parents=True)
    for name in ("config.yaml", "components.json", *(f"{kind}.jsonl" for kind in LOGS)):
        shutil.copy(src / name, out / name)
    shutil.copytree(src / "checkpoints" / f"step-{step}", out / "checkpoints" / f"step-{step}")
    settings = yaml.safe_load((src / "config.yaml").read_text())
    settings.pop("grades", None)
    settings.update(out=str(out), schedule="wsd", decay_at=step, cooldown=cooldown, cooldown_shape=shape,
                    min_lr_ratio=min_ratio, steps=step + cooldown_steps(step, cooldown), stopping="none",
                    eval_split="test", checkpoint_every=100000, progress=False)
    code = ("import json, sys, torch; torch.set_num_threads(1)\n"
            "from vlm_grades.config import TrainConfig\nfrom vlm_grades.training.run import train\n"
            "s = train(TrainConfig.build(json.loads(sys.argv[1])), resume=True)\n"
            "print(json.dumps({'steps': s['steps'], 'score': s['eval']['score']}))")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", code, json.dumps(settings)], env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"branch {out} failed:\n{done.stderr[-2000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    shutil.rmtree(out / "checkpoints")
    return {"run": str(src), "seed": settings["seed"], "decay_at": step, "cooldown": cooldown, "shape": shape,
            "min_ratio": min_ratio, **result}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("runs", nargs="+", type=Path, help="constant-rate run folders with checkpoints every 100 steps")
    ap.add_argument("--variants", nargs="+", required=True, help="T:COOLDOWN:SHAPE:MIN_RATIO")
    ap.add_argument("--jobs", type=int, default=1, help="branches trained at a time (one thread each)")
    ap.add_argument("--out", type=Path, required=True, help="folder for the branch run folders")
    ap.add_argument("--results", type=Path, required=True, help="JSON lines file the results are appended to")
    args = ap.parse_args()
    todo = []
    for v in args.variants:
        t, c, shape, mr = v.split(":")
        for run in args.runs:
            if not (run / "checkpoints" / f"step-{int(t)}").is_dir():
                raise SystemExit(f"{run}: no checkpoints/step-{int(t)} to branch from")
            todo.append((run, int(t), float(c), shape, float(mr),
                         args.out / f"{run.name}-{t}-{shape}{c}-m{mr}"))

    def one(job):
        rec = branch(*job)
        with open(args.results, "a") as f:
            f.write(json.dumps(rec) + "\n")
        print(f"seed {rec['seed']} decay at {rec['decay_at']} cooldown {rec['cooldown']} {rec['shape']} to "
              f"{rec['min_ratio']}: {rec['steps']} steps, {rec['score']:.2f}", flush=True)

    with ThreadPoolExecutor(args.jobs) as pool:
        list(pool.map(one, todo))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
