"""torch Datasets over Samples. Images stay undecoded here: `transform` (an adapter's preprocess,
which calls schema.load_image) runs in the DataLoader workers.

Caption data sets have several references per image: `SampleDataset(..., pick_target=True)` (or
`CaptionTargetDataset`) trains on one of them per sample per epoch, chosen from (seed, epoch, sample
id) alone, so runs, resumes and worker counts give the same choice; it goes to meta["train_target"],
which the adapters train on (else targets[0]). Call `set_epoch(e)` before each
epoch's DataLoader iterator is created (with persistent_workers the workers keep the old epoch).
"""
from __future__ import annotations

import dataclasses
import random
from typing import Any, Callable, Iterable, Sequence

from torch.utils.data import Dataset, IterableDataset, get_worker_info

from vlm_grades.data.schema import Sample


def pick_target(sample: Sample, seed: int, epoch: int) -> Sample:
    """A copy of `sample` with meta["train_target"] set to the reference chosen for this (seed, epoch);
    targets stay as they are (scoring uses all of them). Adapters train on meta["train_target"]."""
    if len(sample.targets) < 2:
        return sample
    choice = random.Random(f"{seed}:{epoch}:{sample.id}").choice(sample.targets)
    return dataclasses.replace(sample, meta={**sample.meta, "train_target": choice})


class SampleDataset(Dataset):
    def __init__(self, samples: Sequence[Sample], transform: Callable[[Sample], Any] | None = None,
                 pick_target: bool = False, seed: int = 0):
        self.samples, self.transform = samples, transform
        self.pick, self.seed, self.epoch = pick_target, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.samples)

    def sample(self, index: int) -> Sample:
        s = self.samples[index]
        return pick_target(s, self.seed, self.epoch) if self.pick else s

    def __getitem__(self, index: int):
        s = self.sample(index)
        return self.transform(s) if self.transform else s


class CaptionTargetDataset(SampleDataset):
    """SampleDataset that trains on one reference caption per sample per epoch."""

    def __init__(self, samples: Sequence[Sample], transform: Callable[[Sample], Any] | None = None, seed: int = 0):
        super().__init__(samples, transform, pick_target=True, seed=seed)


class StreamingSampleDataset(IterableDataset):
    """An IterableDataset over a re-iterable stream of Samples (registry.SampleStream). Each DataLoader
    worker takes every num_workers-th sample, except from a streamed Hugging Face data set, which hands
    each worker whole shard files itself (workers beyond the number of shards get nothing)."""

    def __init__(self, stream: Iterable[Sample], transform: Callable[[Sample], Any] | None = None,
                 pick_target: bool = False, seed: int = 0):
        self.stream, self.transform = stream, transform
        self.pick, self.seed, self.epoch = pick_target, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        if hasattr(self.stream, "set_epoch"):
            self.stream.set_epoch(epoch)

    def __iter__(self):
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        if getattr(self.stream, "self_sharding", False):
            worker, workers = 0, 1     # a streamed Hugging Face data set already gives each worker its shards
        for n, s in enumerate(self.stream):
            if n % workers != worker:
                continue
            if self.pick:
                s = pick_target(s, self.seed, self.epoch)
            yield self.transform(s) if self.transform else s
