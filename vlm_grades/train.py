"""The one training loop: accelerate for devices, mixed precision, processes and trackers; GradES watching.

Order inside an optimizer step (the engine contract of docs/DESIGN): micro-batch backward passes,
gradient clipping, `grades.observe`, optimizer step, `grades.update`, then the stop check.
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import inspect
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import gather_object, set_seed
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from vlm_grades import sharding
from vlm_grades.checkpoint import latest_checkpoint, load_checkpoint, rng_state, save_checkpoint, set_rng_state
from vlm_grades.components import build_registry
from vlm_grades.config import MODALITIES, TrainConfig
from vlm_grades.divergence import keep_last_finite, nonfinite_parameter, report_diverged
from vlm_grades.grades.shards import local
from vlm_grades.errors import UserError
from vlm_grades.feature_cache_switch import FeatureCacheSwitch, check_disk_tier, disk_tier_path
from vlm_grades.optim import build_optimizer, build_scheduler, current_lrs
from vlm_grades.resume import check_run, resume_point
from vlm_grades.run_folder import LOCK, RunFolder, check_can_create, lock_run, unlock_run
from vlm_grades.sampler import ResumableSampler
from vlm_grades.sharded_checkpoint import is_sharded_checkpoint, load_sharded, save_sharded
from vlm_grades.models import build_adapter
from vlm_grades.train_data import load_split, mix_in, training_dataset


@dataclass
class LoopState:
    step: int = 0            # optimizer steps done
    epoch: int = 0
    position: int = 0        # samples of this rank's share consumed in the current epoch
    wall: float = 0.0        # seconds of training so far (over resumes)
    stop_reason: str | None = None
    diverged: bool = False   # non-finite loss or weights: never checkpointed, see divergence.py
    classic: dict[str, Any] = field(default_factory=lambda: {"best": math.inf, "bad": 0, "best_step": 0})


class Trainer:
    def __init__(self, cfg: TrainConfig, run: RunFolder, accelerator: Accelerator, resume_from: Path | None):
        self.cfg, self.run, self.acc = cfg, run, accelerator
        self.main = accelerator.is_main_process
        self.state = LoopState()
        set_seed(cfg.seed)

        main_samples = load_split(cfg, cfg.split, cfg.max_samples, "training")
        self.train_samples, repeats = mix_in(cfg, main_samples)
        if repeats and self.main:
            n = len(self.train_samples) - len(main_samples)
            print(f"mixing in {cfg.mix_task}: {n // repeats} samples x {repeats} = {n / len(self.train_samples):.0%} "
                  f"of {len(self.train_samples)} training samples (--mix-fraction 0 turns it off)")
        self.val_samples = load_split(cfg, cfg.val_split, cfg.val_max_samples, "validation") \
            if cfg.val_split and cfg.stopping == "classic" else []
        if cfg.stopping == "classic" and not self.val_samples:
            raise UserError("--stopping classic: needs validation data (--val-split)")
        # loaded now, so a wrong --eval-split/--eval-data fails before training, not after it
        self.eval_samples = load_split(cfg, cfg.eval_split, cfg.eval_max_samples, "evaluation",
                                       data=cfg.eval_data or cfg.data) if cfg.eval_split else []
        self.adapter = build_adapter(cfg, self.train_samples)
        self.module = self.adapter.model.to(accelerator.device)
        self.registry = build_registry(self.module, self.adapter.architecture)
        self.modality_params = self.registry.modality_parameters(self.module)
        for modality in cfg.freeze:
            for _, p in self.modality_params[modality]:
                p.requires_grad_(False)
        self.fsdp = cfg.distributed == "fsdp"
        if self.fsdp:
            self._skeleton = sharding.skeleton(self.module)
            sharding.shard(self.module, accelerator.device, cfg.mixed_precision, cfg.fsdp_cpu_offload)
            # sharding replaced every parameter by a DTensor: the registry must hold the new ones
            self.registry = build_registry(self.module, self.adapter.architecture)
            self.modality_params = self.registry.modality_parameters(self.module)

        lrs = {"vision": cfg.lr_vision, "projector": cfg.lr_projector, "language": cfg.lr_language}
        self.optimizer = build_optimizer(self.modality_params, lrs, cfg.weight_decay)
        self.scheduler = build_scheduler(self.optimizer, cfg.steps, cfg.warmup, cfg.schedule, cfg.min_lr_ratio)
        self.grades = self._build_grades() if cfg.stopping == "grades" else None

        self.dataset = training_dataset(self.train_samples, self.adapter, cfg.seed)
        self.sampler = ResumableSampler(len(self.dataset), cfg.seed, accelerator.process_index,
                                        accelerator.num_processes)
        per_step = cfg.batch_size * cfg.grad_accum
        if len(self.sampler) < per_step:
            raise UserError(f"--batch-size: {cfg.batch_size} x {cfg.grad_accum} accumulation is larger than "
                            f"the {len(self.train_samples)} training samples")
        if resume_from is not None:
            self._restore(resume_from)
        self.model = self._wrap()
        if self.main:   # disk-tier files of processes a killed attempt had beyond ours; ours are made anew
            mine = {self._disk_tier_path(r) for r in range(self.acc.num_processes)}
            for stale in set(self._disk_tier_path(0).parent.glob(self._disk_tier_path("*").name)) - mine:
                stale.unlink()
        self.feature_cache = FeatureCacheSwitch(self.adapter, self.modality_params, cfg.feature_cache_bytes(),
                                                emit=self.run.append if self.main else None,
                                                say=print if self.main else None,
                                                disk_bytes=cfg.feature_cache_disk_bytes(),
                                                disk_path=self._disk_tier_path(self.acc.process_index),
                                                # the cache runs the tower outside the sharded root's forward
                                                blocker="--distributed fsdp (the tower's weights are sharded)"
                                                if self.fsdp else None)

    # setup --------------------------------------------------------------------------------------
    def _disk_tier_path(self, rank: int | str) -> Path:
        """A process's file of the feature cache's disk tier."""
        return disk_tier_path(self.run.path, self.cfg.feature_cache_dir, rank)

    def _build_grades(self):
        from vlm_grades.grades import GradES, GradESConfig

        config = GradESConfig.from_dict(self.cfg.grades)
        writer = self.run.append if self.main else None
        return GradES(self.module, self.registry, config, optimizer=self.optimizer, total_steps=self.cfg.steps,
                      writer=writer)

    def _wrap(self):
        """DDP over the parameters that still train; re-wrapped whenever GradES freezes some, so buckets
        never wait for gradients that will not come (no find_unused_parameters, no static graph)."""
        self._trainable = sum(p.requires_grad for p in self.module.parameters())
        if self.fsdp:   # FSDP2 needs no re-wrap: a frozen matrix is skipped at its next unshard
            return self.module
        if self.acc.num_processes == 1 or self._trainable == 0:   # all frozen: GradES stops, DDP would refuse
            return self.module
        device_ids = [self.acc.device.index] if self.acc.device.type == "cuda" else None
        ddp = torch.nn.parallel.DistributedDataParallel
        # buffers (rotary tables) are the same on every rank: no sync before each forward
        no_sync = {"forward_sync_buffers" if "forward_sync_buffers" in inspect.signature(ddp).parameters
                   else "broadcast_buffers": False}
        return ddp(self.module, device_ids=device_ids, **no_sync)

    def _restore(self, path: Path) -> None:
        parts, trainer_state = load_checkpoint(path)
        if is_sharded_checkpoint(path) != self.fsdp:
            written = "with" if is_sharded_checkpoint(path) else "without"
            raise UserError(f"--distributed {self.cfg.distributed}: {path} was written {written} FSDP sharding; "
                            f"resume with --distributed {'fsdp' if written == 'with' else 'ddp'}")
        if not self.fsdp:
            self.module.load_state_dict(parts["model"])
        if self.grades is not None and parts.get("grades") is not None:
            self.grades.load_state_dict(parts["grades"])  # re-freezes before the optimizer state comes back
        if self.fsdp:
            load_sharded(path, self.module, self.optimizer)
        else:
            self.optimizer.load_state_dict(parts["optimizer"])
        self.scheduler.load_state_dict(parts["scheduler"])
        self._best = parts.get("classic_best")   # classic stopping: the best weights so far
        rng = parts["rng"]
        set_rng_state(rng[self.acc.process_index] if isinstance(rng, list) else rng)
        s = trainer_state["loop"]
        self.state = LoopState(**s)
        if self.main:
            self.run.truncate_after(self.state.step)
            print(f"resumed from {path} at step {self.state.step}")

    # loop ---------------------------------------------------------------------------------------
    def _batches(self):
        """Yields batches forever, advancing epochs; tracks the position for resume."""
        cfg = self.cfg
        while True:
            self.sampler.set_epoch(self.state.epoch, self.state.position)
            self.dataset.set_epoch(self.state.epoch)
            loader = DataLoader(self.dataset, batch_size=cfg.batch_size, sampler=self.sampler,
                                collate_fn=self.adapter.collate, num_workers=cfg.num_workers, drop_last=True,
                                persistent_workers=False)
            for batch in loader:
                self.state.position += cfg.batch_size
                yield batch
            self.state.epoch += 1
            self.state.position = 0

    def _to_device(self, batch: dict[str, Any]) -> dict[str, Any]:
        return {k: v.to(self.acc.device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}

    def _micro_step(self, batch: dict[str, Any], sync: bool) -> float:
        ctx = self.model.no_sync() if (not sync and hasattr(self.model, "no_sync")) else contextlib.nullcontext()
        with ctx, self.acc.autocast():
            loss = self._loss(batch)
            self.acc.backward(loss / self.cfg.grad_accum)
        return float(loss.detach())

    def _loss(self, batch):
        if self.model is self.module:
            return self.adapter.loss(batch)
        # under DDP the forward must go through the wrapper so its hooks see it
        original, self.adapter.model = self.adapter.model, self.model
        try:
            return self.adapter.loss(batch)
        finally:
            self.adapter.model = original

    def fit(self) -> LoopState:
        cfg, state = self.cfg, self.state
        if self.main:
            self.run.append("events", {"type": "start", "step": state.step, "time": time.time(),
                                       "total_steps": cfg.steps, "resumed_from": state.step or None})
        batches = self._batches()
        bar = tqdm(total=cfg.steps, initial=state.step, disable=not (cfg.progress and self.main),
                   desc="train", unit="step", dynamic_ncols=True)
        self.module.train()
        self.feature_cache.update(state.step)
        while state.step < cfg.steps and state.stop_reason is None:
            t0 = time.perf_counter()
            losses, tokens = [], {m: 0 for m in MODALITIES}
            for micro in range(cfg.grad_accum):
                batch = self._to_device(next(batches))
                for m, n in self.adapter.tokens_per_modality(batch).items():
                    tokens[m] += n * self.acc.num_processes
                losses.append(self._micro_step(batch, sync=micro == cfg.grad_accum - 1))
            grads = [p for p in self.module.parameters() if p.grad is not None]
            if cfg.clip and grads:
                torch.nn.utils.clip_grad_norm_(grads, cfg.clip)
            state.step += 1
            if self.grades is not None:
                self.grades.observe(state.step)
            self.optimizer.step()
            self.scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
            if self.grades is not None:
                self.grades.update(state.step)
                if sum(p.requires_grad for p in self.module.parameters()) != self._trainable:
                    self.model = self._wrap()
                if self.grades.should_stop:
                    state.stop_reason = self.grades.stop_reason or "all components frozen"
                self.feature_cache.update(state.step)
            loss = sum(losses) / len(losses)
            if self.acc.num_processes > 1:   # the global batch's loss: every rank takes the same decisions on it
                loss = float(self.acc.reduce(torch.tensor(loss, device=self.acc.device), reduction="mean"))
            if not math.isfinite(loss):
                self._diverge(f"non-finite training loss at step {state.step}")
            step_time = time.perf_counter() - t0
            state.wall += step_time
            self._log(loss, step_time, tokens, bar)
            if cfg.stopping == "classic" and not state.diverged and state.step % cfg.classic_every == 0:
                t_val = time.perf_counter()
                self._classic_check()
                state.wall += time.perf_counter() - t_val  # validation passes are part of classic's cost
            if self._checkpoint_due():
                self._checkpoint_if_finite()
        bar.close()
        bad = None if state.diverged else self._nonfinite()
        if bad:
            self._diverge(f"non-finite weights at step {state.step} ({bad})")
        if cfg.stopping == "classic" and getattr(self, "_best", None) is not None and not state.diverged:
            self.module.load_state_dict(self._best)
            if self.main:
                self.run.append("events", {"type": "restore", "step": state.step,
                                           "best_step": state.classic["best_step"]})
        state.stop_reason = state.stop_reason or "planned steps done"
        if self.main:
            self.run.append("events", {"type": "stop", "step": state.step, "reason": state.stop_reason})
        return state

    def _log(self, loss: float, step_time: float, tokens: dict[str, int], bar) -> None:
        frozen = self.grades.frozen_fraction() if self.grades is not None else {m: 0.0 for m in MODALITIES}
        state = self.state
        record = {"step": state.step, "epoch": state.epoch + state.position / max(1, len(self.sampler)),
                  "loss": loss, "lr": current_lrs(self.optimizer), "step_time": step_time, "wall": state.wall,
                  "tokens": tokens, "frozen": frozen}
        multi = self.acc.num_processes > 1
        record.update(self.feature_cache.step_record(self._reduce_sum if multi else None, self.acc.process_index,
                                                     self.acc.num_processes) or {})
        if self.main:
            self.run.append("metrics", record)
            if self.cfg.report_to and state.step % self.cfg.log_every == 0:
                flat = {"train/loss": loss, "train/step_time": step_time}
                flat.update({f"lr/{k}": v for k, v in record["lr"].items()})
                flat.update({f"frozen/{k}": v for k, v in frozen.items()})
                self.acc.log(flat, step=state.step)
        bar.update(1)
        bar.set_postfix_str(f"loss {loss:.3f} | {step_time * 1000:.0f} ms/step | frozen "
                            + " ".join(f"{m[0].upper()} {frozen.get(m, 0):.0%}" for m in MODALITIES)
                            + self.feature_cache.postfix(), refresh=False)

    def _reduce_sum(self, values: list[int]) -> list[int]:
        return [int(v) for v in self.acc.reduce(torch.tensor(values, device=self.acc.device), reduction="sum")]

    # classic early stopping ---------------------------------------------------------------------
    @torch.no_grad()
    def validation_loss(self) -> float:
        self.module.eval()
        total, count = 0.0, 0
        bs = self.cfg.eval_batch_size
        for start in range(0, len(self.val_samples), bs):
            items = [self.adapter.preprocess(s, train=True) for s in self.val_samples[start:start + bs]]
            batch = self._to_device(self.adapter.collate(items))
            with self.acc.autocast():
                total += float(self.adapter.loss(batch)) * len(items)
            count += len(items)
        self.module.train()
        return total / max(1, count)

    def _classic_check(self) -> None:
        value = self.validation_loss()
        c = self.state.classic
        improved = value < c["best"] - self.cfg.classic_min_delta
        if improved:
            c.update(best=value, bad=0, best_step=self.state.step)
            self._best = copy.deepcopy({k: v.detach().cpu() for k, v in self.module.state_dict().items()})
        else:
            c["bad"] += 1
            if c["bad"] >= self.cfg.classic_patience:
                self.state.stop_reason = (f"validation loss did not improve for {c['bad']} checks "
                                          f"(best {c['best']:.4f} at step {c['best_step']})")
        if self.main:
            self.run.append("events", {"type": "validation", "step": self.state.step, "loss": value,
                                       "best": c["best"], "improved": improved})

    def _diverge(self, reason: str) -> None:
        if not self.state.diverged:
            self.state.stop_reason, self.state.diverged = reason, True

    # checkpoints --------------------------------------------------------------------------------
    def _checkpoint_due(self) -> bool:
        """Every --checkpoint-every steps, and at the step of an early stop, so it can be resumed and compared."""
        state = self.state
        if state.diverged or state.step >= self.cfg.steps:
            return False
        return state.stop_reason is not None or state.step % self.cfg.checkpoint_every == 0

    def _checkpoint_if_finite(self) -> None:
        bad = self._nonfinite()   # the same answer on every rank: the same decision
        if bad:
            self._diverge(f"non-finite weights at step {self.state.step} ({bad})")
        else:
            self.checkpoint()

    def _nonfinite(self) -> str | None:
        return sharding.any_nonfinite(self.module) if self.fsdp else nonfinite_parameter(self.module)

    def checkpoint(self) -> None:
        rngs = gather_object([rng_state()]) if self.acc.num_processes > 1 else [rng_state()]
        if self.fsdp:
            self._sharded_checkpoint(rngs)
            return
        if self.main:
            parts = {"model": self.module.state_dict(), "optimizer": self.optimizer.state_dict(),
                     "scheduler": self.scheduler.state_dict(),
                     "grades": self.grades.state_dict() if self.grades is not None else None, "rng": rngs,
                     "classic_best": getattr(self, "_best", None)}
            loop = dict(vars(self.state))
            path = save_checkpoint(self.run.checkpoints, self.state.step, parts, {"loop": loop},
                                   self.cfg.keep_checkpoints)
            self.run.append("events", {"type": "checkpoint", "step": self.state.step,
                                       "path": str(path.relative_to(self.run.path))})
        self.acc.wait_for_everyone()

    def _sharded_checkpoint(self, rngs: list) -> None:
        grades = self.grades.state_dict() if self.grades is not None else None   # gathers: every rank
        parts = {"scheduler": self.scheduler.state_dict(), "grades": grades, "rng": rngs}
        path = save_sharded(self.run.checkpoints, self.state.step, self.module, self.optimizer, parts,
                            {"loop": dict(vars(self.state))}, self.cfg.keep_checkpoints)
        if self.main:
            self.run.append("events", {"type": "checkpoint", "step": self.state.step,
                                       "path": str(path.relative_to(self.run.path))})
        self.acc.wait_for_everyone()

    def gather_model(self) -> None:
        """FSDP: every rank sends its shards; rank 0's adapter then holds an ordinary model of the whole
        weights (on its device), which saves and evaluates without torch.distributed."""
        weights = sharding.full_state_dict(self.module)
        if self.main:
            self.adapter.model = sharding.materialize(self._skeleton, weights).to(self.acc.device)
        self.acc.wait_for_everyone()

    def restore_last_checkpoint(self) -> Path | None:
        """FSDP, diverged run: the newest checkpoint (its weights are finite, or it would not exist) back into
        the sharded model, on every rank."""
        path = latest_checkpoint(self.run.checkpoints)
        if path is not None:
            load_sharded(path, self.module, None)
        return path


def train(cfg: TrainConfig, resume: bool = False) -> dict[str, Any]:
    """Runs `vlm-grades train`; returns the summary (steps, stop reason, wall time, score)."""
    cfg.validate()
    check_launcher(cfg)
    cfg.out = cfg.out or default_run_name(cfg)
    accelerator = Accelerator(mixed_precision=cfg.mixed_precision, log_with=cfg.report_to or None,
                              project_dir=cfg.out, cpu=_cpu_processes())
    run, resume_from = open_run_folder(cfg, resume, accelerator)
    if accelerator.is_local_main_process:   # before data and model load: the disk tier's folder and room
        check_disk_tier(run.path, cfg.feature_cache_dir, cfg.feature_cache_disk_bytes(),
                        int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    trainer = Trainer(cfg, run, accelerator, resume_from)
    if accelerator.is_main_process:
        run.write_json("components.json", trainer.registry.to_json(trainer.module))
        # every GradES setting, not only those given: a replay or report must see the rule the run used
        resolved = dataclasses.replace(cfg, grades=trainer.grades.config.to_dict()) if trainer.grades else cfg
        run.write_text("config.yaml", resolved.to_yaml())   # rewritten on resume: atomically
        if cfg.report_to:
            accelerator.init_trackers(run.path.name, config={k: v for k, v in cfg.to_dict().items()
                                                            if isinstance(v, (int, float, str, bool))})
    accelerator.wait_for_everyone()
    try:
        state = trainer.fit()
    finally:
        trainer.feature_cache.close()
    summary: dict[str, Any] = {"run": str(run.path), "steps": state.step, "planned_steps": cfg.steps,
                               "stop_reason": state.stop_reason, "wall_time": state.wall}
    if trainer.grades is not None:
        summary["frozen"] = trainer.grades.frozen_fraction()
    if os.environ.get("VLM_GRADES_RANK_STATE"):   # debugging/tests: what each process ended with
        write_rank_state(trainer, run)
    restored = None
    if trainer.fsdp:
        if state.diverged:
            restored = trainer.restore_last_checkpoint()
        trainer.gather_model()
    if accelerator.is_main_process:
        if state.diverged and trainer.fsdp:
            summary.update(report_diverged(run, trainer.adapter, state.step, state.stop_reason, restored))
        elif state.diverged:
            summary.update(keep_last_finite(run, trainer.adapter, state.step, state.stop_reason))
        else:
            trainer.adapter.save(run.final)
            if cfg.eval_split:
                summary["eval"] = evaluate_held_out(cfg, trainer.adapter, run, state.step, trainer.eval_samples)
        run.append("events", {"type": "end", "step": state.step, "wall_time": state.wall,
                              "stop_reason": state.stop_reason})
        run.write_json("summary.json", summary)
        unlock_run(run.path)
    accelerator.wait_for_everyone()
    if cfg.report_to:
        accelerator.end_training()
    return summary


def check_launcher(cfg: TrainConfig) -> None:
    """What `accelerate launch` was told, against --distributed: one line before any work."""
    env = os.environ
    if env.get("ACCELERATE_USE_DEEPSPEED", "").lower() == "true":
        raise UserError("accelerate launch --use_deepspeed: DeepSpeed ZeRO is not supported; launch without it "
                        "and pass --distributed fsdp (FSDP2) to shard parameters, gradients and optimizer state")
    if env.get("ACCELERATE_USE_FSDP", "").lower() == "true":
        if env.get("FSDP_VERSION", "1") != "2":
            raise UserError("accelerate launch --use_fsdp: only FSDP version 2 is supported (--fsdp_version 2), "
                            "or launch without it and pass --distributed fsdp")
        cfg.distributed = "fsdp"
        cfg.fsdp_cpu_offload = cfg.fsdp_cpu_offload or env.get("FSDP_OFFLOAD_PARAMS", "").lower() == "true"
        cfg.validate()
    if cfg.distributed == "fsdp" and int(env.get("WORLD_SIZE", "1")) < 2:
        raise UserError("--distributed fsdp: needs 2 or more processes (torchrun --nproc-per-node N ... or "
                        "accelerate launch --num_processes N ...)")


def write_rank_state(trainer: Trainer, run: RunFolder) -> None:
    """rank-<i>.json in the run folder: this process's final weights hash, frozen matrices, trainable parameters,
    the step its feature cache went on (None: never)."""
    import hashlib
    import json

    digest = hashlib.sha256()   # FSDP: of this rank's shards
    for name, tensor in sorted(trainer.module.state_dict().items()):
        digest.update(name.encode())
        digest.update(local(tensor).detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    frozen = trainer.grades.frozen if trainer.grades is not None else {}
    record = {"rank": trainer.acc.process_index, "processes": trainer.acc.num_processes, "step": trainer.state.step,
              "weights_sha256": digest.hexdigest(), "frozen": dict(sorted(frozen.items())),
              "trainable": sorted(n for n, p in trainer.module.named_parameters() if p.requires_grad),
              "feature_cache_on_step": trainer.feature_cache.on_step}
    (run.path / f"rank-{trainer.acc.process_index}.json").write_text(json.dumps(record, indent=1))


def _cpu_processes() -> bool:
    """Several processes (torchrun, `accelerate launch --multi_gpu`) on a machine without an accelerator:
    accelerate sets up its multi-CPU (gloo) mode only when told cpu=True."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    accel = getattr(torch, "accelerator", None)
    return not (accel.is_available() if accel is not None else torch.cuda.is_available())


