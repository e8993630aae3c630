"""Training data: the samples of a split, and the torch Dataset that preprocesses them for an adapter."""
from __future__ import annotations

import random
from dataclasses import replace
from typing import Sequence

from torch.utils.data import Dataset

from vlm_grades.config import TrainConfig
from vlm_grades.data.schema import Sample
from vlm_grades.errors import UserError


def load_split(cfg: TrainConfig, split: str | None, max_samples: int | None, purpose: str,
               data: str | None = None) -> list[Sample]:
    from vlm_grades.data import load_samples

    samples = load_samples(cfg.task, data or cfg.data, split=split, max_samples=max_samples, seed=cfg.seed,
                           strict=cfg.strict, prompt=cfg.prompt)
    if not samples:
        raise UserError(f"--split {split}: no {purpose} samples in {data or cfg.data or cfg.task}")
    return samples


class TrainDataset(Dataset):
    """Preprocesses samples in DataLoader workers. A sample with several references (captions) trains on
    one of them per epoch, chosen by (seed, epoch, index) so that resumed runs choose the same."""

    def __init__(self, samples: Sequence[Sample], adapter, seed: int):
        self.samples, self.adapter, self.seed = samples, adapter, seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        sample = self.samples[index]
        if len(sample.targets) > 1:
            choice = random.Random(f"{self.seed}-{self.epoch}-{index}").choice(sample.targets)
            sample = replace(sample, meta={**sample.meta, "train_target": choice})
        return self.adapter.preprocess(sample, train=True)
