"""`load_samples`: one entry point for every task and layout.

`source` is a folder, a file or a Hugging Face hub id. Official layouts (JSON + image folders) are
tried first, then local Hugging Face layouts (save_to_disk folder, parquet files); a source that is
not a local path is a hub id, loaded with `datasets.load_dataset(id, config, split)`. Every sample's
image is checked once (cheaply); bad records are skipped and counted, or fail the load with strict.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Iterable, Iterator

from vlm_grades.data import coco, gqa, hf, vqav2
from vlm_grades.data.issues import ImageChecker, Issues, SampleList
from vlm_grades.data.prompts import resolve_template
from vlm_grades.data.schema import Sample
from vlm_grades.errors import UserError

TASKS = ("easyvqa", "easyvqa-caption", "scenes", "vqav2", "gqa", "coco")
READERS = {"vqav2": vqav2, "gqa": gqa, "coco": coco}


def load_samples(task: str, source: str | None = None, split: str | None = "train", max_samples: int | None = None,
                 seed: int = 0, shuffle: bool = False, strict: bool = False, prompt: str | None = None,
                 streaming: bool = False, allow_unanswered: bool = False, image_dir: str | None = None,
                 config: str | None = None):
    """Samples of `task` from `source`: a SampleList (a list with .summary and .skipped), or, with
    streaming, a re-iterable SampleStream that reads the source lazily on each pass.

    allow_unanswered: questions/images without answers load with empty targets (prediction only).
    image_dir: the image folder, when it is not beside the annotation files.
    config: the Hugging Face config name (hub ids and local per-config folders; GQA derives its own).
    """
    split = split or "train"
    if task not in TASKS:
        raise UserError(f"--task: unknown task {task!r}; choose one of {', '.join(TASKS)}")
    if max_samples is not None and max_samples < 1:
        raise UserError(f"--max-samples: must be at least 1, not {max_samples}")
    if task.startswith("easyvqa"):
        return _easyvqa(task, split, max_samples, seed, shuffle, prompt, streaming)
    if task == "scenes":
        return _scenes(split, max_samples, seed, shuffle, prompt, streaming)
    if not source:
        raise UserError(f"--data: task {task!r} needs a data source (a folder, file or Hugging Face id), e.g. "
                        f"{READERS[task].HUB_ID}")
    options = dict(task=task, source=str(source), split=split, max_samples=max_samples, seed=seed, shuffle=shuffle,
                   strict=strict, template=resolve_template(task, prompt), streaming=streaming,
                   allow_unanswered=allow_unanswered, image_dir=image_dir, config=config)
    if streaming:
        _open(options, 0)   # not iterated: a source that fits no layout fails now, not at the first batch
        # a streamed Hugging Face data set splits its shard files over DataLoader workers by itself
        return SampleStream(options, self_sharding=_is_hf_source(task, str(source), split))
    out = SampleList()
    gen = _open(options, 0)
    out.extend(gen)
    out.summary, out.skipped = gen.summary, gen.skipped
    return out


def _open(o: dict, epoch: int) -> "_Pass":
    """One pass over the source (the shuffle seed moves with the epoch)."""
    issues = Issues(f"{o['task']} {o['split']}", o["strict"])
    raw = _reader(o["task"], o["source"], o["split"], issues, o["template"], shuffle=o["shuffle"],
                  seed=o["seed"] + epoch, streaming=o["streaming"], allow_unanswered=o["allow_unanswered"],
                  image_dir=o["image_dir"], config=o["config"])
    return _Pass(raw, issues, o["max_samples"], READERS[o["task"]].RECORD, o["source"])


def _easyvqa(task, split, max_samples, seed, shuffle, prompt, streaming):
    from vlm_grades.data.easyvqa import load_easyvqa

    kind = "caption" if task == "easyvqa-caption" else "vqa"
    template = resolve_template("easyvqa", prompt) if (prompt and kind == "vqa") else prompt
    samples = load_easyvqa(split, task=kind, max_samples=max_samples, seed=seed, shuffle=shuffle, prompt=template)
    return _in_memory(samples, f"{task} {split}", streaming)


def _scenes(split, max_samples, seed, shuffle, prompt, streaming):
    from vlm_grades.data.scenes import load_scenes

    template = resolve_template("scenes", prompt) if prompt else None
    samples = load_scenes(split, max_samples=max_samples, seed=seed, shuffle=shuffle, prompt=template)
    return _in_memory(samples, f"scenes {split}", streaming)


def _in_memory(samples: list[Sample], name: str, streaming: bool):
    out = SampleList(samples)
    out.summary = f"{name}: {len(out):,} samples"
    if streaming:
        return SampleStream(list(out))
    return out


def _reader(task, source, split, issues, template, *, shuffle, seed, streaming, allow_unanswered, image_dir,
            config) -> Iterable[Sample]:
    module = READERS[task]
    common = dict(shuffle=shuffle, seed=seed, allow_unanswered=allow_unanswered)
    path = Path(source).expanduser()
    if path.exists():
        found = module.find_official(path, split)
        if found is not None:
            if task == "coco":
                kind, found = found
                load = coco.load_karpathy if kind == "karpathy" else coco.load_official
                return load(found, split, issues, template, image_dir=image_dir, **common)
            if task == "vqav2":   # looks for annotations and images only where the user pointed
                return vqav2.load_official(found, split, issues, template, image_dir=image_dir, data_root=path,
                                           **common)
            return module.load_official(found, split, issues, template, image_dir=image_dir, **common)
        if hf.is_local_hf(path):
            return _hf(module, str(path), split, issues, template, streaming, config, common)
        raise UserError(f"{source}: no {task} data for split {split!r} found; expected {module.expected(split)}")
    if hf.looks_like_hub_id(source):
        return _hf(module, source, split, issues, template, streaming, config, common)
    raise UserError(f"{source}: no such file or folder, and not a Hugging Face data set id")


def _is_hf_source(task, source, split) -> bool:
    path = Path(source).expanduser()
    if path.exists():
        return READERS[task].find_official(path, split) is None and hf.is_local_hf(path)
    return True


def _hf(module, source, split, issues, template, streaming, config, common):
    if module is gqa:
        return gqa.load_hf(source, split, issues, template, streaming=streaming, **common)
    return module.load_hf(source, split, issues, template, streaming=streaming, config=config, **common)


class _Pass:
    """One pass over a reader's samples: drops those whose image is missing or unreadable, stops at
    max_samples, and at the end logs the summary (failing if nothing was usable)."""

    def __init__(self, raw: Iterable[Sample], issues: Issues, max_samples: int | None, record: str, source: str):
        self.issues, self.record, self.source = issues, record, source
        self.summary, self.skipped = "", 0
        self._it = self._run(raw, max_samples)

    def __iter__(self) -> "_Pass":
        return self

    def __next__(self) -> Sample:
        return next(self._it)

    def _run(self, raw, max_samples) -> Iterator[Sample]:
        check, n = ImageChecker(), 0
        for s in raw:
            problem = check(s.image)
            if problem:
                self._skip_image(s, problem)
                continue
            n += 1
            yield s
            if max_samples is not None and n >= max_samples:
                break
        if n == 0 and _in_one_of_several_workers():
            return   # a DataLoader worker may get no shard of a streamed data set; the others have data
        self.summary = self.issues.finish(n, self.source)
        self.skipped = self.issues.skipped

    def _skip_image(self, s: Sample, problem: str) -> None:
        record = f"{self.record} {s.id}"
        if not isinstance(s.image, (str, Path)):
            self.issues.skip("unreadable image", f"unreadable image bytes ({record}: {problem})", self.source)
        elif problem == "image file not found":
            text = f"{problem} ({record})" if self.issues.strict else f"missing image: {s.image} ({record})"
            self.issues.skip("missing image", text, s.image)
        else:
            text = f"{problem} ({record})" if self.issues.strict else f"unreadable image: {s.image} ({record}: {problem})"
            self.issues.skip("unreadable image", text, s.image)


def _in_one_of_several_workers() -> bool:
    torch = sys.modules.get("torch")
    info = torch.utils.data.get_worker_info() if torch is not None else None
    return info is not None and info.num_workers > 1


class SampleStream:
    """A re-iterable stream of Samples: each pass re-opens the source (`set_epoch` changes the shuffle).
    Picklable (its options, not open iterators), so it can go to spawned DataLoader workers."""

    def __init__(self, options: dict | list, self_sharding: bool = False):
        self.options, self.epoch, self.self_sharding = options, 0, self_sharding
        self.summary, self.skipped = "", 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[Sample]:
        if isinstance(self.options, list):       # already loaded samples (easy-VQA)
            yield from self.options
            return
        it = _open(self.options, self.epoch)
        yield from it
        self.summary, self.skipped = it.summary, it.skipped
