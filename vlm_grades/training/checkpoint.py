"""Checkpoints written atomically: everything goes into a temporary folder that is renamed into place, then
`latest` is replaced. A process killed at any moment leaves either the previous checkpoint or the new one."""
from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vlm_grades.errors import UserError

STATE_FILE = "trainer_state.json"  # written last: its presence marks a complete checkpoint


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(root: Path, step: int, parts: dict[str, Any], trainer_state: dict[str, Any],
                    keep: int = 2) -> Path:
    """parts: name -> object for torch.save (model, optimizer, scheduler, grades, rng)."""
    tmp = begin_checkpoint(root, step)
    write_parts(tmp, parts)
    return commit_checkpoint(root, step, tmp, trainer_state, keep)


def begin_checkpoint(root: Path, step: int) -> Path:
    """An empty temporary folder for checkpoint `step`; nothing in it counts until `commit_checkpoint`."""
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".tmp-step-{step}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    return tmp


def write_parts(tmp: Path, parts: dict[str, Any]) -> None:
    for name, obj in parts.items():
        with open(tmp / f"{name}.pt", "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())


def commit_checkpoint(root: Path, step: int, tmp: Path, trainer_state: dict[str, Any], keep: int = 2) -> Path:
    """Writes the state file (last), renames the folder into place, points `latest` at it, prunes."""
    final = root / f"step-{step}"
    with open(tmp / STATE_FILE, "w") as f:
        json.dump(trainer_state, f, indent=2)
        f.flush()
        os.fsync(f.fileno())
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    latest_tmp = root / ".latest.tmp"
    latest_tmp.write_text(final.name)
    os.replace(latest_tmp, root / "latest")
    _fsync_dir(root)
    _prune(root, keep)
    return final


def _prune(root: Path, keep: int) -> None:
    steps = sorted((int(p.name.split("-")[1]), p) for p in root.glob("step-*") if p.name.split("-")[1].isdigit())
    for _, path in steps[:-keep] if keep > 0 else []:
        shutil.rmtree(path, ignore_errors=True)
    for tmp in root.glob(".tmp-step-*"):
        if not tmp.name.endswith(f"-{os.getpid()}"):
            shutil.rmtree(tmp, ignore_errors=True)  # left by a killed process


def complete_checkpoints(root: Path) -> list[Path]:
    """Every checkpoint with its state file (written last), newest first."""
    complete = [p for p in root.glob("step-*") if p.name[5:].isdigit() and (p / STATE_FILE).exists()]
    return sorted(complete, key=lambda p: int(p.name[5:]), reverse=True)


def latest_checkpoint(root: Path) -> Path | None:
    pointer = root / "latest"
    if pointer.exists():
        path = root / pointer.read_text().strip()
        if (path / STATE_FILE).exists():
            return path
    return next(iter(complete_checkpoints(root)), None)


def load_checkpoint(path: Path, names: tuple[str, ...] | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """(parts, trainer_state); parts (all, or those in `names`) are loaded on the CPU."""
    if not (path / STATE_FILE).exists():
        raise UserError(f"{path}: incomplete checkpoint (no {STATE_FILE})")
    parts = {p.stem: torch.load(p, map_location="cpu", weights_only=False) for p in sorted(path.glob("*.pt"))
             if names is None or p.stem in names}
    return parts, json.loads((path / STATE_FILE).read_text())
