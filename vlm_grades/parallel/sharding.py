"""`--distributed fsdp`: FSDP2 (`torch.distributed.fsdp.fully_shard`) for the training loop.

Every transformer block of the vision tower and of the language model is its own FSDP unit, then the root
(embeddings, projector, norms, head). Each parameter becomes a DTensor sharded on dim 0, so GradES freezes a
matrix by flipping its requires_grad as without sharding: FSDP2 reads the flag at each unshard, so a frozen
matrix's weight gradient is neither computed nor reduce-scattered.

Before sharding, `skeleton` keeps a parameter-less copy of the model (meta tensors), so the end of training
can build an ordinary, unsharded model from the gathered weights and save or evaluate it without
torch.distributed.
"""
from __future__ import annotations

import copy
import warnings

import torch
from torch import nn

BLOCK_LISTS = ("blocks", "layers")   # nanoVLM: *.blocks; Qwen2.5-VL: visual.blocks, language_model.layers


def transformer_blocks(model: nn.Module) -> list[nn.Module]:
    """The repeated blocks: children of every ModuleList named blocks/layers, in model order."""
    found = []
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and name.rsplit(".", 1)[-1] in BLOCK_LISTS:
            found.extend(module)
    return found


def skeleton(model: nn.Module) -> nn.Module:
    """A copy of `model` whose parameters are meta tensors (no memory); buffers are copied for real."""
    memo = {id(p): nn.Parameter(torch.empty_like(p, device="meta"), requires_grad=p.requires_grad)
            for p in model.parameters()}
    return copy.deepcopy(model, memo)


def materialize(shell: nn.Module, state: dict[str, torch.Tensor]) -> nn.Module:
    """Fills a skeleton with the gathered weights; tied parameters stay tied."""
    real: dict[int, nn.Parameter] = {}
    for module in shell.modules():
        for name, p in list(module._parameters.items()):
            if p is None:
                continue
            if id(p) not in real:
                real[id(p)] = nn.Parameter(torch.empty(p.shape, dtype=p.dtype), requires_grad=p.requires_grad)
            module._parameters[name] = real[id(p)]
    shell.load_state_dict(state)
    return shell


def shard(model: nn.Module, device: torch.device, mixed_precision: str = "no", cpu_offload: bool = False) -> nn.Module:
    """Shards `model` in place over every process (one 1-D mesh, across nodes too)."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, OffloadPolicy, fully_shard

    # nanoVLM's blocks also return their KV views; nothing writes into them in place, so the hook FSDP2
    # attaches to them is never lost
    warnings.filterwarnings("ignore", message=r"FSDP2-wrapped module .* returned a view tensor")
    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    # bf16: compute in bf16, keep the float32 master weights and reduce the gradients in float32
    mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) \
        if mixed_precision == "bf16" else MixedPrecisionPolicy()
    offload = CPUOffloadPolicy(pin_memory=device.type == "cuda") if cpu_offload else OffloadPolicy()
    for block in transformer_blocks(model):
        fully_shard(block, mesh=mesh, mp_policy=mp, offload_policy=offload)
    fully_shard(model, mesh=mesh, mp_policy=mp, offload_policy=offload)
    return model


def full_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The whole model's weights on the CPU of rank 0 (empty elsewhere); every rank must call it."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def any_nonfinite(model: nn.Module) -> str | None:
    """The first parameter with NaN/Inf in any rank's shard, the same answer on every rank."""
    import torch.distributed as dist

    from vlm_grades.grades.shards import all_reduce_sum, local

    named = [(n, p) for n, p in model.named_parameters() if p.is_floating_point()]
    bad = torch.stack([(~torch.isfinite(local(p.detach()))).any().float() for _, p in named])
    bad = all_reduce_sum(bad) if dist.is_initialized() else bad
    hits = bad.nonzero()
    return named[int(hits[0, 0])][0] if len(hits) else None
