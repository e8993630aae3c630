"""Record, at every optimizer step, a fixed random subset of K entries of every GradES-monitored matrix's
weight and gradient, through the project's own train() (no change to the package: two engine methods are wrapped).

    OMP_NUM_THREADS=1 python record.py OUT_DIR [--from-scratch] [--steps N] [--checkpoint-every N]

Hooks: GradES.observe(step) (after backward + clipping, before optimizer.step) -> gradient g(step);
       GradES.update(step)  (after optimizer.step)                                -> weight W(step).
GradES runs with tau 1e-30 (nothing freezes: the training is that of --stopping none; convergence.jsonl
still logs the paper's grad_change at every step).

Saved in OUT_DIR/rec: names.json (component, modality, numel, k), G.npy [T, C, K], W.npy [T+1, C, K]
(W[0] = the weights before step 1), loss.npy, lr.npy (per modality), plus exact full-matrix scalars per step:
full_g2 [T, C] = ||g||^2, full_dw2 [T, C] = ||W(t) - W(t-1)||^2, full_gchg1 [T, C] = ||g(t) - g(t-1)||_1 / numel,
full_w2 [T, C] = ||W(t)||^2, and every 50 steps the exact ||W(t) - W(t-L)||^2 for L = 50..400 (full_disp [T//50, C, 8]).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

K = 1024
SNAP = 50          # full-weight snapshot every SNAP steps ...
NSNAP = 8          # ... kept for displacements over 50..400 steps


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--from-scratch", action="store_true")
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--checkpoint-every", type=int, default=None)
    ap.add_argument("--keep-checkpoints", type=int, default=20)
    ap.add_argument("--eval-max-samples", type=int, default=None)
    args = ap.parse_args()

    from vlm_grades.config import TrainConfig
    from vlm_grades.training.run import train
    import vlm_grades.grades.engine as E
    from vlm_grades.grades.statistics import sketch_index

    out = Path(args.out)
    rec = out / "rec"
    rec.mkdir(parents=True, exist_ok=True)
    layer = {"model": "nanovlm", "seed": 0, "grades": {"tau": 1e-30}, "out": str(out / "run"), "progress": False}
    if args.from_scratch:
        layer["from_scratch"] = True
    if args.steps:
        layer["steps"] = args.steps
    if args.eval_max_samples:
        layer["eval_max_samples"] = args.eval_max_samples
    if args.checkpoint_every:
        layer["checkpoint_every"] = args.checkpoint_every
        layer["keep_checkpoints"] = args.keep_checkpoints
    cfg = TrainConfig.build(layer)
    T = cfg.steps
    print("config:", json.dumps({k: getattr(cfg, k) for k in ("steps", "lr_vision", "lr_language", "batch_size",
                                                              "from_scratch", "mix_fraction", "checkpoint_every",
                                                              "grades")}), flush=True)

    st: dict = {}

    def setup(g) -> None:
        mats, names = [], []
        for c in g.components:
            for suffix, p in c.params:
                if p.dim() < 2:
                    continue
                k = min(K, p.numel())
                idx = sketch_index(p.numel(), k, 12345, f"{c.name}:{suffix}", torch.device("cpu")).long()
                mats.append((p, idx))
                names.append({"name": c.name, "suffix": suffix, "modality": c.modality, "kind": c.kind,
                              "layer": c.layer, "numel": p.numel(), "shape": list(p.shape), "k": k})
        C = len(mats)
        st.update(mats=mats, C=C,
                  G=np.lib.format.open_memmap(rec / "G.npy", "w+", np.float32, (T, C, K)),
                  W=np.lib.format.open_memmap(rec / "W.npy", "w+", np.float32, (T + 1, C, K)),
                  g2=np.zeros((T, C)), dw2=np.zeros((T, C)), gchg=np.full((T, C), np.nan), w2=np.zeros((T, C)),
                  disp=np.full((T // SNAP + 1, C, NSNAP), np.nan),
                  prevW=[p.detach().clone() for p, _ in mats], prevG=None, snaps=[], t0=time.time())
        (rec / "names.json").write_text(json.dumps(names, indent=1))
        for j, (p, idx) in enumerate(mats):
            st["W"][0, j, :len(idx)] = p.detach().reshape(-1)[idx].float().numpy()
        st["snaps"].append([p.detach().clone() for p, _ in mats])
        print(f"recording {C} matrices, K={K}", flush=True)

    orig_observe, orig_update = E.GradES.observe, E.GradES.update

    def observe(self, step):
        if not st:
            setup(self)
        t = step - 1
        gs = []
        for j, (p, idx) in enumerate(st["mats"]):
            g = p.grad.detach() if p.grad is not None else torch.zeros_like(p)
            gs.append(g.clone())
            st["G"][t, j, :len(idx)] = g.reshape(-1)[idx].float().numpy()
            st["g2"][t, j] = float(g.double().pow(2).sum())
            if st["prevG"] is not None:
                st["gchg"][t, j] = float((g - st["prevG"][j]).abs().sum()) / g.numel()
        st["prevG"] = gs
        return orig_observe(self, step)

    def update(self, step):
        r = orig_update(self, step)
        t = step - 1
        for j, (p, idx) in enumerate(st["mats"]):
            w = p.detach()
            st["W"][step, j, :len(idx)] = w.reshape(-1)[idx].float().numpy()
            st["dw2"][t, j] = float((w - st["prevW"][j]).double().pow(2).sum())
            st["w2"][t, j] = float(w.double().pow(2).sum())
            st["prevW"][j].copy_(w)
        if step % SNAP == 0:
            snaps = st["snaps"]
            cur = [p.detach().clone() for p, _ in st["mats"]]
            for L in range(1, NSNAP + 1):
                if len(snaps) >= L:
                    old = snaps[-L]
                    for j in range(st["C"]):
                        st["disp"][step // SNAP, j, L - 1] = float((cur[j] - old[j]).double().pow(2).sum())
            snaps.append(cur)
            del snaps[:-NSNAP]
        if step % 100 == 0:
            print(f"step {step}  {time.time() - st['t0']:.0f} s", flush=True)
        return r

    E.GradES.observe, E.GradES.update = observe, update
    try:
        summary = train(cfg)
    finally:
        E.GradES.observe, E.GradES.update = orig_observe, orig_update
    st["G"].flush()
    st["W"].flush()
    np.save(rec / "full_g2.npy", st["g2"])
    np.save(rec / "full_dw2.npy", st["dw2"])
    np.save(rec / "full_gchg1.npy", st["gchg"])
    np.save(rec / "full_w2.npy", st["w2"])
    np.save(rec / "full_disp.npy", st["disp"])
    run = Path(summary["run"])
    loss, lr = [], []
    for line in (run / "metrics.jsonl").read_text().splitlines():
        r = json.loads(line)
        if "loss" in r and "step" in r:
            loss.append(r["loss"])
            lr.append([r["lr"].get(m, np.nan) if isinstance(r["lr"], dict) else r["lr"]
                       for m in ("vision", "projector", "language")])
    np.save(rec / "loss.npy", np.array(loss))
    np.save(rec / "lr.npy", np.array(lr, dtype=float))
    (rec / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
    print("summary:", json.dumps({k: summary.get(k) for k in ("run", "steps", "stop_reason", "wall_time")},
                                 default=str), json.dumps(summary.get("eval"), default=str)[:400], flush=True)


if __name__ == "__main__":
    sys.exit(main())
