"""End to end: GradES against no stopping and classic early stopping, same data, same planned steps, N seeds.

    python benchmarks/end_to_end.py [--presets tiny smol qwen] [--tasks easyvqa easyvqa-caption easyvqa-scratch]
        [--modes none classic grades official snr] [--seeds N] [--threads N] [--steps N] [--max-samples N]
        [--eval-max-samples N] [--batch-size N] [--out DIR] [--tag NAME]

Tasks: `easyvqa` is the embedded default (tiny: fine-tuning the shipped base on the questions),
`easyvqa-caption` the caption task from random weights, `easyvqa-scratch` the questions from random weights
(`--from-scratch`, the pretraining recipe of earlier releases, with its late yes/no phase).
The thread count changes the order of floating-point sums and so the runs: run the grid once per count
(`--threads 1 --tag t1`, `--threads 2 --tag t2`) and pool the files with `--report` (pairs are matched by
thread count and seed; the median speedup and the worst run are over all pairs).

Every run goes through `vlm_grades.training.run.train(TrainConfig.build({...}))` into a run folder under --out; the
hyper-parameters are the TrainConfig defaults of the preset (read at run time), only the sizes given here
change. Modes: `none`, `classic` (validation loss every classic_every steps on val_max_samples samples, both
scaled with --steps so a short run checks as often, at the same relative cost, as the default run), `grades` (the default GradES settings) and `official`
(`grades: {preset: official}`, the official package's rule, with absolute thresholds chosen on the
validation split by a separate calibration run; see `calibrate_official`). Runs are interleaved: for each
seed all modes run back to back, the mode order rotating with the seed.

Per mode: steps taken, training-loop wall time (including classic's validation passes, which the run's own
`wall_time` leaves out), its process CPU time, held-out evaluation time (separately), training FLOPs from
vlm_grades/report/flops.py on the run folder, the held-out score (mean and spread over seeds) and the
speedups against `none` (per-seed ratio none / mode, mean over seeds). The test split is only scored.
Checkpoints are switched off (checkpoint_every > steps) so no mode pays for writing them.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402
from common import fmt, fmt_flops, mean, median, spread  # noqa: E402

PRESETS = {"tiny": {"model": "nanovlm", "preset": "tiny"},
           "smol": {"model": "nanovlm", "preset": "smol"},
           "qwen": {"model": "qwen2.5-vl"}}            # tiny random Qwen2.5-VL (tests/tiny_qwen.py): code path only
DEFAULT_SEEDS = {"tiny": 3, "smol": 1, "qwen": 1}
QWEN_SIZES = {"steps": 30, "max_samples": 256, "eval_max_samples": 64}   # when the flags are not given
MODES = ("none", "classic", "grades", "official", "snr")
TASKS = {"easyvqa": {"task": "easyvqa"}, "easyvqa-caption": {"task": "easyvqa-caption"},
         "easyvqa-scratch": {"task": "easyvqa", "from_scratch": True}}
CALIBRATION_SEED = 1000            # the official-threshold calibration run never shares a benchmark seed
NEVER = 1e-30                      # a threshold nothing falls below: monitor without freezing
TARGET_SPEEDUP, TARGET_SCORE_DROP = 1.6, 0.5
# per task: (median wall speedup, mean score drop, worst single-run drop); None: no speed target
TARGETS = {"easyvqa": (2.0, 0.5, 1.0), "easyvqa-caption": (1.9, 0.5, None), "easyvqa-scratch": (None, None, 1.0)}


# ------------------------------------------------------------------ instrumentation
class Timers:
    def __init__(self):
        self.loop_wall = self.loop_cpu = self.validation = self.eval = 0.0


@contextlib.contextmanager
def instrument(timers: Timers, on_step: Callable[[Any], None] | None = None):
    """Times the training loop (Trainer.fit: steps plus classic's validation passes), the validation passes
    and the held-out evaluation of one train() call; optionally calls on_step(trainer) after each step."""
    import vlm_grades.training.run as T
    from vlm_grades.training.stopping import ClassicStopping as C

    orig_fit, orig_val, orig_eval, orig_log = (T.Trainer.fit, C.validation_loss, T.evaluate_held_out,
                                               T.Trainer._log)

    def fit(self):
        t0, c0 = time.perf_counter(), time.process_time()
        try:
            return orig_fit(self)
        finally:
            timers.loop_wall += time.perf_counter() - t0
            timers.loop_cpu += time.process_time() - c0

    def validation_loss(self):
        t0 = time.perf_counter()
        try:
            return orig_val(self)
        finally:
            timers.validation += time.perf_counter() - t0

    def evaluate_held_out(*a, **k):
        t0 = time.perf_counter()
        try:
            return orig_eval(*a, **k)
        finally:
            timers.eval += time.perf_counter() - t0

    def _log(self, *a, **k):
        orig_log(self, *a, **k)
        if on_step is not None:
            on_step(self)

    T.Trainer.fit, C.validation_loss, T.evaluate_held_out, T.Trainer._log = (
        fit, validation_loss, evaluate_held_out, _log)
    try:
        yield timers
    finally:
        T.Trainer.fit, C.validation_loss, T.evaluate_held_out, T.Trainer._log = (
            orig_fit, orig_val, orig_eval, orig_log)


# ------------------------------------------------------------------ configurations
def base_layer(preset: str, task: str, args, extra: dict[str, Any]) -> dict[str, Any]:
    from vlm_grades.config import TrainConfig

    layer = {**PRESETS[preset], **TASKS[task], "progress": False, **extra}
    sizes = dict(QWEN_SIZES) if preset == "qwen" else {}
    for key in ("steps", "max_samples", "eval_max_samples", "batch_size"):
        if getattr(args, key) is not None:
            sizes[key] = getattr(args, key)
    layer.update(sizes)
    default = TrainConfig.build({k: v for k, v in layer.items() if k not in sizes})   # the preset's own defaults
    steps = sizes.get("steps", default.steps)
    layer["checkpoint_every"] = steps + 1
    # classic checks as often per run as the default-length run does, on a validation set scaled the same way,
    # so its validation passes take the same share of the training time at any --steps
    scale = min(1.0, steps / default.steps)
    layer["classic_every"] = max(1, round(default.classic_every * scale))
    if default.val_max_samples:
        layer["val_max_samples"] = max(64, round(default.val_max_samples * scale))
    return layer


def mode_layer(mode: str, official_tau: dict[str, float] | None) -> dict[str, Any]:
    if mode == "none":
        return {"stopping": "none"}
    if mode == "classic":
        return {"stopping": "classic"}
    if mode == "grades":
        return {"stopping": "grades"}
    if mode == "official":
        return {"stopping": "grades", "grades": {"preset": "official", "tau": dict(official_tau)}}
    if mode == "snr":
        return {"stopping": "grades", "grades": {"metric": "grad_snr"}}
    raise ValueError(mode)


def run_one(layer: dict[str, Any], out: Path, on_step=None) -> dict[str, Any]:
    from vlm_grades.config import TrainConfig
    from vlm_grades.report import flops
    from vlm_grades.report.run_data import RunData
    from vlm_grades.training.run import train

    if out.exists():
        shutil.rmtree(out)
    cfg = TrainConfig.build({**layer, "out": str(out)})
    timers = Timers()
    t0 = time.perf_counter()
    with instrument(timers, on_step):
        summary = train(cfg)
    total = time.perf_counter() - t0
    f = flops.estimate(RunData.load(out))
    ev = summary.get("eval") or {}
    return {"run": str(out), "seed": cfg.seed, "steps": summary["steps"], "planned_steps": cfg.steps,
            "stop_reason": summary["stop_reason"], "train_wall": summary["wall_time"],
            "loop_wall": timers.loop_wall, "loop_cpu": timers.loop_cpu, "validation_s": timers.validation,
            "eval_s": timers.eval, "total_s": total, "score": ev.get("score"), "eval_n": ev.get("n"),
            "flops": f["total"]["actual"], "flops_baseline": f["total"]["baseline"],
            "flops_saved_fraction": f["total"]["saved_fraction"], "frozen": summary.get("frozen"),
            "batch_size": cfg.batch_size, "classic_every": cfg.classic_every,
            "lr": {"vision": cfg.lr_vision, "projector": cfg.lr_projector, "language": cfg.lr_language},
            "grades": cfg.grades}


# ------------------------------------------------------------------ official thresholds, chosen on `val`
def calibrate_official(layer: dict[str, Any], out: Path, val_samples_n: int, tolerance: float,
                       points: int = 6) -> dict[str, Any]:
    """One calibration run (seed CALIBRATION_SEED, training split) with the official rule and thresholds
    nothing falls below, so every matrix's weight-change statistic is logged at every step; the model is
    scored on the validation split at `points` steps from the end of the grace period to the planned end.
    The target stop step S is the earliest of those whose validation score is within `tolerance` of the
    last one. Per modality, tau is the smallest threshold under which every matrix of the modality would
    have frozen by S on this trajectory (the largest, over its matrices, of each matrix's smallest
    statistic between the grace period's end and S), times 1.01. The test split is not touched."""
    from eval.runner import evaluate
    from vlm_grades.config import TrainConfig
    from vlm_grades.grades import GradESConfig
    from vlm_grades.training.data import load_split

    layer = {**layer, **mode_layer("official", {"vision": NEVER, "language": NEVER}), "seed": CALIBRATION_SEED,
             "eval_split": None}
    cfg = TrainConfig.build({**layer, "out": str(out)})
    gcfg = GradESConfig.from_dict(cfg.grades)
    grace = gcfg.validate(cfg.steps)
    steps = sorted({grace + round(i * (cfg.steps - grace) / (points - 1)) for i in range(points)} | {cfg.steps})
    steps = [s for s in steps if 1 <= s <= cfg.steps]
    val = load_split(cfg, cfg.val_split or "val", val_samples_n, "validation")
    scores: dict[int, float] = {}

    def on_step(trainer):
        s = trainer.state.step
        if s in steps and s not in scores:
            trainer.module.eval()
            res = evaluate(trainer.adapter, val, cfg.task, out / "val" / f"step-{s}", batch_size=cfg.eval_batch_size,
                           max_new_tokens=cfg.max_new_tokens, progress=False)
            trainer.module.train()
            scores[s] = float(res["score"])

    record = run_one(layer, out, on_step)
    last = scores[max(scores)]
    target = min(s for s, v in scores.items() if v >= last - tolerance)
    comps = json.loads((out / "components.json").read_text())["components"]
    modality = {c["name"]: c["modality"] for c in comps}
    records = [json.loads(line) for line in (out / "convergence.jsonl").read_text().splitlines()]
    records = [r for r in records if r["step"] >= grace and r["values"]]
    if records and records[0]["step"] > target:     # no statistic before S (very short runs): the first one
        target = records[0]["step"]
    lowest: dict[str, float] = {}
    for rec in records:
        if rec["step"] > target:
            continue
        for name, v in rec["values"].items():
            v = float(v)
            if math.isfinite(v):
                lowest[name] = min(lowest.get(name, math.inf), v)
    tau = {}
    for m in ("vision", "language"):
        vals = [v for n, v in lowest.items() if modality.get(n) == m]
        if vals:
            tau[m] = max(max(vals) * 1.01, 1e-12)
    return {"tau": tau, "target_step": target, "val_scores": {str(k): v for k, v in sorted(scores.items())},
            "grace": grace, "tolerance": tolerance, "val_samples": len(val), "seed": CALIBRATION_SEED,
            "run": record}


def earlier_calibration(path: Path, layer: dict[str, Any]) -> dict[str, Any]:
    """The official calibration recorded in an earlier results file for the same sizes as `layer`."""
    try:
        groups = json.loads(path.read_text())["groups"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise SystemExit(f"--official-from {path}: not an end_to_end results file ({e})")
    same = ("preset", "task", "steps", "batch_size", "max_samples")
    for g in groups:
        if g.get("official_calibration") and all(g["layer"].get(k) == layer.get(k) for k in same):
            return g["official_calibration"]
    raise SystemExit(f"--official-from {path}: no official calibration for {layer.get('preset')} / "
                     f"{layer.get('task')} at these sizes ({', '.join(f'{k} {layer.get(k)}' for k in same[2:])})")


# ------------------------------------------------------------------ aggregation and tables
def pair_key(r: dict[str, Any]) -> tuple[int, int]:
    return r.get("threads", 1), r["seed"]


def aggregate(runs: list[dict[str, Any]], modes: list[str], task: str | None = None) -> dict[str, dict[str, Any]]:
    by_mode = {m: {pair_key(r): r for r in runs if r["mode"] == m} for m in modes}
    base = by_mode.get("none", {})
    out = {}
    base_score = mean(r["score"] for r in base.values())

    def ratio(key, r):
        b = base.get(pair_key(r))
        return b[key] / r[key] if b and b.get(key) and r.get(key) else None

    def delta(r):
        b = base.get(pair_key(r))
        return r["score"] - b["score"] if b and b.get("score") is not None and r.get("score") is not None else None

    for m in modes:
        rs = list(by_mode[m].values())
        if not rs:
            continue
        score = mean(r["score"] for r in rs)
        agg = {"runs": len(rs), "steps": mean(r["steps"] for r in rs), "planned_steps": rs[0]["planned_steps"],
               "train_wall": mean(r["train_wall"] for r in rs), "loop_wall": mean(r["loop_wall"] for r in rs),
               "loop_cpu": mean(r["loop_cpu"] for r in rs), "validation_s": mean(r["validation_s"] for r in rs),
               "eval_s": mean(r["eval_s"] for r in rs), "flops": mean(r["flops"] for r in rs),
               "score": score, "score_sd": spread(r["score"] for r in rs),
               "score_delta": None if score is None or base_score is None else score - base_score,
               "speedup_wall": mean(ratio("loop_wall", r) for r in rs),
               "speedup_wall_min": min((x for x in (ratio("loop_wall", r) for r in rs) if x), default=None),
               "speedup_cpu": mean(ratio("loop_cpu", r) for r in rs),
               "speedup_flops": mean(ratio("flops", r) for r in rs),
               "speedup_wall_median": median(ratio("loop_wall", r) for r in rs),
               "worst_delta": min((d for d in map(delta, rs) if d is not None), default=None),
               "stopped": sum(r["steps"] < r["planned_steps"] for r in rs)}
        if m in ("grades", "official", "snr") and base and task in TARGETS:
            speed, drop, worst = TARGETS[task]
            ok = [speed is None or (agg["speedup_wall_median"] or 0) >= speed,
                  drop is None or (agg["score_delta"] is not None and agg["score_delta"] >= -drop),
                  worst is None or (agg["worst_delta"] is not None and agg["worst_delta"] >= -worst)]
            agg["target_met"] = all(ok)
        elif m in ("grades", "official") and base:
            # wall and CPU time both: on a shared machine a load change between runs moves the wall ratio alone
            fast = min(agg["speedup_wall"] or 0, agg["speedup_cpu"] or 0) >= TARGET_SPEEDUP
            agg["target_met"] = bool(fast and agg["score_delta"] is not None and agg["score_delta"] >= -TARGET_SCORE_DROP)
        out[m] = agg
    return out


def table(agg: dict[str, dict[str, Any]]) -> str:
    headers = ["mode", "runs", "stopped", "steps / planned", "train loop wall s (val. passes s)", "eval s",
               "train FLOPs", "speedup wall (median)", "speedup CPU", "speedup FLOPs", "held-out score (sd)",
               "score vs none (worst run)", "target"]
    rows = []
    for m, a in agg.items():
        target = {True: "met", False: "missed"}.get(a.get("target_met"), "-")
        rows.append([m, a["runs"], a.get("stopped", "-"), f"{a['steps']:.0f} / {a['planned_steps']}",
                     f"{fmt(a['loop_wall'], 1)} ({fmt(a['validation_s'], 1)})", fmt(a["eval_s"], 1),
                     fmt_flops(a["flops"]),
                     f"{fmt(a['speedup_wall'], 2, 'x')} ({fmt(a.get('speedup_wall_median'), 2, 'x')})",
                     fmt(a["speedup_cpu"], 2, "x"), fmt(a["speedup_flops"], 2, "x"),
                     f"{fmt(a['score'])} ({fmt(a['score_sd'])})",
                     f"{fmt(a['score_delta'], 2)} ({fmt(a.get('worst_delta'), 2)})", target])
    return common.markdown(headers, rows)


# ------------------------------------------------------------------ main
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--presets", nargs="+", default=["tiny", "smol", "qwen"], choices=list(PRESETS),
                    help="model presets (qwen: a tiny random Qwen2.5-VL, code path only)")
    ap.add_argument("--tasks", nargs="+", default=["easyvqa", "easyvqa-caption"],
                    choices=list(TASKS), help="tasks (smol and qwen run the first one only)")
    ap.add_argument("--modes", nargs="+", default=list(MODES[:4]), choices=list(MODES),
                    help="stopping modes (snr: GradES with the grad_snr statistic; not run unless named)")
    ap.add_argument("--seeds", type=int, default=None, help="seeds per mode (default: tiny 3, smol 1, qwen 1)")
    ap.add_argument("--first-seed", type=int, default=0,
                    help="seeds are first-seed .. first-seed+seeds-1 (to split a grid over processes)")
    ap.add_argument("--steps", type=int, default=None, help="planned steps (default: the preset's)")
    ap.add_argument("--max-samples", type=int, default=None, help="training samples (default: all)")
    ap.add_argument("--eval-max-samples", type=int, default=None, help="held-out test samples scored (default: all)")
    ap.add_argument("--batch-size", type=int, default=None, help="batch size (default: the preset's)")
    ap.add_argument("--calibration-val-samples", type=int, default=1000,
                    help="validation samples scored by the official-threshold calibration run")
    ap.add_argument("--tolerance", type=float, default=TARGET_SCORE_DROP,
                    help="official calibration: score points below the last validation score allowed at the stop")
    ap.add_argument("--official-from", metavar="JSON", default=None,
                    help="official mode: take the thresholds calibrated by an earlier results file of the same "
                         "preset, task, steps and batch instead of a new calibration run (to add seeds)")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (0: leave as is)")
    ap.add_argument("--caps", type=int, nargs="+", default=None,
                    help="the budget axis (budget_axis.py): per seed the plain cosine run of the default length, "
                         "GradES capped at each of these --steps, and a plain cosine run planned to the steps each "
                         "GradES run took; first preset and task only")
    ap.add_argument("--skip-plain", action="store_true",
                    help="--caps: leave out the plain run of the default length (run by another process)")
    ap.add_argument("--skip-budget", action="store_true",
                    help="--caps: leave out the equal-budget runs (e.g. a cap whose GradES run hashes like another)")
    ap.add_argument("--only-plain", action="store_true",
                    help="--caps: only the plain run of the default length (to add it in another process)")
    ap.add_argument("--report-caps", metavar="JSON", nargs="+", default=None,
                    help="only print the --caps tables from results JSON files (pooled)")
    ap.add_argument("--out", default=None, help="folder for the run folders (default runs/bench-e2e-<time>)")
    ap.add_argument("--tag", default="", help="suffix of the results file names")
    ap.add_argument("--results", default=str(common.RESULTS), help="folder for end_to_end[-tag].json/.md")
    ap.add_argument("--report", metavar="JSON", nargs="+", default=None,
                    help="only print the tables (and rewrite the .md) from results JSON files, e.g. of an "
                         "interrupted run or of processes that ran different seeds (merged per preset and task)")
    args = ap.parse_args(argv)
    name = "end_to_end" + (f"-{args.tag}" if args.tag else "")
    if args.report:
        return report([Path(p) for p in args.report], Path(args.results), name)
    if args.report_caps:
        import budget_axis

        return budget_axis.report_caps([Path(p) for p in args.report_caps], Path(args.results) / f"{name}.md")

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out or common.ROOT / "runs" / f"bench-e2e-{time.strftime('%Y%m%d-%H%M%S')}")
    out.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {"benchmark": "end_to_end", "commit": common.git_commit(), "machine": common.machine(),
                              "argv": sys.argv[1:] if argv is None else argv, "groups": []}
    print(f"# end to end: {common.machine_line(result['machine'])}, commit {result['commit']}", flush=True)
    md = [f"Machine: {common.machine_line(result['machine'])}; commit {result['commit']}."]

    if args.caps:
        import budget_axis

        preset, task = args.presets[0], args.tasks[0]
        seeds = list(range(args.first_seed, args.first_seed + (args.seeds or DEFAULT_SEEDS[preset])))
        layer = {k: v for k, v in base_layer(preset, task, args, {}).items()
                 if k not in ("checkpoint_every", "steps")}
        return budget_axis.main_caps(args, layer, out / f"{preset}-{task}-caps", seeds, run_one,
                                     torch.get_num_threads(), name)

    for preset in args.presets:
        extra: dict[str, Any] = {}
        if preset == "qwen":
            sys.path.insert(0, str(common.ROOT / "tests"))
            from tiny_qwen import make_tiny_qwen

            extra["model_path"] = str(make_tiny_qwen(out / "qwen-model"))
        tasks = args.tasks if preset == "tiny" else args.tasks[:1]
        for task in tasks:
            layer = base_layer(preset, task, args, extra)
            seeds = list(range(args.first_seed, args.first_seed + (args.seeds or DEFAULT_SEEDS[preset])))
            group: dict[str, Any] = {"preset": preset, "task": task, "seeds": seeds, "layer": layer, "runs": []}
            folder = out / f"{preset}-{task}"
            official_tau = None
            if "official" in args.modes:
                if args.official_from:
                    cal = earlier_calibration(Path(args.official_from), layer)
                    source = args.official_from
                else:
                    t0 = time.perf_counter()
                    cal = calibrate_official(layer, folder / "official-calibration", args.calibration_val_samples,
                                             args.tolerance)
                    cal["seconds"] = time.perf_counter() - t0
                    source = "validation"
                official_tau = cal["tau"]
                group["official_calibration"] = cal
                print(f"[{preset} {task}] official thresholds from {source}: {official_tau} (target stop step "
                      f"{cal['target_step']}, val scores {cal['val_scores']}, calibration run {cal['seconds']:.0f} s)",
                      flush=True)
            for i, seed in enumerate(seeds):
                order = args.modes[i % len(args.modes):] + args.modes[:i % len(args.modes)]
                for mode in order:
                    rec = run_one({**layer, **mode_layer(mode, official_tau), "seed": seed},
                                  folder / f"{mode}-seed{seed}")
                    rec["mode"], rec["threads"] = mode, torch.get_num_threads()
                    group["runs"].append(rec)
                    print(f"[{preset} {task}] {mode:<8} seed {seed}: {rec['steps']}/{rec['planned_steps']} steps, "
                          f"loop {rec['loop_wall']:.1f} s (val {rec['validation_s']:.1f} s, cpu {rec['loop_cpu']:.1f}"
                          f" s), eval {rec['eval_s']:.1f} s, score {fmt(rec['score'])}, stop: {rec['stop_reason']}",
                          flush=True)
                    group["aggregate"] = aggregate(group["runs"], args.modes, task)
                    common.write_json(Path(args.results) / f"{name}.json", {**result, "groups": result["groups"] + [group]})
            result["groups"].append(group)
            text = group_markdown(group)
            print("\n" + text + "\n", flush=True)
            md += ["", text]
    common.write_json(Path(args.results) / f"{name}.json", result)
    (Path(args.results) / f"{name}.md").write_text("\n".join(md + ["", NOTES]) + "\n")
    print(NOTES)
    return 0


def group_markdown(group: dict[str, Any]) -> str:
    layer, runs, cal = group["layer"], group["runs"], group.get("official_calibration")
    r0 = runs[0]
    threads = sorted({r.get("threads", 1) for r in runs})
    head = (f"### {group['preset']} / {group['task']}: {len(group['seeds'])} seed(s) x threads "
            f"{'+'.join(map(str, threads))}, {r0['planned_steps']} planned "
            f"steps, batch {r0['batch_size']}, train samples {layer.get('max_samples') or 'all'}, test samples "
            f"{r0['eval_n']}, classic every {r0['classic_every']} steps on {layer.get('val_max_samples')} val samples")
    if cal:
        head += (f"; official tau {json.dumps({k: float(f'{v:.4g}') for k, v in cal['tau'].items()})} "
                 f"(calibrated on val: target stop step {cal['target_step']})")
    if group["preset"] == "qwen":      # a random model: the code path runs, its scores mean nothing
        head += "; code path only, no target"
        for a in group["aggregate"].values():
            a.pop("target_met", None)
    return head + "\n\n" + table(group["aggregate"])


def merge_results(paths: list[Path]) -> dict[str, Any]:
    """Results JSON files of several processes as one: groups with the same preset and task pool their runs."""
    results = [json.loads(p.read_text()) for p in paths]
    merged = {**results[0], "groups": []}
    commits = sorted({r["commit"] for r in results})
    merged["commit"] = " + ".join(commits)
    by_key: dict[tuple[str, str], dict[str, Any]] = {}
    for r in results:
        for g in r["groups"]:
            key = (g["preset"], g["task"])
            if key not in by_key:
                by_key[key] = {**g, "runs": [], "seeds": []}
                merged["groups"].append(by_key[key])
            into = by_key[key]
            into["runs"] += g["runs"]
            into["seeds"] = sorted(set(into["seeds"]) | set(g["seeds"]))
            if g.get("official_calibration") and not into.get("official_calibration"):
                into["official_calibration"] = g["official_calibration"]
    return merged


def report(paths: list[Path], results: Path, name: str) -> int:
    """Tables from (possibly partial) results JSON files, e.g. of an interrupted run or of processes that ran
    different seeds: seeds whose `none` run finished count, with whichever modes they finished (the seeds
    column says how many per mode)."""
    result = merge_results(paths)
    md = [f"Machine: {common.machine_line(result['machine'])}; commit {result['commit']}."]
    for group in result["groups"]:
        modes = list(dict.fromkeys(r["mode"] for r in group["runs"]))
        seeds = sorted({r["seed"] for r in group["runs"] if r["mode"] == "none"})
        if not seeds:
            continue
        group["seeds"] = seeds
        group["runs"] = [r for r in group["runs"] if r["seed"] in seeds]
        group["aggregate"] = aggregate(group["runs"], modes, group["task"])
        text = group_markdown(group)
        print("\n" + text + "\n")
        md += ["", text]
    (results / f"{name}.md").write_text("\n".join(md + ["", NOTES]) + "\n")
    print(NOTES)
    return 0


NOTES = ("speedup = none / mode per seed, mean over seeds; wall and CPU are the training loop (steps plus classic's "
         "validation passes), eval is the held-out scoring, reported apart; FLOPs from vlm_grades/report/flops.py; "
         "score = held-out test score, sd over seeds; target: easyvqa (the fine-tuning default) median wall "
         "speedup >= 2.0x, mean score drop <= 0.5, no run more than 1 point worse; easyvqa-caption >= 1.9x and "
         "<= 0.5; easyvqa-scratch no run more than 1 point worse; other tasks: speedup wall and speedup CPU both "
         f">= {TARGET_SPEEDUP}x and score no more than {TARGET_SCORE_DROP} below none.")


if __name__ == "__main__":
    sys.exit(main())
