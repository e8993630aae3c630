"""Step cost of a frozen set: measured step time against the unfrozen step, beside the FLOP model's ideal.

    python benchmarks/step_cost.py [--presets tiny smol] [--reps 5] [--steps 3] [--batch-size N] [--threads 1]

For each nanoVLM preset: the training adapter and a real easy-VQA batch; a baseline model (nothing frozen)
and, per scenario, a copy of it (same weights) whose matrices are frozen through the engine's own code path
(`GradES.freeze`, which also finalizes a fully frozen modality: requires_grad False, grad None, optimizer
state released, exactly what training does). The step is the training loop's: forward, backward, gradient
clipping over the parameters that have gradients, AdamW (the training optimizer, one group per modality),
zero_grad. "vision + projector cached": both finalized and a feature cache on the adapter, filled by the warm-up
step, so the step runs no tower forward (ideal: the language model's forward, backward and update only). Repetitions
interleave a block of baseline steps and a block of scenario steps (the order
alternates), after a warm-up block of each; reported: the median of the per-repetition time ratios
(scenario / baseline), wall and process CPU time.

Ideal (vlm_grades/report/flops.py): baseline step = sum over modalities of 6 P r + 10 P (P parameters,
r rows of the batch for that modality); a frozen matrix of n parameters saves 2 n r + 10 n (its weight-gradient
GEMM and its AdamW update); a finalized modality saves 2 P r + 10 P (its weight gradients and update), and
4 P r + 10 P (its whole backward) when no modality upstream of it still trains.
achieved / ideal = measured speedup / ideal speedup; saving achieved = measured saving / ideal saving.
"""
from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402
from common import fmt  # noqa: E402

TARGET = 0.9


