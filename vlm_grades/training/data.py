"""Training data: the samples of a split, and the Dataset that preprocesses them for an adapter."""
from __future__ import annotations

import dataclasses
from functools import partial
from typing import Sequence

from vlm_grades.config import TrainConfig
from vlm_grades.data.dataset import SampleDataset
from vlm_grades.data.schema import Sample
from vlm_grades.errors import UserError


SPLIT_FLAGS = {"validation": "--val-split", "evaluation": "--eval-split"}   # else --split


def load_split(cfg: TrainConfig, split: str | None, max_samples: int | None, purpose: str,
               data: str | None = None) -> list[Sample]:
    from vlm_grades.data import load_samples

    flag = SPLIT_FLAGS.get(purpose, "--split")
    try:
        samples = load_samples(cfg.task, data or cfg.data, split=split, max_samples=max_samples, seed=cfg.seed,
                               strict=cfg.strict, prompt=cfg.prompt)
    except UserError as e:   # the readers know the split, not which flag gave it
        if flag != "--split" and str(e).startswith("--split"):
            raise UserError(flag + str(e)[len("--split"):]) from None
        raise
    if not samples:
        raise UserError(f"{flag} {split}: no {purpose} samples in {data or cfg.data or cfg.task}")
    return samples


def mix_in(cfg: TrainConfig, samples: list[Sample]) -> tuple[list[Sample], int]:
    """`samples` plus cfg.mix_task's training samples repeated so that they make up about cfg.mix_fraction
    of the list (a fixed list, so the resumable sampler's epochs stay exact). -> (samples, repeats)"""
    if cfg.mix_fraction <= 0 or not cfg.mix_task:
        return samples, 0
    if not isinstance(samples, list):
        raise UserError(f"--mix-task: needs a training set held in memory; {cfg.task} is streamed")
    extra = load_split(dataclasses.replace(cfg, task=cfg.mix_task, prompt=None), cfg.split,
                       cfg.max_samples, f"--mix-task {cfg.mix_task}", data=cfg.mix_data or cfg.data)
    if not isinstance(extra, list):
        raise UserError(f"--mix-task {cfg.mix_task}: streamed data sets cannot be mixed in")
    repeats = max(1, round(cfg.mix_fraction / (1 - cfg.mix_fraction) * len(samples) / len(extra)))
    return samples + extra * repeats, repeats


def training_dataset(samples: Sequence[Sample], adapter, seed: int) -> SampleDataset:
    """Preprocessing runs in DataLoader workers; samples with several references (captions) train on one
    of them per epoch, chosen from (seed, epoch, sample id) so resumed runs choose the same."""
    return SampleDataset(samples, transform=partial(adapter.preprocess, train=True), pick_target=True, seed=seed)
