"""The one training loop. Order inside an optimizer step (the engine contract of docs/DESIGN): micro-batch
backward passes, gradient clipping, `stopping.observe`, optimizer and schedule step, `stopping.update`
(freezes; a re-wrap when the trainable set changed), the loss agreed across processes, the log line,
`stopping.check` (validation passes), a checkpoint when due. How processes are used is `self.parallel`
(vlm_grades/parallel), what ends the run is `self.stopping` (stopping.py): the loop never asks which they are.
"""
from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from vlm_grades.components import build_registry
from vlm_grades.config import MODALITIES, TrainConfig
from vlm_grades.errors import UserError
from vlm_grades.feature_cache.switch import FeatureCacheSwitch
from vlm_grades.training.cache_files import disk_tier_path, remove_stale
from vlm_grades.models import build_adapter
from vlm_grades.parallel import build_parallel
from vlm_grades.training.checkpoint import load_checkpoint, set_rng_state
from vlm_grades.training.data import load_split, mix_in, training_dataset
from vlm_grades.training.optim import build_optimizer, current_lrs
from vlm_grades.training.run_folder import RunFolder
from vlm_grades.training.sampler import ResumableSampler
from vlm_grades.training.schedule import build_scheduler
from vlm_grades.training.stopping import build_stopping, initial_classic_state, validation_data


@dataclass
class LoopState:
    step: int = 0            # optimizer steps done
    epoch: int = 0
    position: int = 0        # samples of this rank's share consumed in the current epoch
    wall: float = 0.0        # seconds of training so far (over resumes)
    stop_reason: str | None = None
    diverged: bool = False   # non-finite loss or weights: never checkpointed, see divergence.py
    classic: dict[str, Any] = field(default_factory=initial_classic_state)
    processes: int = 1       # the world size: the data position and the global batch are in its terms


