"""Writes realistic synthetic run folders (docs/RUN_FOLDER.md) for fast report/compare tests.

The simulated model is a tiny nanoVLM: a ViT (fused qkv, out, fc1, fc2 per block), a one-matrix projector and a
LLaMA-style LM (q, k, v, out, gate, up, down). Statistics decay exponentially with log-normal noise (MLP larger
and slower than attention, vision slower than language, as the paper reports); GradES checks every `interval`
steps after the grace period alpha * T and freezes a component whose value is below its modality's tau.
`make_run` returns the truth (freeze and finalize steps of the attempt that counts) for assertions.
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from vlm_grades.training.run_folder import RunFolder

VISION_KINDS = {"attn.qkv": (64, 3 * 64), "attn.o": (64, 64), "mlp.fc1": (64, 256), "mlp.fc2": (256, 64)}
LANGUAGE_KINDS = {"attn.q": (96, 96), "attn.k": (96, 32), "attn.v": (96, 32), "attn.o": (96, 96),
                  "mlp.gate": (96, 256), "mlp.up": (96, 256), "mlp.down": (256, 96)}
VISION_NAMES = {"attn.qkv": "attn.qkv_proj", "attn.o": "attn.out_proj", "mlp.fc1": "mlp.fc1", "mlp.fc2": "mlp.fc2"}
LANGUAGE_NAMES = {"attn.q": "attn.q_proj", "attn.k": "attn.k_proj", "attn.v": "attn.v_proj",
                  "attn.o": "attn.out_proj", "mlp.gate": "mlp.gate_proj", "mlp.up": "mlp.up_proj",
                  "mlp.down": "mlp.down_proj"}
TOKENS = {"vision": 8 * 64, "projector": 8 * 16, "language": 8 * 40}  # batch 8: 64 patches, 16 image tokens


def registry(vision_layers: int = 2, language_layers: int = 3) -> dict:
    comps = []
    for layer in range(vision_layers):
        for kind, (i, o) in VISION_KINDS.items():
            comps.append({"name": f"vision_encoder.blocks.{layer}.{VISION_NAMES[kind]}", "modality": "vision",
                          "layer": layer, "kind": kind, "numel": i * o + o})
    comps.append({"name": "MP.proj", "modality": "projector", "layer": 0, "kind": "proj", "numel": 256 * 96})
    for layer in range(language_layers):
        for kind, (i, o) in LANGUAGE_KINDS.items():
            comps.append({"name": f"decoder.blocks.{layer}.{LANGUAGE_NAMES[kind]}", "modality": "language",
                          "layer": layer, "kind": kind, "numel": i * o})
    monitored = {m: sum(c["numel"] for c in comps if c["modality"] == m) for m in ("vision", "projector", "language")}
    extra = {"vision": 3 * 16 * 16 * 64 + 64 * 64 + 4 * 64 * vision_layers, "projector": 0,
             "language": 512 * 96 + 2 * 96 * language_layers + 96}  # patch/pos embeddings, norms, token embedding
    return {"architecture": "nanovlm",
            "modalities": {m: {"parameters": monitored[m] + extra[m], "monitored_parameters": monitored[m]}
                           for m in monitored},
            "components": comps}


@dataclass
class Truth:
    freeze_steps: dict[str, int] = field(default_factory=dict)
    finalize_steps: dict[str, int] = field(default_factory=dict)
    last_step: int = 0
    total_steps: int = 0
    stop_reason: str | None = None
    ended: bool = False


@dataclass
class _State:
    frozen: dict[str, int] = field(default_factory=dict)
    finalized: dict[str, int] = field(default_factory=dict)
    wall: float = 0.0

    def copy(self) -> "_State":
        return _State(dict(self.frozen), dict(self.finalized), self.wall)


def _statistic(comp: dict, step: int, rng: random.Random) -> float:
    mlp = comp["kind"].startswith("mlp")
    base = {"vision": 0.02, "projector": 0.05, "language": 0.025}[comp["modality"]] * (2.5 if mlp else 1.0)
    scale = {"vision": 35.0, "projector": 35.0, "language": 30.0}[comp["modality"]] * (1.5 if mlp else 1.0)
    scale *= 1.0 + 0.1 * comp["layer"]
    return base * math.exp(-step / scale) * math.exp(rng.gauss(0.0, 0.25)) + 1e-6


def _lr(step: int, total: int, peak: float) -> float:
    warm = max(total // 20, 1)
    if step <= warm:
        return peak * step / warm
    return peak * 0.5 * (1 + math.cos(math.pi * (step - warm) / max(total - warm, 1)))


def make_run(path: str | Path, *, total_steps: int = 200, vision_layers: int = 2, language_layers: int = 3,
             tau: dict | None = None, alpha: float = 0.2, interval: int = 5, log_every: int = 1,
             stop_when_all_frozen: bool = True, max_steps: int | None = None, eval_every: int = 50,
             crash_at: int | None = None, resume_from: int | None = None, running: bool = False,
             torn_tail: bool = False, seed: int = 0, name_config: str = "grades") -> Truth:
    """Write a run folder; `crash_at` + `resume_from` simulates a crash and a resume that appends to the same
    logs without truncating them (the worst case); `running` leaves it without an end event; `torn_tail`
    adds half a line to every log. `max_steps` stops the simulated process (a kill) at that step."""
    tau = tau or {"vision": 4e-3, "projector": 4e-3, "language": 3e-3}
    reg = registry(vision_layers, language_layers)
    Path(path).mkdir(parents=True, exist_ok=True)
    run = RunFolder(path, create=True)
    config = {"model": "nanovlm", "task": "easyvqa", "steps": total_steps, "batch_size": 8, "seed": seed,
              "stopping": name_config,
              "grades": {"metric": "grad_change", "normalization": "mean", "tau": tau, "alpha": alpha,
                         "interval": interval},
              "optimizer": {"name": "adamw", "lr": {"vision": 1e-4, "projector": 2e-3, "language": 1e-4}}}
    (run.path / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    run.write_json("components.json", reg)
    comps = reg["components"]
    per_modality = {m: [c["name"] for c in comps if c["modality"] == m] for m in ("vision", "projector", "language")}
    truth = Truth(total_steps=total_steps)
    t0 = 1_764_300_000.0

    def attempt(state: _State, first: int, last: int, rng: random.Random, resumed: int | None) -> _State:
        run.append("events", {"type": "start", "step": resumed or 0, "time": t0 + state.wall,
                              "total_steps": total_steps,
                              "resumed_from": None if resumed is None else f"checkpoints/step-{resumed}"})
        snapshot = None
        for step in range(first, last + 1):
            state.wall += 0.08 + 0.02 * rng.random() - 0.03 * len(state.frozen) / len(comps)
            if step % log_every == 0:
                frac = {m: sum(n in state.frozen for n in names) / len(names) for m, names in per_modality.items()}
                run.append("metrics", {
                    "step": step, "epoch": step / 100, "loss": 2.4 * math.exp(-step / 50) + 0.35 + 0.05 * rng.random(),
                    "lr": {m: _lr(step, total_steps, p) for m, p in config["optimizer"]["lr"].items()},
                    "step_time": 0.09, "wall": round(state.wall, 3), "tokens": dict(TOKENS), "frozen": frac})
            stop = None
            if step % interval == 0:
                values = {c["name"]: _statistic(c, step, rng) for c in comps if c["name"] not in state.frozen}
                for c in comps:
                    v = values.get(c["name"])
                    if v is not None and step >= int(alpha * total_steps) and v < tau[c["modality"]]:
                        state.frozen[c["name"]] = step
                        run.append("events", {"type": "freeze", "step": step, "component": c["name"],
                                              "modality": c["modality"], "value": v, "tau": tau[c["modality"]]})
                for m, names in per_modality.items():
                    if m not in state.finalized and all(n in state.frozen for n in names) and m == "vision":
                        state.finalized[m] = step  # only the first tower can skip its whole backward
                        run.append("events", {"type": "finalize", "step": step, "modality": m,
                                              "parameters": reg["modalities"][m]["parameters"]})
                run.append("convergence", {"step": step, "metric": "grad_change", "normalization": "mean",
                                           "values": values, "tau": {n: tau[reg_mod[n]] for n in values},
                                           "frozen": sorted(state.frozen)})
                if stop_when_all_frozen and len(state.frozen) == len(comps):
                    stop = "all components frozen"
                    run.append("events", {"type": "stop", "step": step, "reason": stop})
            if step % eval_every == 0 or stop or step == total_steps:
                run.append("events", {"type": "eval", "step": step, "task": "easyvqa", "split": "test",
                                      "score": round(100 * (1 - 0.7 * math.exp(-step / 60)), 2),
                                      "metrics": {"accuracy": 1 - 0.7 * math.exp(-step / 60)}})
            if step % 50 == 0:
                run.append("events", {"type": "checkpoint", "step": step, "path": f"checkpoints/step-{step}"})
            if step == resume_from:
                snapshot = state.copy()
            truth.last_step = step
            if stop or step == total_steps:
                truth.stop_reason = stop or "max steps"
                if not running:
                    run.append("events", {"type": "end", "step": step, "wall_time": round(state.wall, 3),
                                          "stop_reason": truth.stop_reason})
                    truth.ended = True
                break
        return snapshot or state

    reg_mod = {c["name"]: c["modality"] for c in comps}
    last = min(total_steps, max_steps or total_steps)
    if crash_at is not None:
        assert resume_from is not None and resume_from % 50 == 0 and resume_from <= crash_at
        snap = attempt(_State(), 1, crash_at, random.Random(seed + 1000), None)
        state = attempt(snap, resume_from + 1, last, random.Random(seed), resume_from)
    else:
        state = attempt(_State(), 1, last, random.Random(seed), None)
    truth.freeze_steps = dict(state.frozen)
    truth.finalize_steps = dict(state.finalized)
    if torn_tail:
        for kind in ("metrics", "convergence", "events"):
            with open(run.log_path(kind), "a") as f:
                f.write('{"step": 99999, "type": "freeze", "lo')
    return truth
