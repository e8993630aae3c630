"""`--distributed fsdp`: FSDP2 sharding (sharding.py) behind the parallel interface. Parameters become DTensors,
checkpoints are sharded (sharded_checkpoint.py), and the end gathers an ordinary model on the main process."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from vlm_grades.parallel import sharding
from vlm_grades.parallel.ddp import Processes
from vlm_grades.parallel.sharded_checkpoint import load_sharded, save_sharded
from vlm_grades.training.checkpoint import latest_checkpoint
from vlm_grades.training.divergence import report_diverged


class FSDP(Processes):
    sharded = True
    flag = "fsdp"
    # the cache runs the tower outside the sharded root's forward
    feature_cache_blocker = "--distributed fsdp (the tower's weights are sharded)"

    def __init__(self, accelerator, mixed_precision: str = "no", cpu_offload: bool = False):
        super().__init__(accelerator)
        self.mixed_precision, self.cpu_offload = mixed_precision, cpu_offload
        self._skeleton: nn.Module | None = None

    def prepare(self, module: nn.Module) -> bool:
        self._skeleton = sharding.skeleton(module)
        sharding.shard(module, self.acc.device, self.mixed_precision, self.cpu_offload)
        return True   # every parameter is now a DTensor

    def wrap(self, module: nn.Module) -> nn.Module:
        return module   # FSDP2 needs no re-wrap: a frozen matrix is skipped at its next unshard

    def nonfinite(self, module: nn.Module) -> str | None:
        return sharding.any_nonfinite(module)

    def restore_model(self, path: Path, parts: dict[str, Any], module: nn.Module) -> None:
        pass   # with the optimizer, in restore_optimizer: both come from the sharded files

    def restore_optimizer(self, path: Path, parts: dict[str, Any], module: nn.Module, optimizer) -> None:
        load_sharded(path, module, optimizer)

    def save(self, run, step, module, optimizer, parts, loop, keep):
        extra = parts()   # GradES gathers its state from every rank: every rank builds the parts
        extra.pop("classic_best", None)   # unsharded weights; not written under sharding
        path = save_sharded(run.checkpoints, step, module, optimizer, extra, {"loop": loop}, keep)
        self.acc.wait_for_everyone()
        return path

    def finish(self, adapter, module: nn.Module, run, diverged: bool) -> Path | None:
        """A diverged run first takes back its newest checkpoint (finite, or it would not exist); then every rank
        sends its shards and the main process's adapter holds an ordinary model of the whole weights."""
        restored = None
        if diverged:
            restored = latest_checkpoint(run.checkpoints)
            if restored is not None:
                load_sharded(restored, module, None)
        weights = sharding.full_state_dict(module)
        if self.main:
            adapter.model = sharding.materialize(self._skeleton, weights).to(self.acc.device)
        self.acc.wait_for_everyone()
        return restored

    def keep_diverged(self, run, adapter, step: int, reason: str, restored: Path | None) -> dict[str, Any]:
        return report_diverged(run, adapter, step, reason, restored)
