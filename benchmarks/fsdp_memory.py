"""Per-rank bytes of parameters + gradients + AdamW state under DDP (a full replica per rank) and FSDP2 (shards),
before and after half of the monitored matrices freeze, and the GradES engine's overhead under FSDP2 at
interval 1. Random weights (the byte counts do not depend on them), one synthetic batch, gloo on the CPU.

    OMP_NUM_THREADS=1 torchrun --nproc-per-node 2 benchmarks/fsdp_memory.py [--presets tiny,smol] [--steps 20]

DDP's own bucket buffers (about one more copy of the gradients) are not counted: the DDP column is the
replica's tensors only, so the FSDP2/DDP ratio is, if anything, generous to DDP.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.distributed as dist

import common  # noqa: F401  (puts the repository on sys.path)
from nanovlm.config import VLMConfig
from nanovlm.vision_language_model import VisionLanguageModel
from vlm_grades.parallel import sharding
from vlm_grades.components import build_registry
from vlm_grades.grades import GradES
from vlm_grades.grades.shards import local
from vlm_grades.training.optim import build_optimizer


def build(preset: str) -> VisionLanguageModel:
    torch.manual_seed(0)
    extra = {"lm_vocab_size": 256, "image_token_id": 3, "eos_token_id": 1, "pad_token_id": 0} if preset == "tiny" \
        else {"image_token_id": 3, "eos_token_id": 1, "pad_token_id": 0}
    return VisionLanguageModel(VLMConfig.preset(preset, **extra))


def batch(cfg, rows: int = 2, text: int = 16):
    g = torch.Generator().manual_seed(dist.get_rank())
    ids = torch.randint(5, 200, (rows, cfg.mp_image_token_length + text), generator=g)
    ids[:, :cfg.mp_image_token_length] = cfg.image_token_id
    labels = ids.clone()
    labels[:, :cfg.mp_image_token_length] = -100
    images = torch.randn(rows, 3, cfg.vit_img_size, cfg.vit_img_size, generator=g)
    return ids, images, torch.ones_like(ids), labels


def nbytes(tensors) -> int:
    return sum(local(t).numel() * local(t).element_size() for t in tensors if t is not None)


def measure(model, opt) -> dict[str, int]:
    params = list(model.parameters())
    state = [v for s in opt.state.values() for v in s.values() if torch.is_tensor(v) and v.ndim > 0]
    return {"params": nbytes(params), "grads": nbytes(p.grad for p in params), "optimizer": nbytes(state)}


def step(model, opt, data, grades=None, n: int = 1) -> None:
    for i in range(n):
        _, loss = model(*data)
        loss.backward()
        if grades is not None:
            grades.observe(i + 1)
        opt.step()
        if grades is not None:
            grades.update(i + 1)
        # measured with the gradients still held, as at the peak of a step
        if i < n - 1:
            opt.zero_grad(set_to_none=True)


def run(preset: str, mode: str, steps: int) -> dict:
    model = build(preset)
    registry = build_registry(model, "nanovlm")
    if mode == "fsdp":
        sharding.shard(model, torch.device("cpu"))
        registry = build_registry(model, "nanovlm")
    lrs = {m: 1e-4 for m in ("vision", "projector", "language")}
    opt = build_optimizer(registry.modality_parameters(model), lrs, 0.0)
    grades = GradES(model, registry, {"tau": 1e-30, "interval": 1}, optimizer=opt, total_steps=1000)
    data = batch(model.cfg)
    step(model, opt, data)
    before = measure(model, opt)
    names = [c.name for c in registry.components]
    grades.freeze(names[::2])
    opt.zero_grad(set_to_none=True)
    step(model, opt, data)
    after = measure(model, opt)
    out = {"preset": preset, "mode": mode, "before": before, "after": after, "frozen": len(names[::2]),
           "monitored": len(names)}
    if mode == "fsdp" and steps:   # engine overhead: interleaved blocks of steps with and without GradES
        times = {"with": [], "without": []}
        for _ in range(3):
            for key in ("without", "with"):
                opt.zero_grad(set_to_none=True)
                dist.barrier()
                t0 = time.perf_counter()
                step(model, opt, data, grades if key == "with" else None, n=steps)
                times[key].append((time.perf_counter() - t0) / steps)
        out["step_s"] = {k: statistics.median(v) for k, v in times.items()}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", default="tiny,smol")
    parser.add_argument("--steps", type=int, default=20, help="steps per timing block (0: no timing)")
    args = parser.parse_args()
    dist.init_process_group("gloo")
    rows = []
    for preset in args.presets.split(","):
        for mode in ("ddp", "fsdp"):
            rows.append(run(preset, mode, args.steps if preset == "tiny" else 0))
    if dist.get_rank() == 0:
        mb = 2 ** 20
        print("| preset | mode | params+grads+AdamW per rank, MiB | after half frozen | frozen/monitored |")
        print("| --- | --- | ---: | ---: | --- |")
        for r in rows:
            b, a = sum(r["before"].values()) / mb, sum(r["after"].values()) / mb
            print(f"| {r['preset']} | {r['mode']} | {b:.2f} ({', '.join(f'{k} {v / mb:.2f}' for k, v in r['before'].items())})"
                  f" | {a:.2f} | {r['frozen']}/{r['monitored']} |")
        for r in rows:
            if "step_s" in r:
                w, wo = r["step_s"]["with"], r["step_s"]["without"]
                print(f"engine overhead, {r['preset']} FSDP2, interval 1: {wo * 1000:.1f} ms -> {w * 1000:.1f} ms "
                      f"per step ({(w / wo - 1) * 100:+.1f}%)")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