class Trainer:
    def __init__(self, cfg: TrainConfig, run: RunFolder, accelerator: Accelerator, resume_from: Path | None):
        self.cfg, self.run, self.acc = cfg, run, accelerator
        self.main = accelerator.is_main_process
        self.state = LoopState(processes=accelerator.num_processes)
        self.resumed_step: int | None = None   # the step of the checkpoint this attempt started from
        set_seed(cfg.seed)

        main_samples = load_split(cfg, cfg.split, cfg.max_samples, "training")
        self.train_samples, repeats = mix_in(cfg, main_samples)
        if repeats and self.main:
            n = len(self.train_samples) - len(main_samples)
            print(f"mixing in {cfg.mix_task}: {n // repeats} samples x {repeats} = {n / len(self.train_samples):.0%} "
                  f"of {len(self.train_samples)} training samples (--mix-fraction 0 turns it off)")
        self.val_samples = validation_data(cfg, load_split)
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
        self.parallel = build_parallel(cfg.distributed, accelerator, cfg.mixed_precision, cfg.fsdp_cpu_offload)
        if self.parallel.prepare(self.module):   # new parameter objects: the registry must hold them
            self.registry = build_registry(self.module, self.adapter.architecture)
            self.modality_params = self.registry.modality_parameters(self.module)

        lrs = {"vision": cfg.lr_vision, "projector": cfg.lr_projector, "language": cfg.lr_language}
        self.optimizer = build_optimizer(self.modality_params, lrs, cfg.weight_decay)
        self.scheduler = build_scheduler(self.optimizer, cfg.steps, cfg.warmup, cfg.schedule, cfg.min_lr_ratio,
                                         cfg.cooldown, cfg.decay_at, cfg.cooldown_shape)
        self.stopping = build_stopping(cfg, self.state, self.module, self.registry, self.optimizer, self.adapter,
                                       self.val_samples, accelerator.autocast, self._to_device,
                                       self.run.append if self.main else None, self.scheduler)

        self.dataset = training_dataset(self.train_samples, self.adapter, cfg.seed)
        self.sampler = ResumableSampler(len(self.dataset), cfg.seed, accelerator.process_index,
                                        accelerator.num_processes)
        per_step = cfg.batch_size * cfg.grad_accum
        if len(self.sampler) < per_step:
            raise UserError(f"--batch-size: {cfg.batch_size} x {cfg.grad_accum} accumulation is larger than "
                            f"the {len(self.train_samples)} training samples")
        if resume_from is not None:
            self._restore(resume_from)
        self._wrap()
        if self.main:   # disk-tier files of processes a killed attempt had beyond ours; ours are made anew
            remove_stale(self.run.path, cfg.feature_cache_dir, self.acc.num_processes)
        self.feature_cache = FeatureCacheSwitch(self.adapter, self.modality_params, cfg.feature_cache_bytes(),
                                                emit=self.run.append if self.main else None,
                                                say=print if self.main else None,
                                                disk_bytes=cfg.feature_cache_disk_bytes(),
                                                disk_path=disk_tier_path(self.run.path, cfg.feature_cache_dir,
                                                                         self.acc.process_index),
                                                blocker=self.parallel.feature_cache_blocker)

    # set-up -------------------------------------------------------------------------------------
    def _wrap(self) -> None:
        self._trainable = sum(p.requires_grad for p in self.module.parameters())
        self.model = self.parallel.wrap(self.module)

    def _restore(self, path: Path) -> None:
        parts, trainer_state = load_checkpoint(path)
        self.parallel.check_checkpoint(path)
        self.parallel.restore_model(path, parts, self.module)
        self.stopping.load_state(parts)   # re-freezes before the optimizer state comes back
        self.parallel.restore_optimizer(path, parts, self.module, self.optimizer)
        self.scheduler.load_state_dict(parts["scheduler"])
        # the next step's learning rate from this run's schedule (an --extend re-planned it; otherwise the same)
        for group, base, factor in zip(self.optimizer.param_groups, self.scheduler.base_lrs,
                                       self.scheduler.lr_lambdas):
            group["lr"] = base * factor(self.scheduler.last_epoch)
        rng = parts["rng"]
        set_rng_state(rng[self.acc.process_index] if isinstance(rng, list) else rng)
        # the policies hold the loop state: update it in place
        for key, value in trainer_state["loop"].items():
            setattr(self.state, key, value)
        self.resumed_step = self.state.step
        if self.main:
            self.run.truncate_after(self.state.step)
            print(f"resumed from {path} at step {self.state.step}")

    # one step -----------------------------------------------------------------------------------
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
        # a wrapper (DDP) must see the forward so its hooks run
        original, self.adapter.model = self.adapter.model, self.model
        try:
            return self.adapter.loss(batch)
        finally:
            self.adapter.model = original

    def _forward_backward(self, batches) -> tuple[float, dict[str, int]]:
        """The micro-batches of one optimizer step; their mean loss and the tokens each modality saw."""
        losses, tokens = [], {m: 0 for m in MODALITIES}
        for micro in range(self.cfg.grad_accum):
            batch = self._to_device(next(batches))
            for m, n in self.adapter.tokens_per_modality(batch).items():
                tokens[m] += n * self.acc.num_processes
            losses.append(self._micro_step(batch, sync=micro == self.cfg.grad_accum - 1))
        return sum(losses) / len(losses), tokens

    def _clip(self) -> None:
        grads = [p for p in self.module.parameters() if p.grad is not None]
        if self.cfg.clip and grads:
            torch.nn.utils.clip_grad_norm_(grads, self.cfg.clip)

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
            loss, tokens = self._forward_backward(batches)
            self._clip()
            state.step += 1
            self.stopping.observe(state.step)
            self.optimizer.step()
            self.scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
            state.stop_reason = self.stopping.update(state.step)
            if sum(p.requires_grad for p in self.module.parameters()) != self._trainable:
                self._wrap()
            self.feature_cache.update(state.step)   # on when the tower froze; off when its hit rate cannot pay
            loss = self.parallel.mean(loss)   # the global batch's loss: every rank takes the same decisions
            if not math.isfinite(loss):
                self._diverge(f"non-finite training loss at step {state.step}")
            step_time = time.perf_counter() - t0
            state.wall += step_time
            self._log(loss, step_time, tokens, bar)
            t_check = time.perf_counter()
            state.stop_reason = state.stop_reason or self.stopping.check(state.step)
            state.wall += time.perf_counter() - t_check   # validation passes are part of classic's cost
            if self._checkpoint_due():
                self._checkpoint_if_finite()
        bar.close()
        bad = None if state.diverged else self.parallel.nonfinite(self.module)
        if bad:
            self._diverge(f"non-finite weights at step {state.step} ({bad})")
        self.stopping.finish(state.step)
        state.stop_reason = state.stop_reason or "planned steps done"
        if self.main:
            self.run.append("events", {"type": "stop", "step": state.step, "reason": state.stop_reason})
        return state

    def _log(self, loss: float, step_time: float, tokens: dict[str, int], bar) -> None:
        frozen = self.stopping.frozen_fraction()
        state = self.state
        record = {"step": state.step, "epoch": state.epoch + state.position / max(1, len(self.sampler)),
                  "loss": loss, "lr": current_lrs(self.optimizer), "step_time": step_time, "wall": state.wall,
                  "tokens": tokens, "frozen": frozen}
        record.update(self.feature_cache.step_record(self.parallel.reduce_sum, self.acc.process_index,
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

    def _diverge(self, reason: str) -> None:
        if not self.state.diverged:
            self.state.stop_reason, self.state.diverged = reason, True

    # checkpoints --------------------------------------------------------------------------------
    def _checkpoint_due(self) -> bool:
        """Every --checkpoint-every steps, at the step of an early stop (so it can be resumed and compared) and at
        the last planned step: a run killed after it (saving or evaluating) loses no step, and an --extend
        continues from its end."""
        state = self.state
        if state.diverged:
            return False
        return state.stop_reason is not None or state.step % self.cfg.checkpoint_every == 0 or \
            state.step >= self.cfg.steps

    def _checkpoint_if_finite(self) -> None:
        bad = self.parallel.nonfinite(self.module)   # the same answer on every rank: the same decision
        if bad:
            self._diverge(f"non-finite weights at step {self.state.step} ({bad})")
        else:
            self.checkpoint()

    def checkpoint(self) -> None:
        rngs = self.parallel.rng_states()

        def parts() -> dict[str, Any]:
            return {"scheduler": self.scheduler.state_dict(), **self.stopping.checkpoint_parts(), "rng": rngs}

        path = self.parallel.save(self.run, self.state.step, self.module, self.optimizer, parts,
                                  dict(vars(self.state)), self.cfg.keep_checkpoints)
        if self.main:
            self.run.append("events", {"type": "checkpoint", "step": self.state.step,
                                       "path": str(path.relative_to(self.run.path))})
