"""The feature cache's disk-tier files (one per process): where they are, checked before any work, and the ones
a killed attempt left."""
from __future__ import annotations

from pathlib import Path

from vlm_grades.errors import UserError
from vlm_grades.feature_cache.disk import free_bytes
from vlm_grades.feature_cache.memory import format_size
from vlm_grades.training.run_folder import check_can_create


def disk_tier_path(run_path: Path, folder: str | None, rank: int | str) -> Path:
    """A process's file of the disk tier: in the run folder, or in `folder` (--feature-cache-dir) named after
    the run."""
    name = f"feature-cache-rank-{rank}.bin"
    return Path(folder) / f"{Path(run_path).resolve().name}-{name}" if folder else Path(run_path) / name


def check_disk_tier(run_path: Path, folder: str | None, disk_bytes: int, processes: int) -> None:
    """Before any work: the disk tier's folder is writable (tried: create, write, remove a file) and has room
    for the files of this machine's `processes` (those a killed attempt left count as room)."""
    if disk_bytes <= 0:
        return
    where = Path(folder) if folder else Path(run_path)
    check_can_create(where, "--feature-cache-dir" if folder else "--out")
    leftovers = sum(p.stat().st_blocks * 512 for p in where.glob(disk_tier_path(run_path, folder, "*").name))
    need, free = disk_bytes * processes, free_bytes(where) + leftovers
    if free < need:
        raise UserError(f"--feature-cache-disk {format_size(disk_bytes)}: {format_size(free)} free in {where}, "
                        f"{processes} process(es) need {format_size(need)}; give a smaller size or another "
                        f"--feature-cache-dir")


def remove_stale(run_path: Path, folder: str | None, processes: int) -> None:
    """Disk-tier files of processes a killed attempt had beyond this run's (each process makes its own anew)."""
    mine = {disk_tier_path(run_path, folder, r) for r in range(processes)}
    pattern = disk_tier_path(run_path, folder, "*")
    for stale in set(pattern.parent.glob(pattern.name)) - mine:
        stale.unlink(missing_ok=True)
