"""The budget axis of end_to_end.py (issue 23): `end_to_end.py --caps 1000 2000 4000`.

Per seed: (a) the plain cosine run of the default length (`--stopping none --schedule cosine`, the preset's
--steps), GradES with the preset's defaults (on the fine-tuning default: --schedule wsd) capped at each
of --caps, and (b) for every distinct number of steps the GradES runs took, a plain cosine run planned to
exactly that many steps (the equal-budget baseline: what a user who knew the right length would get). The
warm-up is the preset's, in steps, so (b) differs from GradES only in the schedule and the stop. Every run
records the sha256 of its final weights: runs at different caps that hash alike are the same run.

A plain run recorded in another session (`"recorded": true`, e.g. an earlier end_to_end.py file) gives (a)'s
score; its time is then taken as (b)'s, scaled to (a)'s steps ("timed from (b)"), since wall and CPU times of
different sessions on a shared machine do not compare.

Targets (issue 23, tiny fine-tuning default): 1 every GradES run stops, and per seed the stop step varies by
at most 25% across caps; 2 every GradES run scores at least (a) - 0.3 and the mean loss is at most 0.15;
3 at cap 4000 no run takes more than 1000 steps; 4 against (b), at most 0.1 points lost on average;
5 at the default cap, median wall speedup against (a) at least 1.4x.
"""
from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

import common
from common import fmt, mean, median


