"""The learning-rate schedule: linear warm-up, then cosine, linear or constant, as a factor of each group's rate."""
from __future__ import annotations

import math

import torch


def lr_lambda(total_steps: int, warmup: float, schedule: str, min_ratio: float):
    warm = int(warmup) if warmup >= 1 else int(round(warmup * total_steps))

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        if schedule == "constant":
            return 1.0
        progress = min(1.0, (step - warm) / max(1, total_steps - warm))
        shape = 0.5 * (1 + math.cos(math.pi * progress)) if schedule == "cosine" else 1 - progress
        return min_ratio + (1 - min_ratio) * shape

    return factor


def build_scheduler(optimizer, total_steps: int, warmup: float, schedule: str, min_ratio: float):
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(total_steps, warmup, schedule, min_ratio))