def half_layers(components, modality):
    comps = [c for c in components if c.modality == modality]
    layers = sorted({c.layer for c in comps})
    low = set(layers[: len(layers) // 2])
    return [c for c in comps if c.layer in low]


SCENARIOS = {
    # name: (frozen components(registry components) -> list, modalities finalized)
    "vision matrices frozen": (lambda cs: [c for c in cs if c.modality == "vision"], ()),
    "half language matrices frozen": (lambda cs: half_layers(cs, "language"), ()),
    "vision + half language matrices frozen":
        (lambda cs: [c for c in cs if c.modality == "vision"] + half_layers(cs, "language"), ()),
    "vision finalized": (lambda cs: [c for c in cs if c.modality == "vision"], ("vision",)),
    "vision finalized + half language frozen":
        (lambda cs: [c for c in cs if c.modality == "vision"] + half_layers(cs, "language"), ("vision",)),
    "vision + projector finalized": (lambda cs: [c for c in cs if c.modality != "language"], ("vision", "projector")),
    "vision + projector cached": (lambda cs: [c for c in cs if c.modality != "language"], ("vision", "projector")),
}
# scenarios whose images' features come from the feature cache (filled by the warm-up step): no tower forward
CACHED = {"vision + projector cached"}


# ------------------------------------------------------------------ setup
def setup(preset: str, batch_size: int):
    from vlm_grades.config import TrainConfig
    from vlm_grades.models import build_adapter
    from vlm_grades.training.data import load_split

    cfg = TrainConfig.build({"model": "nanovlm", "preset": preset, "task": "easyvqa", "max_samples": 4 * batch_size,
                             "batch_size": batch_size, "progress": False})
    samples = load_split(cfg, cfg.split, cfg.max_samples, "training")
    adapter = build_adapter(cfg, samples)
    batch = adapter.collate([adapter.preprocess(s, train=True) for s in samples[:batch_size]])
    return cfg, adapter, batch


class Trainee:
    """One model copy with its registry, training optimizer and (for scenarios) the engine that froze it."""

    def __init__(self, cfg, adapter, model, frozen=None, finalize=(), cached=False):
        from vlm_grades.components import build_registry
        from vlm_grades.grades import GradES, GradESConfig
        from vlm_grades.training.optim import build_optimizer

        self.adapter = copy.copy(adapter)
        self.adapter.model = model
        self.model = model
        self.registry = build_registry(model, adapter.architecture)
        lrs = {"vision": cfg.lr_vision, "projector": cfg.lr_projector, "language": cfg.lr_language}
        self.optimizer = build_optimizer(self.registry.modality_parameters(model), lrs, cfg.weight_decay)
        self.clip = cfg.clip
        self.frozen_names: list[str] = []
        if frozen is not None:
            engine = GradES(model, self.registry,
                            GradESConfig.from_dict({"alpha": 1, "finalize_modalities": bool(finalize)}),
                            optimizer=self.optimizer, total_steps=10)
            engine.freeze(c.name for c in frozen(self.registry.components))
            missing = set(finalize) - set(engine.finalized)
            assert not missing, f"not finalized: {missing}"
            self.frozen_names = sorted(engine.frozen)
            self.finalized = sorted(engine.finalized)
        else:
            self.finalized = []
        self.cached = cached
        if cached:
            from vlm_grades.feature_cache.memory import FeatureCache

            self.adapter.feature_cache = FeatureCache(2 ** 30)
        model.train()

    def step(self, batch) -> None:
        import torch

        loss = self.adapter.loss(batch)
        loss.backward()
        grads = [p for p in self.model.parameters() if p.grad is not None]
        if self.clip and grads:
            torch.nn.utils.clip_grad_norm_(grads, self.clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)


# ------------------------------------------------------------------ ideal
def ideal_ratio(trainee: Trainee, rows: dict[str, int]) -> float:
    """Cost of the scenario's step / cost of the unfrozen step, in the FLOP model of vlm_grades.report.flops."""
    from vlm_grades.report.flops import BWD_INPUT, BWD_WEIGHT, FWD, OPTIMIZER, finalized_saving
    from vlm_grades.report.run_data import MODALITIES

    params = trainee.registry.modality_parameters(trainee.model)
    base = saved = 0.0
    frozen = set(trainee.frozen_names)
    for m, named in params.items():
        P, r = sum(p.numel() for _, p in named), rows.get(m, 0)
        base += (FWD + BWD_INPUT + BWD_WEIGHT) * P * r + OPTIMIZER * P
        if m in trainee.finalized:
            upstream = MODALITIES[:MODALITIES.index(m)]
            saved += finalized_saving(P, r, any(u not in trainee.finalized for u in upstream))
            if trainee.cached and m in ("vision", "projector"):
                saved += FWD * P * r                   # every image's features come from the cache
            continue
        first = [c for c in trainee.registry.components if c.modality == m][:1]
        if m == "projector" and first and "vision" in trainee.finalized:   # its first input gradient is for vision
            saved += BWD_INPUT * sum(p.numel() for _, p in first[0].params) * r
        for c in trainee.registry.components:
            if c.modality == m and c.name in frozen:
                n = sum(p.numel() for _, p in c.params)
                saved += BWD_WEIGHT * n * r + OPTIMIZER * n
    return (base - saved) / base


# ------------------------------------------------------------------ measurement
def block(trainee: Trainee, batch, steps: int) -> tuple[float, float]:
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(steps):
        trainee.step(batch)
    return (time.perf_counter() - t0) / steps, (time.process_time() - c0) / steps


def measure(base: Trainee, scen: Trainee, batch, reps: int, steps: int) -> dict[str, Any]:
    block(base, batch, 1)
    block(scen, batch, 1)                     # warm-up: allocator, first optimizer state
    ratios, cpu, t_base, t_scen = [], [], [], []
    for r in range(reps):
        order = (base, scen) if r % 2 == 0 else (scen, base)
        t = {id(x): block(x, batch, steps) for x in order}
        b, s = t[id(base)], t[id(scen)]
        ratios.append(s[0] / b[0])
        cpu.append(s[1] / b[1])
        t_base.append(b[0])
        t_scen.append(s[0])
    return {"ratio": statistics.median(ratios), "ratio_min": min(ratios), "ratio_max": max(ratios),
            "cpu_ratio": statistics.median(cpu), "base_s": statistics.median(t_base),
            "scenario_s": statistics.median(t_scen), "ratios": ratios}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--presets", nargs="+", default=["tiny", "smol"], help="nanoVLM presets")
    ap.add_argument("--scenarios", nargs="+", default=list(SCENARIOS), choices=list(SCENARIOS), metavar="NAME",
                    help=f"frozen sets ({'; '.join(SCENARIOS)})")
    ap.add_argument("--reps", type=int, default=5, help="interleaved repetitions (median reported)")
    ap.add_argument("--steps", type=int, default=3, help="steps per block")
    ap.add_argument("--batch-size", type=int, default=None,
                    help="batch size (default: the preset's training batch size for tiny, 8 for smol)")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (0: leave as is)")
    ap.add_argument("--tag", default="", help="suffix of the results file names")
    ap.add_argument("--results", default=str(common.RESULTS), help="folder for step_cost[-tag].json/.md")
    args = ap.parse_args(argv)

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    name = "step_cost" + (f"-{args.tag}" if args.tag else "")
    result: dict[str, Any] = {"benchmark": "step_cost", "commit": common.git_commit(), "machine": common.machine(),
                              "argv": sys.argv[1:] if argv is None else argv, "reps": args.reps,
                              "steps": args.steps, "presets": []}
    print(f"# step cost: {common.machine_line(result['machine'])}, commit {result['commit']}", flush=True)
    md = [f"Machine: {common.machine_line(result['machine'])}; commit {result['commit']}; {args.reps} interleaved "
          f"repetitions x {args.steps} steps, median."]
    headers = ["scenario", "frozen matrices", "finalized", "step ms (base -> frozen)", "measured time ratio",
               "ideal time ratio", "measured speedup", "ideal speedup", "achieved / ideal", "saving achieved",
               "target"]
    for preset in args.presets:
        torch.manual_seed(0)
        bs = args.batch_size or (None if preset == "tiny" else 8)
        from vlm_grades.config import TrainConfig

        bs = bs or TrainConfig.build({"model": "nanovlm", "preset": preset}).batch_size
        cfg, adapter, batch = setup(preset, bs)
        rows = adapter.tokens_per_modality(batch)
        base = Trainee(cfg, adapter, adapter.model)
        entry: dict[str, Any] = {"preset": preset, "batch_size": bs, "rows": rows, "scenarios": []}
        table_rows = []
        for sname in args.scenarios:
            frozen, finalize = SCENARIOS[sname]
            scen = Trainee(cfg, adapter, copy.deepcopy(adapter.model), frozen, finalize, cached=sname in CACHED)
            ideal = ideal_ratio(scen, rows)
            res = measure(base, scen, batch, args.reps, args.steps)
            speed, ideal_speed = 1 / res["ratio"], 1 / ideal
            achieved = speed / ideal_speed
            saving = (1 - res["ratio"]) / (1 - ideal) if ideal < 1 else None
            rec = {"scenario": sname, "frozen": len(scen.frozen_names), "components": len(scen.registry.components),
                   "finalized": scen.finalized, "ideal_ratio": ideal, "achieved_over_ideal": achieved,
                   "saving_achieved": saving, "target_met": achieved >= TARGET, **res}
            entry["scenarios"].append(rec)
            table_rows.append([sname, f"{rec['frozen']}/{rec['components']}", ",".join(scen.finalized) or "-",
                               f"{res['base_s'] * 1e3:.0f} -> {res['scenario_s'] * 1e3:.0f}",
                               f"{res['ratio']:.3f} ({res['ratio_min']:.3f}-{res['ratio_max']:.3f}; cpu "
                               f"{res['cpu_ratio']:.3f})", f"{ideal:.3f}", fmt(speed, 2, "x"),
                               fmt(ideal_speed, 2, "x"), fmt(achieved, 3), fmt(saving, 2),
                               "met" if rec["target_met"] else "missed"])
            print(f"[{preset}] {sname}: measured {res['ratio']:.3f} (cpu {res['cpu_ratio']:.3f}), ideal {ideal:.3f}, "
                  f"achieved/ideal {achieved:.3f}", flush=True)
            del scen
            common.write_json(Path(args.results) / f"{name}.json", {**result, "presets": result["presets"] + [entry]})
        result["presets"].append(entry)
        head = (f"### {preset}: batch {bs}, rows per step {rows}, "
                f"{sum(p.numel() for p in adapter.model.parameters()) / 1e6:.1f}M parameters")
        text = common.markdown(headers, table_rows)
        print("\n" + head + "\n\n" + text + "\n", flush=True)
        md += ["", head, "", text]
        del base, adapter
    common.write_json(Path(args.results) / f"{name}.json", result)
    notes = ("time ratio = scenario step / unfrozen step (median of interleaved repetitions; range and process-CPU "
             "ratio in brackets); ideal = the FLOP model's cost ratio; achieved / ideal = measured speedup / ideal "
             f"speedup (target >= {TARGET}); saving achieved = (1 - measured ratio) / (1 - ideal ratio).")
    (Path(args.results) / f"{name}.md").write_text("\n".join(md + ["", notes]) + "\n")
    print(notes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
