"""COCO Captions: the official `captions_{split}{2014,2017}.json` (images + annotations) with the image
folder, the Karpathy split (`dataset_coco.json`), or the lmms-lab/COCO-Caption2017 columns
(question_id, image, question, answer: list of references, id, file_name).

One Sample per image; targets = every reference caption (the torch Dataset wrapper picks one per
epoch for training). Split "train2017"/"val2014" (with a year) means the official files; "train",
"val", "test", "restval" use the official files when present, else the Karpathy split, whose
"train" is train + restval.
"""
from __future__ import annotations

import random
import re
from pathlib import Path
from typing import Iterator

from vlm_grades.data import hf
from vlm_grades.data.files import find_file, pick_image_dir, read_json, require_key
from vlm_grades.data.issues import Issues
from vlm_grades.data.prompts import render
from vlm_grades.data.schema import Sample
from vlm_grades.errors import UserError

RECORD = "image"
HUB_ID = "lmms-lab/COCO-Caption2017"
KARPATHY = "dataset_coco.json"
KARPATHY_SPLITS = {"train": ("train", "restval"), "val": ("val",), "validation": ("val",), "test": ("test",),
                   "restval": ("restval",)}
EXPECTED = ("annotations/captions_{s}.json with the image folder {s}/, or dataset_coco.json (Karpathy split) "
            "with the COCO image folders, or a Hugging Face save_to_disk folder / parquet files with the "
            "lmms-lab/COCO-Caption2017 columns")


def _official_names(split: str) -> list[str]:
    if re.search(r"20\d\d$", split):
        return [split]
    split = "val" if split == "validation" else split
    return [f"{split}2017", f"{split}2014"]


def expected(split: str) -> str:
    return EXPECTED.format(s=_official_names(split)[0])


def _sample(image_id, image, captions: list[str], template: str, **meta) -> Sample:
    return Sample(id=str(image_id), image=image, prompt=render(template), targets=list(captions),
                  task="coco", meta={"image_id": image_id, **meta})


def _probe_path(folder: Path, rel: str) -> Path | None:
    p = folder / rel
    if p.is_file():
        return p
    p = folder / Path(rel).name     # a flat folder
    return p if p.is_file() else None


# ---------------------------------------------------------------- official captions JSON

def load_official(ann_path: Path, split: str, issues: Issues, template: str, *, shuffle: bool, seed: int,
                  allow_unanswered: bool, image_dir: str | None) -> Iterator[Sample]:
    data = read_json(ann_path)
    images = require_key(data, "images", ann_path)
    anns = data.get("annotations", []) if isinstance(data, dict) else []
    captions: dict = {}
    for i, a in enumerate(anns):
        missing = next((k for k in ("image_id", "caption") if not isinstance(a, dict) or a.get(k) is None), None)
        if missing:
            record = a.get("id", f"#{i}") if isinstance(a, dict) else f"#{i}"
            issues.skip("missing field", f"missing field {missing!r} in annotation {record}", ann_path)
            continue
        captions.setdefault(a["image_id"], []).append(a["caption"].strip())
    m = re.match(r"(?:captions|image_info)_(.+)\.json$", ann_path.name)
    folder_name = m.group(1) if m else split
    root = ann_path.parent

    if image_dir:
        folders = [Path(image_dir), Path(image_dir) / folder_name]
    else:
        folders = [b / sub for b in (root, root.parent) for sub in
                   (folder_name, f"images/{folder_name}", "images", "")]
    folder = pick_image_dir(folders, [im.get("file_name", "") for im in images[:20] if isinstance(im, dict)],
                            _probe_path, f"{root.parent}/{folder_name}/<file_name>")

    order = list(range(len(images)))
    if shuffle:
        random.Random(seed).shuffle(order)
    for i in order:
        im = images[i]
        missing = next((k for k in ("id", "file_name") if not isinstance(im, dict) or im.get(k) is None), None)
        if missing:
            record = im.get("id", f"#{i}") if isinstance(im, dict) else f"#{i}"
            issues.skip("missing field", f"missing field {missing!r} in image {record}", ann_path)
            continue
        refs = captions.get(im["id"], [])
        if not refs and not allow_unanswered:
            issues.skip("no annotation", f"image {im['id']} has no caption in {ann_path.name}", ann_path)
            continue
        path = _probe_path(folder, im["file_name"]) or folder / im["file_name"]
        yield _sample(im["id"], path, refs, template, file_name=im["file_name"])


# ---------------------------------------------------------------- Karpathy split

