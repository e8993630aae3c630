"""AdamW with one parameter group per modality (the learning-rate schedule is schedule.py)."""
from __future__ import annotations

import torch
from torch import nn


def build_optimizer(modality_params: dict[str, list[tuple[str, nn.Parameter]]], lrs: dict[str, float],
                    weight_decay: float) -> torch.optim.AdamW:
    """Norms, biases and embeddings-like 1-D parameters get no weight decay."""
    groups = []
    for modality, named in modality_params.items():
        trainable = [(n, p) for n, p in named if p.requires_grad]
        decay = [p for n, p in trainable if p.ndim >= 2]
        no_decay = [p for n, p in trainable if p.ndim < 2]
        for params, wd in ((decay, weight_decay), (no_decay, 0.0)):
            if params:
                groups.append({"params": params, "lr": lrs[modality], "weight_decay": wd, "modality": modality})
    if not groups:
        raise ValueError("no trainable parameters")
    # foreach keeps the step fast on CPU; fused AdamW is CUDA-only for older torch
    return torch.optim.AdamW(groups, betas=(0.9, 0.95), foreach=True)


def current_lrs(optimizer) -> dict[str, float]:
    return {g["modality"]: g["lr"] for g in optimizer.param_groups}
