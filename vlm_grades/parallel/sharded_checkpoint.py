"""Checkpoints of an FSDP2 run: model and optimizer written by every rank with torch.distributed.checkpoint
(`sharded/` inside the checkpoint folder), the rest (scheduler, GradES, RNG of every rank) by rank 0 as in an
unsharded checkpoint. All of it goes into the same temporary folder, which rank 0 renames into place once
every rank has finished writing: a kill at any moment leaves no checkpoint that `--resume` would pick half
written."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch.distributed as dist
from torch import nn

from vlm_grades.training.checkpoint import begin_checkpoint, commit_checkpoint, write_parts

SHARDED = "sharded"


def _shared_path(path: Path | None) -> Path:
    box = [str(path) if path is not None else None]
    dist.broadcast_object_list(box, src=0)
    return Path(box[0])


def save_sharded(root: Path, step: int, model: nn.Module, optimizer, parts: dict[str, Any] | None,
                 trainer_state: dict[str, Any] | None, keep: int) -> Path | None:
    """Every rank calls it; `parts` and `trainer_state` matter on rank 0 only. Returns the folder on rank 0."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    main = dist.get_rank() == 0
    tmp = _shared_path(begin_checkpoint(root, step) if main else None)
    model_state, optim_state = get_state_dict(model, optimizer)
    dcp.save({"model": model_state, "optimizer": optim_state}, checkpoint_id=str(tmp / SHARDED))
    dist.barrier()
    if not main:
        return None
    write_parts(tmp, parts or {})
    return commit_checkpoint(root, step, tmp, trainer_state or {}, keep)


def is_sharded_checkpoint(path: Path) -> bool:
    return (path / SHARDED).is_dir()


def load_sharded(path: Path, model: nn.Module, optimizer=None) -> None:
    """Loads the model (and the optimizer, when given) in place, on every rank; frozen matrices must already be
    frozen, so the optimizer state expected matches the one saved."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import (get_model_state_dict, get_state_dict,
                                                         set_model_state_dict, set_state_dict)

    if optimizer is None:
        state = {"model": get_model_state_dict(model)}
        dcp.load(state, checkpoint_id=str(path / SHARDED))
        set_model_state_dict(model, state["model"])
        return
    model_state, optim_state = get_state_dict(model, optimizer)
    state = {"model": model_state, "optimizer": optim_state}
    dcp.load(state, checkpoint_id=str(path / SHARDED))
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"])
