"""GradES over sharded parameters (FSDP2 DTensors): each rank measures only its local shard.

A parameter sharded on dim 0 holds on each rank one contiguous run of the matrix's flat positions. Sketch
indices are drawn on the whole matrix (the same entries as an unsharded run), and each rank keeps the ones in
its run; per-component partial sums are added across ranks in one all-reduce per check. Stored tensors (the
previous gradient or weights) are gathered into their whole-matrix form for checkpoints, so a GradES state
reads the same whether it was written by a sharded run or not.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Shard:
    start: int       # first flat position of the matrix held here
    length: int      # flat positions held here


def is_sharded(t: torch.Tensor) -> bool:
    return type(t).__name__ == "DTensor" or (hasattr(t, "to_local") and hasattr(t, "placements"))


def local(t: torch.Tensor) -> torch.Tensor:
    """The part of `t` held by this process (`t` itself when it is not sharded)."""
    return t.to_local() if is_sharded(t) else t


def shard_of(param: torch.Tensor) -> Shard | None:
    """The flat run of `param` this rank holds; None for an ordinary (replicated) tensor."""
    if not is_sharded(param):
        return None
    from torch.distributed.tensor import Shard as ShardPlacement
    from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

    if any(isinstance(p, ShardPlacement) and p.dim != 0 for p in param.placements):
        raise ValueError("GradES: only parameters sharded on their first dimension are supported")
    shape, offset = compute_local_shape_and_global_offset(param.shape, param.device_mesh, param.placements)
    row = 1
    for n in param.shape[1:]:
        row *= n
    length = 1
    for n in shape:
        length *= n
    return Shard(offset[0] * row if param.ndim else 0, length)


def local_index(index: torch.Tensor, shard: Shard) -> torch.Tensor:
    """Sorted whole-matrix sketch positions -> the positions inside this rank's run (still sorted)."""
    keep = (index >= shard.start) & (index < shard.start + shard.length)
    return (index[keep] - shard.start).to(torch.int32)


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum over every process (in place on a CPU copy under gloo)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return t
    if dist.get_backend() == "nccl":
        dist.all_reduce(t)
        return t
    cpu = t.cpu()
    dist.all_reduce(cpu)
    return cpu.to(t.device)


def gather_runs(pieces: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Each rank's local pieces, concatenated in rank order (shards on dim 0 follow rank order)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return pieces
    everyone: list[dict[str, torch.Tensor] | None] = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, {k: v.detach().cpu() for k, v in pieces.items()})
    return {k: torch.cat([r[k] for r in everyone], dim=0) for k in pieces}


def take_run(whole: torch.Tensor, shard: Shard, index: torch.Tensor | None) -> torch.Tensor:
    """This rank's part of a stored whole-matrix tensor: its rows (exact), or its sketch positions' values."""
    if index is None:
        flat = whole.reshape(-1)[shard.start: shard.start + shard.length]
        return flat.reshape(-1, *whole.shape[1:]) if whole.ndim > 1 else flat
    keep = (index >= shard.start) & (index < shard.start + shard.length)
    return whole[keep.to(whole.device)]
