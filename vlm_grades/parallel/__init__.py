"""How a run uses its processes, behind one small interface the training loop calls (single.py): one process,
DDP over several (ddp.py), or FSDP2 sharding (fsdp.py, with sharding.py and sharded_checkpoint.py). The loop
never asks which one it has."""
from __future__ import annotations

from vlm_grades.parallel.single import SingleProcess


def build_parallel(distributed: str, accelerator, mixed_precision: str = "no",
                   cpu_offload: bool = False) -> SingleProcess:
    """`--distributed fsdp` -> FSDP2; several processes otherwise -> DDP; one process -> nothing to do."""
    if distributed == "fsdp":
        from vlm_grades.parallel.fsdp import FSDP

        return FSDP(accelerator, mixed_precision, cpu_offload)
    if accelerator.num_processes > 1:
        from vlm_grades.parallel.ddp import DDP

        return DDP(accelerator)
    return SingleProcess(accelerator)
