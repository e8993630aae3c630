"""GradESCallback: the GradES engine inside a `transformers.Trainer` (or TRL's SFTTrainer) run.

    trainer = Trainer(model=model, args=args, ..., callbacks=[GradESCallback(GradESConfig.official(0.13, 0.09))])

Gradient statistics are taken in `on_pre_optimizer_step` (gradients final and clipped), freeze decisions
and the weight-change statistic in `on_step_end` (after the optimizer step), and `should_training_stop` is set
once the engine says so. Steps are the Trainer's global_step (1-based after the first optimizer step).
Checkpoints: the engine state goes into each `checkpoint-N/grades_state.pt`; on resume it is read back.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable

import torch
from transformers import TrainerCallback

from vlm_grades.components import Registry, build_registry
from vlm_grades.grades import GradES, GradESConfig

STATE_FILE = "grades_state.pt"


def jsonl_writer(directory: str | os.PathLike) -> Callable[[str, dict], None]:
    """Appends convergence.jsonl / events.jsonl records in a folder (RunFolder's format)."""
    from vlm_grades.training.run_folder import json_safe

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)

    def write(kind: str, record: dict) -> None:
        with open(directory / f"{kind}.jsonl", "a") as f:
            f.write(json.dumps(json_safe(record)) + "\n")

    return write


class GradESCallback(TrainerCallback):
    def __init__(self, config: GradESConfig | dict | None = None, architecture: str | None = None,
                 registry: Registry | None = None, writer: Callable[[str, dict], None] | None = None,
                 log_dir: str | os.PathLike | None = None):
        """writer: called as writer(kind, record); or log_dir: jsonl files written there; neither: the
        Trainer's output_dir. registry: built from the model at train begin when not given."""
        self.config = config if isinstance(config, GradESConfig) else GradESConfig.from_dict(config)
        self.architecture, self.registry = architecture, registry
        self.writer, self.log_dir = writer, log_dir
        self.engine: GradES | None = None

    # ------------------------------------------------------------------ events
    def on_train_begin(self, args, state, control, model=None, optimizer=None, **kwargs):
        if self.engine is None:
            registry = self.registry or build_registry(model, self.architecture)
            writer = self.writer
            if writer is None and state.is_world_process_zero:
                writer = jsonl_writer(self.log_dir or args.output_dir)
            total = state.max_steps if state.max_steps and state.max_steps > 0 else None
            self.engine = GradES(model, registry, self.config, optimizer=optimizer, total_steps=total,
                                 writer=writer, stop_events=True)
            self.registry = registry
        elif optimizer is not None:
            self.engine.attach_optimizer(optimizer)
        saved = Path(args.output_dir) / f"checkpoint-{state.global_step}" / STATE_FILE
        if state.global_step > 0 and saved.exists():           # resumed: the Trainer restored that checkpoint
            self.load(saved)
        return control

    def on_pre_optimizer_step(self, args, state, control, optimizer=None, **kwargs):
        if self.engine is not None:
            if self.engine.optimizer is None and optimizer is not None:
                self.engine.attach_optimizer(optimizer)
            self.engine.observe(state.global_step + 1)
        return control

    def on_step_end(self, args, state, control, **kwargs):
        if self.engine is not None:
            self.engine.update(state.global_step)
            if self.engine.should_stop:
                control.should_training_stop = True
        return control

    def on_save(self, args, state, control, **kwargs):
        if self.engine is not None and state.is_world_process_zero:
            folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            if folder.is_dir():
                torch.save(self.engine.state_dict(), folder / STATE_FILE)
        return control

    # ------------------------------------------------------------------ helpers
    def load(self, path: str | os.PathLike) -> None:
        self.engine.load_state_dict(torch.load(path, map_location="cpu", weights_only=False))

    def frozen_fraction(self) -> dict[str, float]:
        return self.engine.frozen_fraction() if self.engine is not None else {}

    @property
    def frozen_steps(self) -> dict[str, int]:
        return dict(self.engine.frozen) if self.engine is not None else {}

    def extra(self) -> dict[str, Any]:
        return {"stop_reason": self.engine.stop_reason if self.engine else None}
