"""End to end, at full length: the frozen-tower feature cache off (`--feature-cache 0`) against the default cache.

    python benchmarks/feature_cache_e2e.py [--scenarios default freeze qwen-lora] [--seeds N] [--threads N]
        [--out DIR] [--tag NAME] [--steps N] [--eval-max-samples N]   (both: smoke runs; the table is for full
        length and the whole test split)
    python benchmarks/feature_cache_e2e.py --report results/feature_cache_e2e-a.json ...-b.json --tag all

Scenarios: `default` (the embedded default command: tiny nanoVLM on easy-VQA, GradES, 1000 steps; the cache goes
on when GradES finalizes vision and projector), `freeze` (the same with `--freeze vision,projector`: the cache is
on from step 0) and `qwen-lora` (the tiny random Qwen2.5-VL of tests/tiny_qwen.py, LoRA on the language model,
vision and projector frozen, 100 steps at batch 4 on 200 easy-VQA samples). Each run is a `vlm-grades train`
process; the pair of a seed runs back to back, the order alternating with the seed. Reported per run: the
training loop's wall time (summary `wall_time`), the process's whole wall time (load, train, held-out eval),
steps, held-out score, the cache's last hit rate and whether it switched itself off. Ratio = time without the
cache / time with it (above 1: the cache is faster), per seed, then mean and range.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402
from common import fmt, mean  # noqa: E402

SCENARIOS = {
    "default": [],
    "freeze": ["--freeze", "vision,projector"],
    "qwen-lora": ["--model", "qwen2.5-vl", "--task", "easyvqa", "--lora", "--freeze", "vision,projector",
                  "--steps", "100", "--batch-size", "4", "--max-samples", "200", "--eval-max-samples", "64"],
}
CACHES = {"off": ["--feature-cache", "0"], "default": []}


def tiny_qwen(folder: Path) -> Path:
    sys.path.insert(0, str(common.ROOT / "tests"))
    from tiny_qwen import make_tiny_qwen

    return make_tiny_qwen(folder)


def run_one(argv: list[str], out: Path, threads: int) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
           "PYTHONPATH": str(common.ROOT)}
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "vlm_grades", "train", *argv, "--out", str(out), "--no-progress"],
                          env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        raise SystemExit(f"run failed ({done.returncode}): {' '.join(argv)}\n{done.stderr[-3000:]}")
    summary = json.loads((out / "summary.json").read_text())
    metrics = [json.loads(line) for line in open(out / "metrics.jsonl")]
    events = [json.loads(line) for line in open(out / "events.jsonl")]
    cache = [m["feature_cache"] for m in metrics if "feature_cache" in m]
    states = [(e["step"], e["state"], e.get("reason")) for e in events if e["type"] == "feature_cache"]
    return {"train_s": summary["wall_time"], "process_s": wall, "steps": summary["steps"],
            "score": (summary.get("eval") or {}).get("score"), "hit_rate": cache[-1]["hit_rate"] if cache else None,
            "cache_events": states}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scenarios", nargs="+", default=list(SCENARIOS), choices=list(SCENARIOS))
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--first-seed", type=int, default=0, help="seeds first-seed .. first-seed + seeds - 1")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--steps", type=int, default=None, help="smoke runs only: override every scenario's steps")
    p.add_argument("--eval-max-samples", type=int, default=None, help="smoke runs only: fewer held-out samples")
    p.add_argument("--out", default=None, help="run folders (default: a temporary folder, deleted)")
    p.add_argument("--results", default=str(common.RESULTS))
    p.add_argument("--report", nargs="+", default=None, metavar="JSON",
                   help="no runs: the table of the runs in these result files together")
    p.add_argument("--tag", default="")
    args = p.parse_args(argv)
    info = common.machine()
    if args.report:
        runs = [r for f in args.report for r in json.loads(Path(f).read_text())["runs"]]
    else:
        runs = measure(args)
    scenarios = [s for s in SCENARIOS if any(r["scenario"] == s for r in runs)]
    table = common.markdown(["scenario", "seeds", "train s (off -> default)", "train ratio off/default",
                             "process ratio", "score off / default", "steps off / default", "hit rate"],
                            [row(s, runs) for s in scenarios])
    text = f"{common.machine_line(info)}, commit {common.git_commit()}\n\n{table}\n"
    print(text)
    name = f"feature_cache_e2e{'-' + args.tag if args.tag else ''}"
    common.write_json(Path(args.results) / f"{name}.json", {"machine": info, "runs": runs, "table": table})
    (Path(args.results) / f"{name}.md").write_text(text)
    return 0


def measure(args) -> list[dict]:
    work = Path(args.out or tempfile.mkdtemp(prefix="cache-e2e-"))
    qwen = tiny_qwen(work / "tiny-qwen") if "qwen-lora" in args.scenarios else None
    runs: list[dict] = []
    for seed in range(args.first_seed, args.first_seed + args.seeds):
        for scenario in args.scenarios:
            flags = list(SCENARIOS[scenario]) + ["--seed", str(seed)]
            if scenario == "qwen-lora":
                flags += ["--model-path", str(qwen)]
            if args.steps:
                flags += ["--steps", str(args.steps)]
            if args.eval_max_samples:
                flags += ["--eval-max-samples", str(args.eval_max_samples)]
            order = list(CACHES) if seed % 2 == 0 else list(reversed(CACHES))
            for cache in order:
                out = work / f"{scenario}-{cache}-seed{seed}"
                shutil.rmtree(out, ignore_errors=True)
                result = run_one(flags + CACHES[cache], out, args.threads)
                runs.append({"scenario": scenario, "cache": cache, "seed": seed, **result})
                print(f"{scenario:9s} cache {cache:7s} seed {seed}: train {result['train_s']:.1f} s, process "
                      f"{result['process_s']:.1f} s, {result['steps']} steps, score {result['score']}, hit rate "
                      f"{result['hit_rate']}, {result['cache_events']}", flush=True)
    if args.out is None:
        shutil.rmtree(work, ignore_errors=True)
    return runs


def row(scenario: str, runs: list[dict]) -> list[str]:
    """A scenario's line: per seed with both runs, time without the cache / time with it."""
    mine = [r for r in runs if r["scenario"] == scenario]
    by_seed = {(r["seed"], r["cache"]): r for r in mine}
    pairs = [(by_seed[(s, "off")], by_seed[(s, "default")]) for s in sorted({r["seed"] for r in mine})
             if (s, "off") in by_seed and (s, "default") in by_seed]
    train = [off["train_s"] / on["train_s"] for off, on in pairs]
    whole = [off["process_s"] / on["process_s"] for off, on in pairs]
    return [scenario, str(len(pairs)),
            f"{mean(o['train_s'] for o, _ in pairs):.1f} -> {mean(c['train_s'] for _, c in pairs):.1f}",
            f"**{mean(train):.3f}** ({min(train):.3f}-{max(train):.3f})",
            f"{mean(whole):.3f} ({min(whole):.3f}-{max(whole):.3f})",
            f"{fmt(mean(o['score'] for o, _ in pairs))} / {fmt(mean(c['score'] for _, c in pairs))}",
            f"{mean(o['steps'] for o, _ in pairs):.0f} / {mean(c['steps'] for _, c in pairs):.0f}",
            fmt(mean(c["hit_rate"] for _, c in pairs), 3)]


if __name__ == "__main__":
    raise SystemExit(main())
