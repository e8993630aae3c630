"""Several processes, each with the whole model: what they share (`Processes`), and DDP over the parameters that
still train."""
from __future__ import annotations

import inspect
from typing import Any

import torch
from accelerate.utils import gather_object
from torch import nn

from vlm_grades.parallel.single import SingleProcess
from vlm_grades.training.checkpoint import rng_state


class Processes(SingleProcess):
    """Numbers and random states shared across processes (accelerate's collectives)."""

    def mean(self, value: float) -> float:
        return float(self.acc.reduce(torch.tensor(value, device=self.acc.device), reduction="mean"))

    def reduce_sum(self, values: list[int]) -> list[int]:
        return [int(v) for v in self.acc.reduce(torch.tensor(values, device=self.acc.device), reduction="sum")]

    def rng_states(self) -> list[dict[str, Any]]:
        return gather_object([rng_state()])

    def save(self, run, step, module, optimizer, parts, loop, keep):
        path = super().save(run, step, module, optimizer, parts, loop, keep)
        self.acc.wait_for_everyone()
        return path


class DDP(Processes):
    def wrap(self, module: nn.Module) -> nn.Module:
        """Re-wrapped whenever GradES freezes matrices, so buckets never wait for gradients that will not come
        (no find_unused_parameters, no static graph)."""
        if not any(p.requires_grad for p in module.parameters()):   # all frozen: the run stops, DDP would refuse
            return module
        device_ids = [self.acc.device.index] if self.acc.device.type == "cuda" else None
        ddp = torch.nn.parallel.DistributedDataParallel
        # buffers (rotary tables) are the same on every rank: no sync before each forward
        no_sync = {"forward_sync_buffers" if "forward_sync_buffers" in inspect.signature(ddp).parameters
                   else "broadcast_buffers": False}
        return ddp(module, device_ids=device_ids, **no_sync)