def weights_hash(run: str | Path) -> str:
    """sha256 of the final tensors (names and bytes, sorted by name): safetensors files of equal tensors can
    differ in their header's key order."""
    from safetensors.torch import load_file

    h = hashlib.sha256()
    for f in sorted((Path(run) / "final").glob("*.safetensors")):
        tensors = load_file(str(f))
        for name in sorted(tensors):
            h.update(name.encode())
            h.update(tensors[name].contiguous().view(-1).view(dtype=__import__("torch").uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def run_caps(args, layer: dict[str, Any], folder: Path, seeds: list[int], run_one, threads: int,
             save) -> list[dict[str, Any]]:
    from vlm_grades.config import TrainConfig

    default_steps = TrainConfig.build({k: v for k, v in layer.items() if k not in ("steps",)}).steps
    runs: list[dict[str, Any]] = []

    def one(kind: str, extra: dict[str, Any], seed: int, name: str) -> dict[str, Any]:
        steps = extra.get("steps", default_steps)
        rec = run_one({**layer, **extra, "seed": seed, "checkpoint_every": steps + 1}, folder / name)
        rec.update(mode=kind, threads=threads, cap=steps if kind == "grades" else None,
                   weights=weights_hash(rec["run"]))
        runs.append(rec)
        print(f"[caps] {kind:<7} seed {seed} {name}: {rec['steps']}/{rec['planned_steps']} steps, loop "
              f"{rec['loop_wall']:.1f} s (cpu {rec['loop_cpu']:.1f} s), score {fmt(rec['score'])}, weights "
              f"{rec['weights']}, stop: {rec['stop_reason']}", flush=True)
        save(runs)
        return rec

    # the most informative first (the grid may not finish on a shared machine): GradES at the first cap, its
    # equal-budget baseline, the plain run, then the other caps and their baselines if their steps differ
    for seed in seeds:
        budgets: set[int] = set()
        if args.only_plain:
            one("plain", {"stopping": "none", "schedule": "cosine"}, seed, f"plain-{default_steps}-seed{seed}")
            continue

        def grades_at(cap: int) -> None:
            steps = one("grades", {"stopping": "grades", "steps": cap}, seed, f"grades-cap{cap}-seed{seed}")["steps"]
            if steps not in budgets and not args.skip_budget:
                budgets.add(steps)
                one("budget", {"stopping": "none", "schedule": "cosine", "steps": steps}, seed,
                    f"budget-{steps}-seed{seed}")

        grades_at(args.caps[0])
        if not args.skip_plain:
            one("plain", {"stopping": "none", "schedule": "cosine"}, seed, f"plain-{default_steps}-seed{seed}")
        for cap in args.caps[1:]:
            grades_at(cap)
    return runs


def caps_table(runs: list[dict[str, Any]]) -> tuple[str, dict[str, Any]]:
    """One row per GradES run beside its seed's plain (a) and equal-budget (b) runs; the targets below."""
    key = lambda r: (r.get("threads", 1), r["seed"])  # noqa: E731
    plain = {key(r): r for r in runs if r["mode"] == "plain"}
    budget = {(key(r), r["planned_steps"]): r for r in runs if r["mode"] == "budget"}
    rows, checks = [], {"stopped": [], "vs_plain": [], "vs_budget": [], "speedup": [], "cap4000": []}
    spread_by_seed: dict[tuple, list[int]] = {}
    grades = sorted((r for r in runs if r["mode"] == "grades"), key=lambda r: (key(r), r["cap"]))
    for r in grades:
        a, b = plain.get(key(r)), budget.get((key(r), r["steps"]))
        d_a = r["score"] - a["score"] if a else None
        d_b = r["score"] - b["score"] if b else None
        def ratio(x, y, scale=1.0):
            return scale * x / y if x and y else None

        if a and not a.get("recorded"):
            wall, cpu, how = ratio(a["loop_wall"], r["loop_wall"]), ratio(a["loop_cpu"], r["loop_cpu"]), "(a)"
        elif a and b:   # (a) recorded in another session: its time scaled from (b), a cosine run of this session
            scale = a["planned_steps"] / b["steps"]
            wall, cpu, how = (ratio(b["loop_wall"], r["loop_wall"], scale), ratio(b["loop_cpu"], r["loop_cpu"], scale),
                              "(b)")
        else:
            wall = cpu = how = None
        rows.append([r.get("threads", 1), r["seed"], r["cap"], r["steps"], r["stop_reason"][:60], fmt(r["score"]),
                     fmt(a["score"]) if a else "-", fmt(d_a), fmt(b["score"]) if b else "-", fmt(d_b),
                     f"{fmt(wall, 2, 'x')} {how or ''}", fmt(cpu, 2, "x"), r["weights"]])
        checks["stopped"].append(r["steps"] < r["planned_steps"])
        spread_by_seed.setdefault(key(r), []).append(r["steps"])
        if d_a is not None:
            checks["vs_plain"].append(d_a)
        if d_b is not None:
            checks["vs_budget"].append(d_b)
        if wall is not None and r["cap"] == (a["planned_steps"] if a else None):
            checks["speedup"].append(wall)
        if r["cap"] >= 4000:
            checks["cap4000"].append(r["steps"])
    headers = ["threads", "seed", "cap", "steps", "stop", "score", "(a) plain 1000", "vs (a)", "(b) equal budget",
               "vs (b)", "wall speedup vs (a) (timed from)", "CPU speedup vs (a)", "weights"]
    variation = [max(v) / min(v) - 1 for v in spread_by_seed.values() if v]
    verdict = {
        "1 every run stops; stop step varies <= 25% across caps": (
            all(checks["stopped"]) and all(x <= 0.25 for x in variation),
            f"{sum(checks['stopped'])}/{len(checks['stopped'])} stopped, largest variation "
            f"{fmt(100 * max(variation, default=0), 0)}%"),
        "2 every run >= (a) - 0.3, mean loss <= 0.15": (
            bool(checks["vs_plain"]) and min(checks["vs_plain"]) >= -0.3 and mean(checks["vs_plain"]) >= -0.15,
            f"worst {fmt(min(checks['vs_plain'], default=None))}, mean {fmt(mean(checks['vs_plain']))}"),
        "3 at cap 4000 no run above 1000 steps": (
            bool(checks["cap4000"]) and max(checks["cap4000"]) <= 1000,
            f"largest {max(checks['cap4000'], default='-')} of {len(checks['cap4000'])} runs"),
        "4 vs (b) at most 0.1 lost on average": (
            bool(checks["vs_budget"]) and mean(checks["vs_budget"]) >= -0.1,
            f"mean {fmt(mean(checks['vs_budget']))} over {len(checks['vs_budget'])} runs"),
        "5 median wall speedup at the default cap >= 1.4x": (
            bool(checks["speedup"]) and median(checks["speedup"]) >= 1.4,
            f"median {fmt(median(checks['speedup']), 2, 'x')} over {len(checks['speedup'])} runs"),
    }
    text = common.markdown(headers, rows) + "\n\n" + common.markdown(
        ["target", "met", "measured"], [[k, "met" if ok else "missed", v] for k, (ok, v) in verdict.items()])
    return text, {k: {"met": ok, "measured": v} for k, (ok, v) in verdict.items()}


def report_caps(paths: list[Path], out_md: Path) -> int:
    runs, machine, commits = [], None, set()
    for p in paths:
        d = json.loads(p.read_text())
        runs += d["runs"]
        machine, commits = machine or d["machine"], commits | ({d["commit"]} if d.get("commit") else set())
    text, _ = caps_table(runs)
    head = f"Machine: {common.machine_line(machine)}; commit {' + '.join(sorted(commits))}."
    out_md.write_text(head + "\n\n" + text + "\n")
    print(head + "\n\n" + text)
    return 0


def main_caps(args, layer, folder: Path, seeds: list[int], run_one, threads: int, name: str) -> int:
    result = {"benchmark": "end_to_end --caps", "commit": common.git_commit(), "machine": common.machine(),
              "caps": args.caps, "layer": layer, "started": time.strftime("%Y-%m-%d %H:%M:%S"), "runs": []}
    path = Path(args.results) / f"{name}.json"

    def save(runs):
        common.write_json(path, {**result, "runs": runs})

    runs = run_caps(args, layer, folder, seeds, run_one, threads, save)
    text, verdict = caps_table(runs)
    common.write_json(path, {**result, "runs": runs, "verdict": verdict})
    (Path(args.results) / f"{name}.md").write_text(text + "\n")
    print("\n" + text)
    return 0
