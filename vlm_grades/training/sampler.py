"""A seeded, resumable, rank-aware sampler: the order of epoch e is a permutation seeded by (seed, e),
so a resumed run sees exactly the samples an uninterrupted run would have seen."""
from __future__ import annotations

import torch
from torch.utils.data import Sampler


class ResumableSampler(Sampler[int]):
    def __init__(self, size: int, seed: int, rank: int = 0, world_size: int = 1):
        self.size, self.seed, self.rank, self.world_size = size, seed, rank, world_size
        self.epoch = 0
        self.start = 0  # position (in this rank's share) to start from, for resume

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = epoch, start

    def _order(self) -> list[int]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        order = torch.randperm(self.size, generator=g).tolist()
        usable = len(order) - len(order) % self.world_size  # equal shares keep ranks in lock step
        return order[self.rank:usable:self.world_size]

    def __iter__(self):
        return iter(self._order()[self.start:])

    def __len__(self) -> int:
        return self.size // self.world_size - self.start
