"""`vlm-grades train` from end to end: check the launch, open the run folder, write what the run is, run the loop
(loop.py), then keep its result: the final model (or, for a diverged run, the last finite checkpoint) and its
held-out score."""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator

from vlm_grades.config import TrainConfig
from vlm_grades.errors import UserError
from vlm_grades.grades.shards import local
from vlm_grades.training.data import load_split
from vlm_grades.training.loop import Trainer
from vlm_grades.training.cache_files import check_disk_tier
from vlm_grades.training.resume import check_run, resume_point
from vlm_grades.training.run_folder import LOCK, RunFolder, check_can_create, lock_run, unlock_run


def train(cfg: TrainConfig, resume: bool = False, extend: bool = False) -> dict[str, Any]:
    """Runs `vlm-grades train`; returns the summary (steps, stop reason, wall time, score). extend: a resumed run
    continues past the end of a finished one (the CLI's --extend, checked by resume.check_changes)."""
    cfg.validate()
    check_launcher(cfg)
    cfg.out = cfg.out or default_run_name(cfg)
    accelerator = Accelerator(mixed_precision=cfg.mixed_precision, log_with=cfg.report_to or None,
                              project_dir=cfg.out, cpu=_cpu_processes())
    run, resume_from = open_run_folder(cfg, resume, accelerator, extend)
    if accelerator.is_local_main_process:   # before data and model load: the disk tier's folder and room
        check_disk_tier(run.path, cfg.feature_cache_dir, cfg.feature_cache_disk_bytes(),
                        int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    trainer = Trainer(cfg, run, accelerator, resume_from)
    if accelerator.is_main_process:
        run.write_json("components.json", trainer.registry.to_json(trainer.module))
        run.write_text("config.yaml", trainer.stopping.resolved(cfg).to_yaml())   # rewritten on resume: atomically
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
    summary.update(trainer.stopping.summary())
    if os.environ.get("VLM_GRADES_RANK_STATE"):   # debugging/tests: what each process ended with
        write_rank_state(trainer, run)
    restored = trainer.parallel.finish(trainer.adapter, trainer.module, run, state.diverged)
    if accelerator.is_main_process:
        if state.diverged:
            summary.update(trainer.parallel.keep_diverged(run, trainer.adapter, state.step, state.stop_reason,
                                                          restored))
        else:
            if resume_from is not None and state.step == trainer.resumed_step and run.final.is_dir():
                print(f"kept {run.final}: the run had saved it at step {state.step} (written atomically, so "
                      f"complete); evaluating it")
            else:
                run.save_final(trainer.adapter)
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

    from vlm_grades.training.schedule import wsd_factor

    digest = hashlib.sha256()   # FSDP: of this rank's shards
    for name, tensor in sorted(trainer.module.state_dict().items()):
        digest.update(name.encode())
        digest.update(local(tensor).detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    frozen = trainer.stopping.frozen
    record = {"rank": trainer.acc.process_index, "processes": trainer.acc.num_processes, "step": trainer.state.step,
              "weights_sha256": digest.hexdigest(), "frozen": dict(sorted(frozen.items())),
              "trainable": sorted(n for n, p in trainer.module.named_parameters() if p.requires_grad),
              "feature_cache_on_step": trainer.feature_cache.on_step,
              "decay_start": getattr(wsd_factor(trainer.scheduler), "decay_start", None)}
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


def open_run_folder(cfg: TrainConfig, resume: bool, accelerator: Accelerator,
                    extend: bool = False) -> tuple[RunFolder, Path | None]:
    """A new, empty run folder; or, with resume, the existing one and its newest complete checkpoint (None: afresh)."""
    path = Path(cfg.out)
    if resume:
        if accelerator.is_main_process:
            check_run(path)   # a folder that is not a run is refused before anything is written there
            lock_run(path)
        return resume_point(path, accelerator.is_main_process, accelerator.num_processes, extend)
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