def load_karpathy(path: Path, split: str, issues: Issues, template: str, *, shuffle: bool, seed: int,
                  allow_unanswered: bool, image_dir: str | None) -> Iterator[Sample]:
    if split not in KARPATHY_SPLITS:
        raise UserError(f"--split: the Karpathy split has train, val, test, restval, not {split!r}")
    wanted = KARPATHY_SPLITS[split]
    images = [im for im in require_key(read_json(path), "images", path)
              if not isinstance(im, dict) or im.get("split") in wanted]
    root = path.parent

    def rel(im) -> str:
        return f"{im.get('filepath', '')}/{im.get('filename', '')}" if isinstance(im, dict) else ""

    bases = [Path(image_dir)] if image_dir else [root, root.parent, root / "images", root.parent / "images",
                                                 root / "coco", root.parent / "coco"]
    folder = pick_image_dir(bases, [rel(im) for im in images[:20]], _probe_path,
                            f"{root}/<filepath>/<filename>, e.g. {root}/val2014/COCO_val2014_<cocoid:012d>.jpg")
    order = list(range(len(images)))
    if shuffle:
        random.Random(seed).shuffle(order)
    for i in order:
        im = images[i]
        missing = next((k for k in ("cocoid", "filename", "sentences") if not isinstance(im, dict) or im.get(k) is None),
                       None)
        if missing:
            record = im.get("cocoid", f"#{i}") if isinstance(im, dict) else f"#{i}"
            issues.skip("missing field", f"missing field {missing!r} in image {record}", path)
            continue
        refs = [s["raw"].strip() for s in im["sentences"] if isinstance(s, dict) and isinstance(s.get("raw"), str)]
        if not refs and not allow_unanswered:
            issues.skip("no annotation", f"image {im['cocoid']} has no sentences", path)
            continue
        image = _probe_path(folder, rel(im)) or folder / rel(im)
        yield _sample(im["cocoid"], image, refs, template, file_name=im["filename"])


# ---------------------------------------------------------------- Hugging Face

def _image_id(row: dict):
    for key in ("file_name", "question_id"):   # "000000179765.jpg", "COCO_val2014_000000203564.jpg"
        value = row.get(key)
        if isinstance(value, str):
            digits = re.findall(r"\d+", Path(value).stem)
            if digits:
                return int(digits[-1])
    return row.get("id")


def load_hf(source: str, split: str, issues: Issues, template: str, *, shuffle: bool, seed: int,
            streaming: bool, allow_unanswered: bool, config: str | None = None) -> Iterator[Sample]:
    names = hf.split_names("val" if split in ("validation", "val2017") else split)
    ds = hf.open_source(source, names, config, streaming)
    columns = set(getattr(ds, "column_names", None) or [])
    if columns and not {"image", "answer"} <= columns:
        raise UserError(f"{source}: not a COCO captions data set: expected the lmms-lab/COCO-Caption2017 "
                        f"columns (question_id, image, answer, id, file_name), found {', '.join(sorted(columns))}")
    if shuffle:
        ds = hf.shuffled(ds, seed)
    seen: dict = {}
    for n, row in enumerate(ds):
        image_id = _image_id(row)
        if image_id is None:
            issues.skip("missing field", f"missing field 'file_name' in row {n}", source)
            continue
        refs = row.get("answer")
        refs = [refs] if isinstance(refs, str) else [r.strip() for r in refs or [] if isinstance(r, str)]
        if image_id in seen:            # one Sample per image: further rows add their references, all of them
            seen[image_id].targets.extend(refs)
            continue
        if not refs and not allow_unanswered:
            issues.skip("missing answer", f"image {image_id} has no reference captions (pass allow_unanswered "
                                          f"to load for prediction only)", source)
            continue
        image = hf.image_ref(row.get("image"))
        if image is None:
            issues.skip("missing image", f"missing image: no image in row of image {image_id}", source)
            continue
        sample = _sample(image_id, image, refs, template, file_name=row.get("file_name"))
        seen[image_id] = sample
        yield sample


# ---------------------------------------------------------------- dispatch

def find_official(path: Path, split: str) -> tuple[str, Path] | None:
    """("official" | "karpathy", file) for the split, or None."""
    if path.is_file():
        if path.suffix != ".json":
            return None
        return ("karpathy" if path.name == KARPATHY else "official", path)
    official = find_file(path, [f"captions_{s}.json" for s in _official_names(split)])
    if official:
        return "official", official
    if split in KARPATHY_SPLITS:
        karpathy = find_file(path, [KARPATHY])
        if karpathy:
            return "karpathy", karpathy
    return None
