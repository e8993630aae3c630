"""GradES engine overhead: step time and extra memory, against the same training steps without it.

    python benchmarks/overhead.py [--presets tiny smol] [--reps 5] [--steps 4] [--official] [--agreement]

For each nanoVLM preset: one model, one AdamW; repetitions interleave a block of plain steps and a block of
steps with the engine (interval 1, default settings: grad_change, mean, sampled sketch for big matrices;
thresholds that never freeze, so the monitoring cost is measured, not the savings). Reported: the median of
the per-repetition ratios (engine / plain), their range, the engine's own time per step measured directly,
and the bytes it keeps against the monitored parameters' bytes (default settings, and exact storage).
On a shared CPU the wall-clock ratio is noisy; the process CPU-time ratio (use --threads 1) and the engine's
directly timed share are the steadier numbers.
--official runs the official `grades` package's VLM callback through the same harness (on a tiny random
Qwen2.5-VL too, since on nanoVLM it finds only the vision tower). --agreement compares the freeze decisions
of the sketch and the exact statistic on one gradient stream.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vlm_grades.components import build_registry  # noqa: E402
from vlm_grades.grades import GradES, GradESConfig  # noqa: E402

NEVER = {"alpha": 1, "tau": 1e-30, "patience": 1}           # decisions run every step, nothing ever freezes


# ------------------------------------------------------------------ workloads
def nanovlm_workload(preset: str, batch: int, seq: int, device: str):
    from nanovlm.config import VLMConfig
    from nanovlm.vision_language_model import VisionLanguageModel

    torch.manual_seed(0)
    cfg = VLMConfig.preset(preset)
    model = VisionLanguageModel(cfg).to(device)
    n_img = cfg.mp_image_token_length
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(2, cfg.lm_vocab_size, (batch, n_img + seq), generator=g)
    ids[:, :n_img] = cfg.image_token_id
    labels = ids.clone()
    labels[:, :n_img] = -100
    images = torch.randn(batch, 3, cfg.vit_img_size, cfg.vit_img_size, generator=g)
    ids, labels, images = ids.to(device), labels.to(device), images.to(device)

    def loss():
        return model(ids, images, labels=labels)[1]

    return model, loss


def qwen_workload(batch: int, device: str):
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    torch.manual_seed(0)
    cfg = Qwen2_5_VLConfig(
        vision_config=dict(depth=4, hidden_size=128, intermediate_size=256, num_heads=4, out_hidden_size=256,
                           patch_size=14, spatial_merge_size=2, temporal_patch_size=2, fullatt_block_indexes=[3],
                           window_size=56, in_channels=3),
        text_config=dict(hidden_size=256, intermediate_size=512, num_hidden_layers=4, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=4096, max_position_embeddings=512,
                         rope_scaling={"type": "mrope", "mrope_section": [8, 12, 12]}, bos_token_id=0,
                         eos_token_id=1, pad_token_id=0, tie_word_embeddings=False),
        image_token_id=4092, video_token_id=4093, vision_start_token_id=4094, vision_end_token_id=4095,
        bos_token_id=0, eos_token_id=1, pad_token_id=0, tie_word_embeddings=False)
    model = Qwen2_5_VLForConditionalGeneration(cfg).to(device)
    g = torch.Generator().manual_seed(0)
    text = torch.randint(2, 4000, (batch, 64 - 6), generator=g)
    ids = torch.cat([torch.tensor([[4094, 4092, 4092, 4092, 4092, 4095]] * batch), text], 1)
    labels = ids.clone()
    labels[:, :6] = -100
    pixels = torch.randn(batch * 16, 3 * 2 * 14 * 14, generator=g)
    inputs = {"input_ids": ids, "labels": labels, "pixel_values": pixels,
              "image_grid_thw": torch.tensor([[1, 4, 4]] * batch)}
    inputs = {k: v.to(device) for k, v in inputs.items()}

    def loss():
        return model(**inputs).loss

    return model, loss


# ------------------------------------------------------------------ monitors
class Ours:
    name = "vlm-grades"

    def __init__(self, model, total, config=None):
        self.engine = GradES(model, build_registry(model), GradESConfig.from_dict({**NEVER, **(config or {})}),
                             total_steps=total)

    def attach(self, opt):
        self.engine.attach_optimizer(opt)

    def before(self, step):
        self.engine.observe(step)

    def after(self, step):
        self.engine.update(step)

    def memory(self):
        return self.engine.memory_bytes(), self.engine.monitored_bytes()


class Official:
    name = "grades 1.0.6"

    def __init__(self, model, total):
        from grades import VLMGradEarlyStoppingCallback, VLMGradEarlyStoppingConfig
        from transformers import TrainerControl, TrainerState

        class Args:
            output_dir = "/tmp/grades-official-bench"

        self.cb = VLMGradEarlyStoppingCallback(VLMGradEarlyStoppingConfig(
            vision_tau=1e-30, language_tau=1e-30, alpha=0.5, compute_interval=1))
        self.state, self.control, self.args, self.model = TrainerState(max_steps=total), TrainerControl(), Args(), model
        self.cb.on_train_begin(self.args, self.state, self.control, model=model)

    def attach(self, opt):
        pass

    def before(self, step):
        pass

    def after(self, step):
        self.state.global_step = step
        self.cb.on_step_end(self.args, self.state, self.control, model=self.model)

    def memory(self):
        cache = 0
        monitored = 0
        for s in self.cb.component_stats.values():
            c = s.weight_cache
            tensors = c.values() if isinstance(c, dict) else ([c] if c is not None else [])
            cache += sum(t.numel() * t.element_size() for t in tensors)
            monitored += s.param_count * 4
        return cache, monitored


# ------------------------------------------------------------------ harness
def sync(device):
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def measure(model, loss_fn, monitor, reps, steps, device):
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    monitor.attach(opt)
    step = 0
    engine_time = []

    def block(with_monitor):
        nonlocal step
        sync(device)
        t0, c0 = time.perf_counter(), time.process_time()
        for _ in range(steps):
            step += 1
            loss_fn().backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            if with_monitor:
                sync(device)
                t1 = time.perf_counter()
                monitor.before(step)
                sync(device)
                engine_time.append(time.perf_counter() - t1)
            opt.step()
            opt.zero_grad(set_to_none=True)
            if with_monitor:
                sync(device)
                t1 = time.perf_counter()
                monitor.after(step)
                sync(device)
                engine_time[-1] += time.perf_counter() - t1
        sync(device)
        return (time.perf_counter() - t0) / steps, (time.process_time() - c0) / steps

    block(True)
    block(False)                                    # warm-up: allocator, caches, first snapshots
    ratios, cpu_ratios, plain = [], [], []
    for r in range(reps):
        order = (False, True) if r % 2 == 0 else (True, False)
        t = {w: block(w) for w in order}
        ratios.append(t[True][0] / t[False][0])
        cpu_ratios.append(t[True][1] / t[False][1])
        plain.append(t[False][0])
    engine_per_step = statistics.median(engine_time[2 * steps:] or engine_time)
    return {"ratio": statistics.median(ratios), "min": min(ratios), "max": max(ratios),
            "cpu_ratio": statistics.median(cpu_ratios), "step_s": statistics.median(plain),
            "engine_s": engine_per_step}


def report(label, res, mem):
    extra, monitored = mem
    print(f"{label:<36} step {res['step_s'] * 1e3:8.1f} ms   wall x{res['ratio']:.4f} "
          f"(range {res['min']:.3f}-{res['max']:.3f})   process-cpu x{res['cpu_ratio']:.4f}   engine {res['engine_s'] * 1e3:7.2f} ms/step "
          f"= {100 * res['engine_s'] / res['step_s']:5.2f}%   memory {extra / 2**20:8.2f} MiB "
          f"= {extra / max(monitored, 1):.4f} of monitored {monitored / 2**20:.1f} MiB", flush=True)


def agreement(preset, steps, device):
    """Would-freeze step per component for the exact and the default (sketched) statistic, same gradients."""
    model, loss_fn = nanovlm_workload(preset, 4, 32, device)
    reg = build_registry(model)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1 - s / (steps + 1))
    first, current = {}, {"step": 0}
    engines = {}
    for tag, sketch in (("exact", "off"), ("sketch", "auto")):
        first[tag] = {}
        eng = GradES(model, reg, GradESConfig.from_dict({"alpha": 0.2, "sketch": sketch}), total_steps=steps)
        names = [c.name for c in eng.components]

        def agree(flags, device, tag=tag, names=names):
            for n, f in zip(names, flags):
                if f:
                    first[tag].setdefault(n, current["step"])
            return [False] * len(flags)
        eng.agree = agree
        engines[tag] = eng
    for step in range(1, steps + 1):
        current["step"] = step
        loss_fn().backward()
        for e in engines.values():
            e.observe(step)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        for e in engines.values():
            e.update(step)
    ex, sk = first["exact"], first["sketch"]
    names = [c.name for c in engines["exact"].components]
    same = sum(ex.get(n) == sk.get(n) for n in names)
    diffs = [abs(ex[n] - sk[n]) for n in names if n in ex and n in sk]
    only = sum((n in ex) != (n in sk) for n in names)
    print(f"agreement {preset}: {len(names)} components, exact would freeze {len(ex)}, sketch {len(sk)}; "
          f"same step {same}/{len(names)}, max step difference {max(diffs, default=0)}, "
          f"frozen by one only {only}; memory exact {engines['exact'].memory_bytes() / 2**20:.2f} MiB, "
          f"sketch {engines['sketch'].memory_bytes() / 2**20:.2f} MiB", flush=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--presets", nargs="+", default=["tiny", "smol"], help="nanoVLM presets")
    ap.add_argument("--reps", type=int, default=5, help="interleaved repetitions (median reported)")
    ap.add_argument("--steps", type=int, default=4, help="steps per block")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=32, help="text tokens per sample (after the image tokens)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: leave as is)")
    ap.add_argument("--official", action="store_true", help="also run the official grades callback")
    ap.add_argument("--qwen", action="store_true", help="also a small random Qwen2.5-VL (about 6M parameters)")
    ap.add_argument("--agreement", type=int, default=0, metavar="STEPS",
                    help="compare sketch and exact freeze decisions over this many steps (tiny preset)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"device {args.device}, torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"batch {args.batch}, {args.reps} reps x {args.steps} steps, interval 1", flush=True)
    workloads = [(f"nanovlm-{p}", lambda p=p: nanovlm_workload(p, args.batch, args.seq, args.device))
                 for p in args.presets]
    if args.qwen:
        workloads.append(("qwen2.5-vl-small", lambda: qwen_workload(args.batch, args.device)))
    total = 10 ** 6
    for label, make in workloads:
        model, loss_fn = make()
        variants = [("default", lambda m: Ours(m, total)),
                    ("exact (sketch off)", lambda m: Ours(m, total, {"sketch": "off"}))]
        if args.official:
            variants.append(("official callback", lambda m: Official(m, total)))
        for vname, build in variants:
            monitor = build(model)
            res = measure(model, loss_fn, monitor, args.reps, args.steps, args.device)
            report(f"{label} {vname}", res, monitor.memory())
            del monitor
    if args.agreement:
        agreement("tiny", args.agreement, args.device)
    return 0


if __name__ == "__main__":
    sys.exit(main())
