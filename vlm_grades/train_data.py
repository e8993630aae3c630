"""Training data: the samples of a split, and the Dataset that preprocesses them for an adapter."""
from __future__ import annotations

from functools import partial
from typing import Sequence

from vlm_grades.config import TrainConfig
from vlm_grades.data.dataset import SampleDataset
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


def training_dataset(samples: Sequence[Sample], adapter, seed: int) -> SampleDataset:
    """Preprocessing runs in DataLoader workers; samples with several references (captions) train on one
    of them per epoch, chosen from (seed, epoch, sample id) so resumed runs choose the same."""
    return SampleDataset(samples, transform=partial(adapter.preprocess, train=True), pick_target=True, seed=seed)