def default_run_name(cfg: TrainConfig) -> str:
    return str(Path("runs") / f"{cfg.model.replace('.', '')}-{cfg.task}-{time.strftime('%Y%m%d-%H%M%S')}")


def open_run_folder(cfg: TrainConfig, resume: bool, accelerator: Accelerator) -> tuple[RunFolder, Path | None]:
    """A new, empty run folder; or, with resume, the existing one and its newest complete checkpoint (None: afresh)."""
    path = Path(cfg.out)
    if resume:
        if accelerator.is_main_process:
            check_run(path)   # a folder that is not a run is refused before anything is written there
            lock_run(path)
        return resume_point(path, accelerator.is_main_process)
    if path.is_dir() and any(p.name != LOCK for p in path.iterdir()):
        raise UserError(f"--out {path}: folder exists and is not empty (use --resume to continue that run)")
    accelerator.wait_for_everyone()   # every process has looked before the main one writes into it
    if accelerator.is_main_process:
        check_can_create(path)
        lock_run(path)
    return RunFolder(path, create=True), None


def evaluate_held_out(cfg: TrainConfig, adapter, run: RunFolder, step: int, samples=None) -> dict[str, Any]:
    """Scores the trained model on the held-out split with the same code as `vlm-grades eval`."""
    from eval.runner import evaluate

    if samples is None:
        samples = load_split(cfg, cfg.eval_split, cfg.eval_max_samples, "evaluation", data=cfg.eval_data or cfg.data)
    adapter.model.eval()
    result = evaluate(adapter, samples, cfg.task, run.path / "eval", batch_size=cfg.eval_batch_size,
                      max_new_tokens=cfg.max_new_tokens, progress=cfg.progress,
                      feature_cache=cfg.feature_cache_bytes())
    run.append("events", {"type": "eval", "step": step, "task": cfg.task, "split": cfg.eval_split,
                          "score": result.get("score"), "metrics": result})
    return result
